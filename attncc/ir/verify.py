"""The IR verifier: checks a Program's invariants between passes (on in the test suite,
ATTNCC_VERIFY=1 elsewhere). A failure is a compiler bug, reported as VerifyError."""
import numpy as np

from . import symbols as S
from .evaluate import evaluate
from .program import EMPTY


class VerifyError(AssertionError):
    """The IR broke an invariant."""


def _check(cond, msg):
    if not cond:
        raise VerifyError(msg)


def _syms(expr, allowed, what):
    extra = S.free_index_symbols(expr) - set(allowed)
    _check(not extra, f"{what} uses symbols {sorted(map(str, extra))} outside {sorted(map(str, allowed))}: {expr}")


def verify(prog):
    d = prog.dims
    known = set(prog.captured) | {c.name for c in prog.constants} | {o for p in prog.prologues for o in p.outputs}
    _check(all(isinstance(x, int) and x > 0 for x in (d.B, d.H, d.N, d.M, d.d, d.dv)), f"bad dims {d}")
    _check(prog.groups, "a program needs at least one head group")
    heads = [hh for grp in prog.groups for hh in grp.heads]
    _check(sorted(heads) == list(range(d.H)), f"head groups {[g.heads for g in prog.groups]} must cover 0..{d.H - 1} once")
    _check(prog.scale > 0, f"scale {prog.scale} must be positive")
    _syms(prog.score, {S.score, S.b, S.h, S.i, S.j}, "score")
    for p in prog.post:
        _syms(p, {S.weight, S.b, S.h, S.i, S.j}, "post modifier")
    for expr in [prog.score, *prog.post]:
        _check(S.tables_in(expr) <= known, f"{expr} reads tensors {sorted(S.tables_in(expr) - known)} the program does not know")
    for k, grp in enumerate(prog.groups):
        for p in grp.preds:
            _syms(p.expr, {S.b, S.h, S.i, S.j}, f"group {k} predicate {p.kind}")
            _check(S.tables_in(p.expr) <= known, f"group {k} predicate {p.kind} reads unknown tensors")
        gat = grp.gather
        if gat is not None:
            _check(min(gat.G, gat.Lq, gat.Lk) > 0, f"group {k}: empty gather extents {gat}")
            _syms(gat.q_token, {S.g, S.t}, f"group {k} query map")
            _syms(gat.q_valid, {S.g, S.t}, f"group {k} query validity")
            kv = {S.g, S.u, S.b} | ({S.t} if gat.per_query else set())
            _syms(gat.k_token, kv, f"group {k} key map")
            _syms(gat.k_valid, kv, f"group {k} key validity")
            _syms(grp.residual, {S.b, S.h, S.g, S.t, S.u}, f"group {k} residual mask")
            if gat.G * gat.Lq <= 1 << 22:
                g = np.arange(gat.G)[:, None]
                t = np.arange(gat.Lq)[None, :]
                tok = np.broadcast_to(evaluate(gat.q_token, {S.g: g, S.t: t}), (gat.G, gat.Lq))
                ok = np.broadcast_to(np.asarray(evaluate(gat.q_valid, {S.g: g, S.t: t}), bool), (gat.G, gat.Lq))
                _check(np.array_equal(np.sort(tok[ok]), np.arange(d.N)),
                       f"group {k}: the query map of {gat.kind} must visit every query token exactly once")
        if grp.blocks is not None:
            _check(gat is not None, f"group {k} has blocks but no gather")
            aq, ak = grp.blocks.atom
            want = (gat.G, -(-gat.Lq // aq), -(-gat.Lk // ak))
            _check(grp.blocks.classes.shape == want, f"group {k}: block map {grp.blocks.classes.shape} != {want}")
            _check(np.isin(grp.blocks.classes, (0, 1, 2)).all(), f"group {k}: bad tile classes")
            _check(((grp.blocks.pairs > 0) | (grp.blocks.classes == EMPTY)).all()
                   and (grp.blocks.pairs[grp.blocks.classes == EMPTY] == 0).all(),
                   f"group {k}: pair counts disagree with tile classes")
        if grp.plan is not None:
            aq, ak = grp.blocks.atom
            _check(grp.plan.block_m % aq == 0 and grp.plan.block_n % ak == 0,
                   f"group {k}: plan {grp.plan} is not a multiple of atoms {grp.blocks.atom}")
    return prog
