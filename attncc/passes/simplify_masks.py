"""simplify_masks: drop the conjuncts of the residual mask that hold on every pair of every
PARTIAL atom, so kernels evaluate only what can still be false.

Contract for backends: the residual is exact on PARTIAL atoms; pairs in FULL atoms are
unmasked and pairs in EMPTY atoms masked, whatever the residual says there (a plan tile that
mixes FULL and EMPTY atoms masks by atom class). A group with no PARTIAL atom gets the
residual `true`."""
import numpy as np
import sympy

from ..ir.program import PARTIAL
from .classify_blocks import _reduce, atom, eval_tiles, split_static


def simplify_masks(prog):
    for k, grp in enumerate(prog.groups):
        partial = grp.blocks.classes == PARTIAL
        if not partial.any():
            prog = prog.with_group(k, residual=sympy.true)
            continue
        static, dynamic = split_static(grp.residual, prog)
        aq, ak = atom(grp.gather.Lq), atom(grp.gather.Lk)
        keep = []
        for c in static:
            holds = [True]

            def on_tile(g0, qa0, all_v, any_v):
                tile_all = _reduce(all_v, aq, ak, True).all(axis=(2, 4))
                sel = partial[g0:g0 + tile_all.shape[0], qa0:qa0 + tile_all.shape[1]]
                if not np.all(tile_all[sel]):
                    holds[0] = False

            eval_tiles(c, prog, grp, on_tile)
            if not holds[0]:
                keep.append(c)
        prog = prog.with_group(k, residual=sympy.And(*keep, *dynamic))
    return prog
