"""reads: every read of a captured tensor, with the range of its indices.

A captured tensor (a relative position bias table, a user's bias or document ids) is read
through index expressions over (b, h, i, j). For every head group this pass records each
read's indices over the group's local symbols (through the gather's maps) and their interval
bounds over the group's domain (ir/intervals.py), so that a call can check the tensors it is
given before any backend reads them (runtime/inputs.py): kernels clamp table reads, and a
table smaller than the pattern needs would otherwise give a silently wrong answer.

Interval bounds are sound but may be loose (sliding-window offsets such as q - k + 10 bound
over the whole domain, not the band); `exact_ranges` evaluates the indices over the pairs the
group really computes, for a caller whose tensor is smaller than the bound.
"""
import numpy as np
import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanFunction

from ..ir import symbols as S
from ..ir.evaluate import evaluate
from ..ir.intervals import bound
from ..ir.program import FULL, PARTIAL, Read
from .classify_blocks import SLAB_ELEMENTS, local_env, split_static

# the order in which a call checks reads: the tensors whose values index others come first
USES = ("index", "compare", "value")


def _walk(e, use, out):
    if isinstance(e, sympy.Indexed):
        out.append((e, use))
        for ix in e.indices:
            _walk(ix, "index", out)
        return
    if isinstance(e, sympy.Piecewise):
        for val, cond in e.args:
            _walk(val, use, out)
            _walk(cond, "compare", out)
        return
    if isinstance(e, (Relational, BooleanFunction)):
        use = "compare"
    for a in e.args:
        _walk(a, use, out)


def domain(prog, grp, values=None):
    """The box of a head group's local symbols, and the value ranges of the tables the
    compiler knows (constants, routing tables) plus `values` (name -> (lo, hi))."""
    gat, d = grp.gather, prog.dims
    box = {S.b: (0, d.B - 1), S.h: (min(grp.heads), max(grp.heads)), S.g: (0, gat.G - 1),
           S.t: (0, gat.Lq - 1), S.u: (0, gat.Lk - 1)}
    for c in prog.constants:
        box[c.name] = (int(c.array.min()), int(c.array.max())) if c.array.size else (0, 0)
    for pro in prog.prologues:
        count = pro.param("regions")[0] * pro.param("regions")[1]
        box[pro.outputs[0]], box[pro.outputs[1]] = (0, 1), (0, count - 1)
    box.update(values or {})
    return box


def reads(prog):
    captured = set(prog.captured)
    out = []
    for k, grp in enumerate(prog.groups):
        gat = grp.gather
        local = {S.i: gat.q_token, S.j: gat.k_token}
        found = []
        for e in (prog.score, *prog.post):
            _walk(e, "value", found)
        for p in grp.preds:
            _walk(p.expr, "compare", found)
        box = domain(prog, grp)
        seen = set()
        for e, use in found:
            name = str(e.base.label)
            index = tuple(sympy.sympify(ix).xreplace(local) for ix in e.indices)
            if name not in captured or (name, index, use) in seen:
                continue
            seen.add((name, index, use))
            out.append(Read(name, k, e, index, use, tuple(bound(ix, box) for ix in index)))
    out.sort(key=lambda r: USES.index(r.use))
    return prog.replace(reads=tuple(out))


def exact_ranges(prog, read, tables):
    """The exact (lo, hi) of every index of `read` over the pairs its head group computes
    (tiles the block classification keeps, the static mask on partial ones), None for an
    index no such pair reads. `tables`: numpy arrays of the captured tensors the indices
    read (document ids, say)."""
    grp = prog.groups[read.group]
    gat, blocks = grp.gather, grp.blocks
    cls = blocks.static if blocks.static is not None else blocks.classes
    aq, ak = blocks.atom
    static, _ = split_static(grp.residual, prog)
    smask = sympy.And(*static)
    syms = set(smask.free_symbols).union(*(S.free_index_symbols(ix) for ix in read.index))
    bs = range(prog.dims.B) if S.b in syms else (0,)
    hs = grp.heads if S.h in syms else (grp.heads[0],)
    per_g = max(1, SLAB_ELEMENTS // max(1, gat.Lq * gat.Lk))      # several small groups a slab
    rows = gat.Lq if per_g > 1 else max(1, SLAB_ELEMENTS // max(1, gat.Lk))
    u = np.arange(gat.Lk)[None, None, :]
    spans = [None] * len(read.index)
    for g0 in range(0, gat.G, per_g):
        g = np.arange(g0, min(gat.G, g0 + per_g))[:, None, None]
        for t0 in range(0, gat.Lq, rows):
            t = np.arange(t0, min(gat.Lq, t0 + rows))[None, :, None]
            c = cls[g[:, 0, 0]][:, (t[0, :, 0] // aq)[:, None], (u[0, 0] // ak)[None, :]]
            for b in bs:
                for h in hs:
                    env = {**local_env(prog, gat, g, t, u, b, h), **tables}
                    real = np.asarray(evaluate(sympy.And(gat.q_valid, gat.k_valid), env), dtype=bool)
                    ok = np.broadcast_to(np.asarray(evaluate(smask, env, valid=real), dtype=bool), c.shape)
                    ok = (c == FULL) | ((c == PARTIAL) & ok & np.broadcast_to(real, c.shape))
                    if not ok.any():
                        continue
                    for n, ix in enumerate(read.index):
                        x = np.broadcast_to(np.asarray(evaluate(ix, env, valid=ok)), c.shape)[ok]
                        lo, hi = int(x.min()), int(x.max())
                        spans[n] = (lo, hi) if spans[n] is None else (min(spans[n][0], lo), max(spans[n][1], hi))
    return tuple(spans)
