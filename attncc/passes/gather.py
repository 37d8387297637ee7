"""gather: structured patterns become index maps, so every head group's work is a batch of
dense tiles.

A rule per predicate kind builds a Gather (group g, local query t, local key u -> tokens).
Of the predicates of a head group, the one with the fewest keys per query wins (routing
always wins: its keys exist only through the run-time table); the others stay in the
residual mask, evaluated on the gathered indices. With no structured predicate the key
source is dense (one group, identity maps) and classify_blocks skips its empty tiles.
"""
import math

import sympy

from ..ir import grid as Gr
from ..ir import symbols as S
from ..ir.program import Gather

T = sympy.true


def _window2d(pred, dims):
    (R, C), (wr, wc), (sr, sc) = pred.param("grid"), pred.param("window"), pred.param("shift")
    nwr, nwc = -(-R // wr), -(-C // wc)
    gr, gc = S.fdiv(S.g, nwc), sympy.Mod(S.g, nwc)

    def tok(loc):
        rs, cs = gr * wr + S.fdiv(loc, wc), gc * wc + sympy.Mod(loc, wc)   # shifted frame
        valid = sympy.And(rs < R if R % wr else T, cs < C if C % wc else T)
        r = sympy.Mod(rs + sr, R) if sr else rs
        c = sympy.Mod(cs + sc, C) if sc else cs
        return r * C + c, valid

    qt, qv = tok(S.t)
    kt, kv = tok(S.u)
    # the window equality holds by construction; the shifted region mask does not
    implied = not (sr or sc)
    return Gather("window2d", nwr * nwc, wr * wc, wr * wc, qt, qv, kt, kv), implied


def _neighborhood2d(pred, dims):
    (R, C), (kr, kc), (dr, dc) = pred.param("grid"), pred.param("kernel"), pred.param("dilation")

    def key_coord(q, loc, size, k, dil):
        res = sympy.Mod(q, dil)
        sub_size = S.fdiv(size - res + dil - 1, dil)
        start = sympy.Min(sympy.Max(S.fdiv(q, dil) - k // 2, 0), sub_size - k)
        return res + dil * (start + loc)

    row = key_coord(S.g, S.fdiv(S.u, kc), R, kr, dr)
    col = key_coord(S.t, sympy.Mod(S.u, kc), C, kc, dc)
    return Gather("neighborhood2d", R, C, kr * kc, S.g * C + S.t, T, row * C + col, T, per_query=True), True


def _axial(pred, dims):
    grid, axis = pred.param("grid"), pred.param("axis")
    rest = tuple(s for a, s in enumerate(grid) if a != axis)
    others = list(Gr.coords(S.g, rest)) if rest else []

    def tok(loc):
        cs = list(others)
        cs.insert(axis, loc)
        return Gr.token(cs, grid)

    G = math.prod(rest) if rest else 1
    return Gather("axial", G, grid[axis], grid[axis], tok(S.t), T, tok(S.u), T), True


def _stripes(pred, dims):
    grid, w, axis = pred.param("grid"), pred.param("width"), pred.param("axis")
    rest = tuple(s for a, s in enumerate(grid) if a != axis)
    P = math.prod(rest) if rest else 1

    def tok(loc):
        ca = S.g * w + S.fdiv(loc, P)
        cs = list(Gr.coords(sympy.Mod(loc, P), rest)) if rest else []
        cs.insert(axis, ca)
        return Gr.token(cs, grid), (ca < grid[axis]) if grid[axis] % w else T

    qt, qv = tok(S.t)
    kt, kv = tok(S.u)
    return Gather("stripes", -(-grid[axis] // w), w * P, w * P, qt, qv, kt, kv), True


def _dilated(pred, dims):
    r = pred.param("rate")
    if r == 1:
        return None, False
    qt, kt = S.g + r * S.t, S.g + r * S.u
    qv = (qt < dims.N) if dims.N % r else T
    kv = (kt < dims.M) if dims.M % r else T
    return Gather("dilated", r, -(-dims.N // r), -(-dims.M // r), qt, qv, kt, kv), False


def _routing(pred, dims):
    from ..dsl.patterns import ROUTE_IDX      # the table's name is part of the routing contract
    (R, C), (Sr, Sc), k = pred.param("grid"), pred.param("regions"), pred.param("topk")
    hr, hc = R // Sr, C // Sc
    tokens = hr * hc

    def tok(region, loc):
        return (S.fdiv(region, Sc) * hr + S.fdiv(loc, hc)) * C + sympy.Mod(region, Sc) * hc + sympy.Mod(loc, hc)

    kreg = S.table(ROUTE_IDX)[S.b, S.g, S.fdiv(S.u, tokens)]
    return Gather("routing", Sr * Sc, tokens, k * tokens, tok(S.g, S.t), T,
                  tok(kreg, sympy.Mod(S.u, tokens)), T), True


RULES = {
    "window2d": _window2d,
    "neighborhood2d": _neighborhood2d,
    "axial": _axial,
    "stripes": _stripes,
    "dilated": _dilated,
    "routing": _routing,
}
# targets whose kernels can gather keys per query (the others tile a dense source instead)
PER_QUERY_TARGETS = ("reference", "tvm")
PRIORITY = ("routing", "neighborhood2d", "window2d", "stripes", "axial", "dilated")


def dense(dims):
    return Gather("dense", 1, dims.N, dims.M, S.t, T, S.u, T)


def gather(prog, per_query=True):
    """Index maps for every head group: the best rule's gather, else the dense source.
    per_query=False leaves out gathers of keys per query (neighborhoods), whose key slots
    overlap: the backward's dK and dV then tile the dense source with the mask."""
    for k, grp in enumerate(prog.groups):
        best = None
        for n, pred in enumerate(grp.preds):
            rule = RULES.get(pred.kind)
            if rule is None:
                continue
            gat, implied = rule(pred, prog.dims)
            if gat is None or (gat.per_query and (not per_query or prog.target not in PER_QUERY_TARGETS)):
                continue
            rank = (pred.kind != "routing", gat.Lk, PRIORITY.index(pred.kind))
            if best is None or rank < best[0]:
                best = (rank, n, gat, implied)
        if best is None:
            gat, keep = dense(prog.dims), grp.preds
        else:
            _, n, gat, implied = best
            keep = tuple(p for m, p in enumerate(grp.preds) if not (m == n and implied))
        local = {S.i: gat.q_token, S.j: gat.k_token}
        with sympy.evaluate(False):        # plain substitution: sympy's auto-simplification is slow here
            residual = sympy.And(gat.q_valid, gat.k_valid, *(p.expr.xreplace(local) for p in keep))
        prog = prog.with_group(k, gather=gat, residual=residual)
    return prog
