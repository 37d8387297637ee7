"""The tile tables every backend's kernels loop over: per (gather group, query tile), the
non-empty key tiles and their classes. From the static block classification at compile
time; with a run-time block-sparse layout, from that classification and the call's layout,
per call (`RuntimeLayout`: the kernels take the tables as arguments, nothing recompiles)."""
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from ..ir import symbols as S
from ..ir.evaluate import evaluate
from ..ir.program import EMPTY, FULL, PARTIAL


def tile_tables(grp):
    """(count [G, NQ], list [G, NQ, KMAX], class [G, NQ, KMAX]) of the non-empty key tiles."""
    return _lists(grp.blocks.coarsen(grp.plan.block_m, grp.plan.block_n))


def query_tile_tables(grp):
    """The transposed tables, for the backward's dK and dV: (count [G, NK], list [G, NK,
    QMAX], class [G, NK, QMAX]) of the query tiles that see each key tile, in query order."""
    return _lists(grp.blocks.coarsen(grp.plan.block_m, grp.plan.block_n).transpose(0, 2, 1))


def _lists(tiles):
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


def slots_once(grp):
    """Whether every query token and every key token fills at most one (group, local index)
    slot of the gather (window partitions, axial lines, dense groups; not overlapping windows
    or per-query key lists): a backward task of a query tile, or of a key tile, is then the
    only writer of its rows of dQ, or dK and dV (no atomics, no reduction, deterministic)."""
    gat = grp.gather
    if gat.per_query or S.b in S.free_index_symbols(gat.k_token) or S.tables_in(gat.k_token) \
            or S.tables_in(gat.q_token):
        return False
    g = np.arange(gat.G)[:, None]
    for tok, ok, n, sym in ((gat.q_token, gat.q_valid, gat.Lq, S.t), (gat.k_token, gat.k_valid, gat.Lk, S.u)):
        env = {S.g: g, sym: np.arange(n)[None, :]}
        toks = np.broadcast_to(np.asarray(evaluate(tok, env)), (gat.G, n))
        valid = np.broadcast_to(np.asarray(evaluate(ok, env), bool), (gat.G, n))
        used = toks[valid]
        if len(np.unique(used)) != len(used):
            return False
    return True


_CONSTANTS = {}


def _constants(grp, device):
    """The group's heads and static atom classes on `device` (cached: no copy per call)."""
    key = (grp.heads, grp.blocks.digest, grp.blocks.static.tobytes(), str(device))
    got = _CONSTANTS.get(key)
    if got is None:
        if len(_CONSTANTS) > 256:
            _CONSTANTS.clear()
        got = _CONSTANTS[key] = (torch.tensor(grp.heads, device=device),
                                 torch.from_numpy(grp.blocks.static[0].astype(np.int32)).to(device))
    return got


@dataclass(frozen=True)
class RuntimeLayout:
    """A run-time block-sparse layout [H, N/bq, M/bk] that is a conjunct of a dense group's
    mask: each call classifies the group's atoms by it (per head) and rebuilds the tables.
    exact: it is the mask's only run-time conjunct (an atom it fully allows, FULL by the
    static conjuncts, is FULL)."""
    name: str
    block: tuple
    exact: bool

    @classmethod
    def of(cls, prog, grp):
        """The group's run-time layout, or None (a non-dense gather, or a layout the mask does
        not AND in: the layout is then one more run-time mask conjunct, read on PARTIAL tiles)."""
        if grp.gather.kind != "dense" or grp.blocks.static is None:
            return None
        parts = grp.residual.args if isinstance(grp.residual, sympy.And) else (grp.residual,)
        consts = {c.name for c in prog.constants}
        local = {S.i: grp.gather.q_token, S.j: grp.gather.k_token}
        for p in grp.preds:
            if p.kind == "block_sparse" and dict(p.params).get("runtime"):
                want = str(p.expr.xreplace(local))           # as the gather pass wrote it into the residual
                if any(str(c) == want for c in parts):
                    dynamic = [c for c in parts if S.tables_in(c) - consts]
                    return cls(p.param("table"), p.param("block"), len(dynamic) == 1)
        return None

    def atom_classes(self, grp, layout):
        """Atom classes [HG, NQA, NKA] (int32, on the layout's device) for this call's layout."""
        (aq, ak), gat, (bq, bk) = grp.blocks.atom, grp.gather, self.block
        dev = layout.device
        heads, static = _constants(grp, dev)
        allowed = (layout[heads] != 0).to(torch.int32)
        # set blocks in every atom's rectangle of blocks, by 2-D prefix sums
        pre = torch.nn.functional.pad(allowed.cumsum(1).cumsum(2), (1, 0, 1, 0))

        def spans(n_atoms, a, b, extent):
            lo = torch.arange(n_atoms, device=dev) * a
            return lo // b, (torch.clamp(lo + a, max=extent) - 1) // b + 1

        r0, r1 = spans(grp.blocks.static.shape[1], aq, bq, gat.Lq)
        c0, c1 = spans(grp.blocks.static.shape[2], ak, bk, gat.Lk)
        count = (pre[:, r1][:, :, c1] - pre[:, r0][:, :, c1] - pre[:, r1][:, :, c0] + pre[:, r0][:, :, c0])
        area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
        full = (static == FULL) & (count == area) if self.exact else torch.zeros_like(count, dtype=torch.bool)
        return torch.where((static == EMPTY) | (count == 0), EMPTY,
                           torch.where(full, FULL, PARTIAL)).to(torch.int32)

    def cached_tables(self, cache, grp, layout, clean_first=False):
        """`tables`, reused while the call passes the same unmodified layout tensor (`cache`:
        the caller's one-entry list; it holds the tensor, so identity is never a recycled address)."""
        if cache and cache[0][0] is layout and cache[0][1] == layout._version:
            return cache[0][2]
        got = self.tables(grp, layout, clean_first)
        cache[:] = [(layout, layout._version, got)]
        return got

    def tables(self, grp, layout, clean_first=False):
        """(count [HG, NQ], list, class [HG, NQ, NK], atom classes [HG, NQA, NKA]) for this
        call's layout. The list holds the non-empty key tiles in key order; clean_first puts
        the FULL tiles that end inside the keys first (the Triton kernels sweep them without
        masks) and the counts become [HG, NQ, 2]: all tiles, those FULL ones."""
        tiles, acls = self.tiles(grp, layout)
        bn = grp.plan.block_n
        nk = tiles.shape[-1]
        kidx = torch.arange(nk, device=tiles.device)
        clean = (tiles == FULL) & ((kidx + 1) * bn <= grp.gather.Lk)
        rank = torch.where(tiles == EMPTY, 2, torch.where(clean, 0, 1) if clean_first else 0)
        lst = torch.argsort(rank * nk + kidx, dim=-1).to(torch.int32)
        cls = torch.gather(tiles, -1, lst.long())
        cnt = (tiles != EMPTY).sum(-1, dtype=torch.int32)
        if clean_first:         # the Triton kernels' layout: counts [HG, NQ, 2] (all, clean)
            return torch.stack((cnt, clean.sum(-1, dtype=torch.int32)), -1), lst.contiguous(), cls.contiguous(), acls
        return cnt, lst.contiguous(), cls.contiguous(), acls

    def query_tables(self, grp, layout):
        """The transposed tables for this call's layout, for the backward's dK and dV:
        (count [HG, NK], list [HG, NK, NQ], class) of the query tiles that see each key tile,
        in query order."""
        tiles = self.tiles(grp, layout)[0].transpose(-1, -2)
        nq = tiles.shape[-1]
        qidx = torch.arange(nq, device=tiles.device)
        lst = torch.argsort(torch.where(tiles == EMPTY, 1, 0) * nq + qidx, dim=-1).to(torch.int32)
        return ((tiles != EMPTY).sum(-1, dtype=torch.int32), lst.contiguous(),
                torch.gather(tiles, -1, lst.long()).contiguous())

    def tiles(self, grp, layout):
        """(tile classes [HG, NQ, NK], atom classes [HG, NQA, NKA]) for this call's layout."""
        acls = self.atom_classes(grp, layout)
        bm, bn = grp.plan.block_m, grp.plan.block_n
        fq, fk = bm // grp.blocks.atom[0], bn // grp.blocks.atom[1]
        HG, nqa, nka = acls.shape
        pq, pk = -nqa % fq, -nka % fk
        c = torch.nn.functional.pad(acls, (0, pk, 0, pq), value=EMPTY).view(HG, -1, fq, (nka + pk) // fk, fk)
        real = torch.nn.functional.pad(torch.ones_like(acls, dtype=torch.bool), (0, pk, 0, pq)).view(c.shape)
        anyset = (c != EMPTY).any(4).any(2)
        allfull = ((c == FULL) | ~real).all(4).all(2)
        tiles = torch.where(allfull & anyset, FULL, torch.where(anyset, PARTIAL, EMPTY)).to(torch.int32)
        return tiles, acls
