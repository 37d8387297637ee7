"""The eager reference backend: every pattern exactly as PATTERNS.md defines it, in float32
whatever the input dtype, memory-proportional to the useful pairs.

It walks the lowered Program: for every head group, every (group, query tile) visits only
its non-empty key tiles (gathered through the index maps), evaluates the residual mask on
partial tiles only, and computes the row's normalizer exactly (all of a row's keys are in
one batch, so no online rescaling is needed). Batches of tiles with the same number of key
tiles are stacked, and split to stay under a memory budget.
"""
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from ..ir import symbols as S
from ..ir.evaluate import evaluate
from ..ir.program import FULL, PARTIAL
from .features import feature_map
from .routing import routing_tables
from .torch_ops import TorchOps, like

BUDGET = 1 << 24            # elements of the largest intermediate of one batch


def tables(prog, q, k, captured, dtype):
    env = {}
    for name, x in captured.items():
        env[name] = x.to(dtype) if x.is_floating_point() else x
    for c in prog.constants:
        env[c.name] = torch.from_numpy(np.array(c.array))
    for pro in prog.prologues:
        env.update(routing_tables(pro, q, k, prog.scale, pro.outputs))
    return env


def run(prog, q, k, v, captured, return_lse=False, dtype=torch.float32):
    """out [B, H, N, dv] in q's dtype, and lse [B, H, N] (float32) when asked."""
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    B, H, N, _ = q.shape
    env = tables(prog, qf, kf, captured, dtype)
    out = torch.zeros(B, H, N, v.shape[-1], dtype=dtype, device=q.device)
    lse = torch.full((B, H, N), -float("inf"), dtype=dtype, device=q.device)
    ops = TorchOps(q.device)
    for grp in prog.groups:
        hs = torch.tensor(grp.heads, device=q.device)
        sel = (lambda x: x) if len(grp.heads) == H else (lambda x: x.index_select(1, hs))
        o, l = _Group(prog, grp, ops, env).run(sel(qf), sel(kf), sel(vf))
        out[:, hs], lse[:, hs] = o, l
    return (out.to(q.dtype), lse) if return_lse else out.to(q.dtype)


@dataclass
class _Batch:
    """Index tensors of a batch of (group, query tile) items and their key tiles."""
    g: torch.Tensor        # [n] groups
    tl: torch.Tensor       # [n, bm] local query indices
    ul: torch.Tensor       # [n, Kn] local key indices
    qt: torch.Tensor       # [n, bm] query tokens
    qok: torch.Tensor      # [n, bm] real queries
    kt: torch.Tensor       # [Bk, n, Tk, Kn] key tokens
    cls: torch.Tensor      # [n, bm, Kn] atom class of every pair
    ok: torch.Tensor       # [Bk, 1, n, bm|1, Kn] both tokens exist


class _Group:
    def __init__(self, prog, grp, ops, env):
        self.prog, self.grp, self.ops, self.env = prog, grp, ops, env
        gat, plan = grp.gather, grp.plan
        self.bm, self.bn = plan.block_m, plan.block_n
        self.tiles = grp.blocks.coarsen(self.bm, self.bn)
        G, nQ, nK = self.tiles.shape
        dev = ops.device
        B = prog.dims.B
        ar = lambda n: torch.arange(n, device=dev)
        t, u = ar(nQ * self.bm), ar(nK * self.bn)
        base = {S.g: ar(G)[:, None], S.t: t[None, :]}
        self.qtok = self._ev(gat.q_token, base, (G, nQ * self.bm))
        self.qok = self._ev(gat.q_valid, base, (G, nQ * self.bm)) & (t < gat.Lq)
        kenv = {S.b: ar(B)[:, None, None, None], S.g: ar(G)[None, :, None, None],
                S.t: t[None, None, :, None], S.u: u[None, None, None, :]}
        syms = sympy.sympify(gat.k_token).free_symbols
        shape = (B if S.b in syms else 1, G, nQ * self.bm if gat.per_query else 1, nK * self.bn)
        real = (u < gat.Lk).view(1, 1, 1, -1)
        ktok = self._ev(gat.k_token, kenv, shape, tables=True, valid=real)
        kok = self._ev(gat.k_valid, kenv, shape, tables=True, valid=real) & real
        self.ktok = torch.where(kok, ktok, 0).clamp(0, prog.dims.M - 1)
        self.kok = kok
        self.qtok = torch.where(self.qok, self.qtok, 0).clamp(0, prog.dims.N - 1)
        self.heads = torch.tensor(grp.heads, device=dev)

    def _ev(self, expr, env, shape, tables=False, valid=None):
        if tables:
            env = {**env, **self.env}
        x = evaluate(expr, env, self.ops, valid=valid)
        return torch.as_tensor(x, device=self.ops.device).expand(shape)

    def items(self, classes):
        """Buckets of (g, query tile) by how many of their key tiles are in `classes`:
        {count: (g [n], qtile [n], ktiles [n, count])}."""
        sel = np.isin(self.tiles, classes)
        G, nQ, _ = self.tiles.shape
        buckets = {}
        for g in range(G):
            for qi in range(nQ):
                ks = np.flatnonzero(sel[g, qi])
                buckets.setdefault(len(ks), []).append((g, qi, ks))
        out = {}
        for c, rows in buckets.items():
            gs = np.array([r[0] for r in rows])
            qs = np.array([r[1] for r in rows])
            ks = np.stack([r[2] for r in rows]) if c else np.zeros((len(rows), 0), dtype=np.int64)
            out[c] = (gs, qs, ks)
        return out

    def batches(self, buckets, width):
        for c, (gs, qs, ks) in sorted(buckets.items()):
            per_item = self.prog.dims.B * len(self.grp.heads) * self.bm * max(1, c * self.bn) * width
            step = max(1, BUDGET // max(1, per_item))
            for s in range(0, len(gs), step):
                yield c, gs[s:s + step], qs[s:s + step], ks[s:s + step]

    def indices(self, gs, qs, ks):
        dev = self.ops.device
        g = torch.as_tensor(gs, device=dev)
        tl = torch.as_tensor(qs, device=dev)[:, None] * self.bm + torch.arange(self.bm, device=dev)
        ul = (torch.as_tensor(ks, device=dev)[:, :, None] * self.bn
              + torch.arange(self.bn, device=dev)).reshape(len(gs), -1)
        qt, qok = self.qtok[g[:, None], tl], self.qok[g[:, None], tl]
        Bk, _, Tk, _ = self.ktok.shape
        tsel = tl[:, :, None] if Tk > 1 else torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
        kt = self.ktok[:, g[:, None, None], tsel, ul[:, None, :]]          # [Bk, n, Tk, Kn]
        kok = self.kok[:, g[:, None, None], tsel, ul[:, None, :]]
        # the atom class of every (query, key) of the batch: masks are exact per atom
        aq, ak = self.grp.blocks.atom
        atoms = torch.tensor(self.grp.blocks.classes, device=dev)
        nqa, nka = atoms.shape[1:]
        cls = atoms[g[:, None, None], (tl // aq).clamp(max=nqa - 1)[:, :, None],
                    (ul // ak).clamp(max=nka - 1)[:, None, :]]
        return _Batch(g, tl, ul, qt, qok, kt, cls, qok[None, None, :, :, None] & kok[:, None])

    def token_env(self, bt, B):
        """Symbols of score and post expressions, broadcast as [B, Hg, n, bm, Kn]."""
        return {S.b: torch.arange(B, device=bt.g.device).view(-1, 1, 1, 1, 1),
                S.h: self.heads.view(1, -1, 1, 1, 1), S.i: bt.qt[None, None, :, :, None],
                S.j: bt.kt[:, None], **self.env}

    def take(self, x, tok):
        """x [B, Hg, L, e] at tokens tok [Bk, n, Tk, Kn] -> [B, Hg, n, Tk, Kn, e]."""
        xt = x.transpose(1, 2)
        if tok.shape[0] == 1:
            y = xt[:, tok[0]]
        else:
            y = xt[torch.arange(xt.shape[0], device=x.device).view(-1, 1, 1, 1), tok]
        return y.permute(0, 4, 1, 2, 3, 5)

    def mask(self, bt):
        """Boolean [B|1, Hg|1, n, bm, Kn]: padding, then per atom: FULL -> true, EMPTY -> false,
        PARTIAL -> the residual mask (exact there, by simplify_masks' contract)."""
        gat = self.grp.gather
        pad = (bt.tl < gat.Lq)[:, :, None] & (bt.ul < gat.Lk)[:, None, :]
        m = (pad & (bt.cls == FULL))[None, None]
        partial = (pad & (bt.cls == PARTIAL))[None, None]
        res = self.grp.residual
        if bool(partial.any()):
            if res is sympy.true:
                return m | partial
            env = {S.b: torch.arange(self.prog.dims.B, device=bt.g.device).view(-1, 1, 1, 1, 1),
                   S.h: self.heads.view(1, -1, 1, 1, 1), S.g: bt.g.view(1, 1, -1, 1, 1),
                   S.t: bt.tl[None, None, :, :, None], S.u: bt.ul[None, None, :, None, :], **self.env}
            r = evaluate(res, env, self.ops, valid=partial & bt.ok)
            if not isinstance(r, torch.Tensor):
                r = torch.tensor(bool(r), device=bt.g.device)
            m = m | (partial & r)
        return m

    def scores(self, Q, K, bt, m):
        s = (Q @ K.transpose(-1, -2)) if K.dim() == 5 else torch.einsum("bhnqd,bhnqkd->bhnqk", Q, K)
        s = s * self.prog.scale
        if self.prog.score != S.score:
            env = {**self.token_env(bt, s.shape[0]), S.score: s}
            s = like(evaluate(self.prog.score, env, self.ops, valid=m), s)
        return s

    def run(self, q, k, v):
        B, Hg, N, _ = q.shape
        out = q.new_zeros(B, Hg, N, v.shape[-1])
        lse = q.new_full((B, Hg, N), -float("inf"))
        if self.prog.norm.kind == "linear":
            return self.run_linear(q, k, v, out, lse)
        per_query = self.ktok.shape[2] > 1
        width = max(q.shape[-1], v.shape[-1]) * (self.bm if per_query else 1)
        for c, gs, qs, ks in self.batches(self.items((PARTIAL, FULL)), width):
            if c == 0:
                continue                    # rows with no key: output 0, lse -inf
            bt = self.indices(gs, qs, ks)
            Q = q[:, :, bt.qt]                                  # [B, Hg, n, bm, d]
            K, V = self.take(k, bt.kt), self.take(v, bt.kt)     # [B, Hg, n, Tk, Kn, e]
            if not per_query:
                K, V = K[:, :, :, 0], V[:, :, :, 0]
            m = self.mask(bt)
            s = self.scores(Q, K, bt, m)
            w, l = self.normalize(s, m, bt)
            o = (w @ V) if V.dim() == 5 else torch.einsum("bhnqk,bhnqkd->bhnqd", w, V)
            idx = bt.qt[bt.qok]
            out[:, :, idx] = o[:, :, bt.qok]
            lse[:, :, idx] = l[:, :, bt.qok]
        return out, lse

    def normalize(self, s, m, bt):
        sm = s.masked_fill(~m, -float("inf"))
        mx = sm.amax(dim=-1, keepdim=True)
        # a fully masked row has max -inf (sum 0, lse -inf, weights 0); a +inf score gives
        # exp(inf - inf): NaN, as SDPA; a NaN score is not masked and carries its NaN on
        mx0 = torch.where(mx == -float("inf"), 0.0, mx)
        p = torch.exp(sm - mx0)
        l = p.sum(dim=-1)
        lse = torch.where(l > 0, mx0[..., 0] + torch.log(torch.where(l > 0, l, 1.0)),
                          torch.where(l == 0, -float("inf"), l))
        if self.prog.norm.kind == "softmax":
            w = p / torch.where(l > 0, l, 1.0)[..., None]
        else:
            w = torch.where(m, torch.sigmoid(s + self.prog.norm.bias), 0.0)
        if self.prog.post:
            env = self.token_env(bt, s.shape[0])
            for post in self.prog.post:
                w = torch.where(m, like(evaluate(post, {**env, S.weight: w}, self.ops, valid=m), w), 0.0)
        return w, lse

    def run_linear(self, q, k, v, out, lse):
        norm = self.prog.norm
        assert self.ktok.shape[0] == 1 and self.ktok.shape[2] == 1, "linear attention has static shared keys"
        pq, pk = feature_map(norm.feature_map, q), feature_map(norm.feature_map, k)
        G, nQ, nK = self.tiles.shape
        kt_all, ok = self.ktok[0, :, 0], self.kok[0, :, 0]                  # [G, nK*bn]
        Kg = pk[:, :, kt_all] * ok[..., None]                              # [B, Hg, G, L, d]
        Vg = v[:, :, kt_all] * ok[..., None]
        B, Hg = q.shape[:2]
        Kg = Kg.reshape(B, Hg, G, nK, self.bn, -1)
        Vg = Vg.reshape(B, Hg, G, nK, self.bn, -1)
        state = torch.einsum("bhgkud,bhgkue->bhgkde", Kg, Vg)             # per key tile
        zsum = Kg.sum(dim=4)                                                # [B, Hg, G, nK, d]
        full_sets = self.items((FULL,))
        fullmap = {(int(g), int(qi)): ks for c, (gs, qs, kss) in full_sets.items()
                   for g, qi, ks in zip(gs, qs, kss)}
        width = max(q.shape[-1], v.shape[-1])
        for c, gs, qs, ks in self.batches(self.items((PARTIAL,)), width):
            bt = self.indices(gs, qs, ks)
            Q = pq[:, :, bt.qt]                                             # [B, Hg, n, bm, d]
            F = torch.zeros(len(gs), nK, dtype=q.dtype, device=q.device)
            for r, (gg, qi) in enumerate(zip(gs, qs)):
                F[r, fullmap[(int(gg), int(qi))]] = 1
            if G == 1:
                Ssum = torch.einsum("nk,bhkde->bhnde", F, state[:, :, 0])
                zs = torch.einsum("nk,bhkd->bhnd", F, zsum[:, :, 0])
            else:
                Ssum = torch.einsum("nk,bhnkde->bhnde", F, state[:, :, bt.g])
                zs = torch.einsum("nk,bhnkd->bhnd", F, zsum[:, :, bt.g])
            num = Q @ Ssum
            den = (Q * zs[:, :, :, None, :]).sum(-1)
            if c:
                m = self.mask(bt)
                K, V = self.take(pk, bt.kt)[:, :, :, 0], self.take(v, bt.kt)[:, :, :, 0]
                a = (Q @ K.transpose(-1, -2)) * m
                num = num + a @ V
                den = den + a.sum(-1)
            o = num / (den + norm.eps)[..., None]
            out[:, :, bt.qt[bt.qok]] = o[:, :, bt.qok]
        return out, lse
