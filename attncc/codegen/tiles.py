"""The tile tables every backend's kernels loop over, from the static block classification:
per (gather group, query tile), the non-empty key tiles and their classes."""
import numpy as np

from ..ir.program import EMPTY


def tile_tables(grp):
    """(count [G, NQ], list [G, NQ, KMAX], class [G, NQ, KMAX]) of the non-empty key tiles."""
    tiles = grp.blocks.coarsen(grp.plan.block_m, grp.plan.block_n)
    G, NQ, NK = tiles.shape
    nonempty = tiles != EMPTY
    cnt = nonempty.sum(-1).astype(np.int32)
    kmax = max(1, int(cnt.max()))
    lst = np.zeros((G, NQ, kmax), np.int32)
    cls = np.zeros((G, NQ, kmax), np.int32)
    for g in range(G):
        for qi in range(NQ):
            ks = np.flatnonzero(nonempty[g, qi])
            lst[g, qi, :len(ks)] = ks
            cls[g, qi, :len(ks)] = tiles[g, qi, ks]
    return cnt, lst, cls
