"""classify_blocks: each (group, query atom, key atom) tile is FULL, PARTIAL or EMPTY.

Decided by evaluating the residual mask at compile time over the gathered indices (numpy,
a slab of query atoms at a time). Conjuncts that read run-time tensors (captured tensors,
routing tables) cannot be decided: a tile they touch is at best PARTIAL, and EMPTY only when
the static conjuncts already rule it out (the classes of the static conjuncts alone are kept
too: with a run-time block-sparse layout, the backends refine them per call, tiles.py). A mask that depends on b or h is evaluated for
every batch index and head of the group (a tile is FULL only when it is full for all).
"""
import numpy as np
import sympy

from ..ir import symbols as S
from ..ir.evaluate import evaluate
from ..ir.program import EMPTY, FULL, PARTIAL, BlockMap
from .resources import reserve

SLAB_ELEMENTS = 1 << 22


ATOM = 16


def atom(extent):
    """Atom size along one local axis: 16, or the whole extent when it is small and not a
    multiple of 16 (a 7x7 window is one atom of 49)."""
    return extent if extent <= 64 and extent % ATOM else ATOM


def split_static(expr, prog):
    """(static conjuncts, dynamic conjuncts) of a boolean expression."""
    consts = {c.name for c in prog.constants}
    parts = expr.args if isinstance(expr, sympy.And) else (expr,)
    static, dynamic = [], []
    for p in parts:
        (static if S.tables_in(p) <= consts else dynamic).append(p)
    return static, dynamic


def local_env(prog, gat, g, t, u, b=0, h=0):
    env = {S.g: g, S.t: t, S.u: u, S.b: b, S.h: h}
    env.update({c.name: c.array for c in prog.constants})
    return env


def eval_tiles(expr, prog, grp, on_tile):
    """Evaluate `expr` over every (g, t, u) of the group in slabs of query atoms and call
    on_tile(g0, qa0, values[gs, Lq_slab, Lk]) with the boolean values."""
    gat = grp.gather
    aq = atom(gat.Lq)
    syms = expr.free_symbols
    bs = range(prog.dims.B) if S.b in syms else (0,)
    hs = grp.heads if S.h in syms else (grp.heads[0],)
    per_g = max(1, SLAB_ELEMENTS // max(1, gat.Lq * gat.Lk))
    rows = max(aq, (SLAB_ELEMENTS // max(1, gat.Lk)) // aq * aq)
    u = np.arange(gat.Lk)[None, None, :]
    for g0 in range(0, gat.G, per_g):
        g = np.arange(g0, min(gat.G, g0 + per_g))[:, None, None]
        for t0 in range(0, gat.Lq, rows if per_g == 1 else gat.Lq):
            t = np.arange(t0, min(gat.Lq, t0 + (rows if per_g == 1 else gat.Lq)))[None, :, None]
            acc_all, acc_any = None, None
            for b in bs:
                for h in hs:
                    env = local_env(prog, gat, g, t, u, b, h)
                    # tables are read only where both tokens exist (padding may index past them)
                    valid = np.asarray(evaluate(sympy.And(gat.q_valid, gat.k_valid), env), dtype=bool)
                    v = evaluate(expr, env, valid=valid)
                    v = np.broadcast_to(np.asarray(v, dtype=bool), (g.shape[0], t.shape[1], gat.Lk))
                    acc_all = v if acc_all is None else acc_all & v
                    acc_any = v if acc_any is None else acc_any | v
            on_tile(g0, t0 // aq, acc_all, acc_any)


def _reduce(v, aq, ak, fill):
    G, lq, lk = v.shape
    pq, pk = -lq % aq, -lk % ak
    v = np.pad(v, ((0, 0), (0, pq), (0, pk)), constant_values=fill)
    return v.reshape(G, (lq + pq) // aq, aq, (lk + pk) // ak, ak)


def classify_blocks(prog):
    for k, grp in enumerate(prog.groups):
        gat = grp.gather
        aq, ak = atom(gat.Lq), atom(gat.Lk)
        shape = (gat.G, -(-gat.Lq // aq), -(-gat.Lk // ak))
        d = prog.dims
        reserve(int(np.prod(shape)) * 10, f"the block classification of N={d.N} queries against M={d.M} keys "
                f"({' x '.join(map(str, shape))} tiles of {aq} x {ak}: classes and pair counts)",
                "call the kernel on shorter sequences (the tables grow with N x M / 256 for a dense key source)")
        classes = np.full((gat.G, -(-gat.Lq // aq), -(-gat.Lk // ak)), EMPTY, dtype=np.int8)
        static_classes = classes.copy()
        pairs = np.zeros(classes.shape, dtype=np.int64)
        static, dynamic = split_static(grp.residual, prog)
        expr = sympy.And(*static)

        def on_tile(g0, qa0, all_v, any_v):
            full = _reduce(all_v, aq, ak, True).all(axis=(2, 4))
            some = _reduce(any_v, aq, ak, False).any(axis=(2, 4))
            cls = np.where(full & some, FULL, np.where(some, PARTIAL, EMPTY)).astype(np.int8)
            static_classes[g0:g0 + cls.shape[0], qa0:qa0 + cls.shape[1]] = cls
            if dynamic:
                cls = np.where(cls == FULL, PARTIAL, cls)
            classes[g0:g0 + cls.shape[0], qa0:qa0 + cls.shape[1]] = cls
            cnt = _reduce(any_v, aq, ak, False).sum(axis=(2, 4))
            pairs[g0:g0 + cnt.shape[0], qa0:qa0 + cnt.shape[1]] = cnt

        eval_tiles(expr, prog, grp, on_tile)
        prog = prog.with_group(k, blocks=BlockMap((aq, ak), classes, pairs, static_classes if dynamic else None))
    return prog
