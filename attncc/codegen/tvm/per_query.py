"""Kernels for per-query gathers (neighborhood attention): every query has its own keys,
read in place through the key index map (no K/V copies). One task row at a time: the
query's keys are gathered by index, scored with a vectorized dot product, normalized over
the row in one pass (the row's keys are one tile), and combined with their values."""
from ...ir import symbols as S
from ...ir.program import FULL, PARTIAL
from .printer import TIRPrinter
from .items import _chunk, task_item
from .source import _post_chain, close_kernel, open_kernel


def generate_per_query(prog, grp, sh, tables):
    gat, norm = grp.gather, prog.norm
    base = {S.g: ("g", "int"), S.t: ("t", "int"), S.u: ("u", "int"), S.b: ("b", "int"), S.h: ("h", "int"),
            S.i: ("qtok", "int"), S.j: ("ktl[u]", "int")}
    P = TIRPrinter(base, {n: (s, k) for n, (s, k, _) in tables.items()})
    Ps = TIRPrinter({**base, S.score: ("s[u]", "float")}, P.tables)
    atom_lookup = sh.BM != sh.AQ
    residual = P(grp.residual, "bool") if grp.residual is not None else "T.bool(True)"
    if atom_lookup:
        ac = f"acls[g, T.min(T.floordiv(t, {sh.AQ}), {sh.NQA - 1}), 0]"
        residual = f"T.Or({ac} == {FULL}, T.And({ac} == {PARTIAL}, {residual}))"
    D8 = sh.D // 8 * 8
    w = open_kernel(sh, tables, "the IR (per-query gather)")
    items = sh.B * sh.HG * sh.G * sh.NQ
    chunk = _chunk(items)
    w(f"for task in T.parallel({items // chunk}):")
    with w.block():
        for name, n, dt in (("qs", sh.D, "float32"), ("s", sh.LK, "float32"), ("ktl", sh.LK, "int32"),
                            ("kvl", sh.LK, "int32"), ("acc", sh.DV, "float32"), ("lanes", 8, "float32"),
                            ("st", 2, "float32")):
            w(f"{name} = T.alloc_buffer(({n},), \"{dt}\", scope=\"local\")")
        w(f"for it in range({chunk}):")
        with w.block():
            task_item(w, sh, chunk)
            w(f"for r in range({sh.BM}):")
            with w.block():
                w(f"t = qi * {sh.BM} + r")
                w(f"if T.And(t < {sh.LQ}, {P(gat.q_valid, 'bool')}):")
                with w.block():
                    _row(w, prog, sh, gat, norm, P, Ps, residual, D8)
    return close_kernel(w)


def _row(w, prog, sh, gat, norm, P, Ps, residual, D8):
    w(f"qtok = {P(gat.q_token, 'int')}")
    w(f"for j in T.vectorized({sh.D}):")
    with w.block():
        w(f"qs[j] = q[b, h, qtok, j] * T.float32({prog.scale!r})")
    # the query's keys, in place through the key map, scored by a vectorized dot product
    w(f"for u in range({sh.LK}):")
    with w.block():
        w(f"kvl[u] = T.Cast(\"int32\", T.And(tcnt[g, qi] > 0, {P(gat.k_valid, 'bool')}))")
        w(f"ktl[u] = T.Select(kvl[u] != 0, {P(gat.k_token, 'int')}, 0)")
        w("for i in T.vectorized(8):")
        with w.block():
            w("lanes[i] = T.float32(0)")
        w(f"for dd in range({D8 // 8}):")
        with w.block():
            w("for i in T.vectorized(8):")
            with w.block():
                w("lanes[i] = lanes[i] + qs[dd * 8 + i] * k[b, h, ktl[u], dd * 8 + i]")
        tail = " + ".join(f"qs[{x}] * k[b, h, ktl[u], {x}]" for x in range(D8, sh.D))
        w(f"s[u] = lanes_sum(lanes, 8){' + ' + tail if tail else ''}")
    if prog.score != S.score:
        w(f"for u in range({sh.LK}):")
        with w.block():
            w(f"s[u] = {Ps(prog.score, 'float')}")
    w(f"for u in range({sh.LK}):")
    with w.block():
        w(f"if T.Or(kvl[u] == 0, T.And(tcls[g, qi, 0] == {PARTIAL}, T.Not({residual}))):")
        with w.block():
            w("s[u] = T.float32(NEG)")
    # the row's statistics in one pass (all its keys are here)
    w("st[0] = T.float32(NEG)")
    w(f"for u in range({sh.LK}):")
    with w.block():
        w("st[0] = T.max(st[0], s[u])")
    w("st[1] = T.float32(0)")
    w(f"for u in range({sh.LK}):")
    with w.block():
        w("st[1] = st[1] + live(s[u], fexp(s[u] - st[0]))")
    if norm.kind == "softmax":
        wexpr = "(fexp(s[u] - st[0]) / st[1])"
    else:
        wexpr = f"(T.float32(1) / (T.float32(1) + fexp(T.float32({-norm.bias!r}) - s[u])))"
    names = {**P.names, S.weight: (wexpr, "float")}
    wtext = TIRPrinter(names, P.tables)(_post_chain(prog), "float")
    w(f"for u in range({sh.LK}):")
    with w.block():
        w(f"s[u] = live(s[u], {wtext})")
    w(f"for j in T.vectorized({sh.DV}):")
    with w.block():
        w("acc[j] = T.float32(0)")
    w(f"for u in range({sh.LK}):")
    with w.block():
        w(f"for j in T.vectorized({sh.DV}):")
        with w.block():
            w("acc[j] = acc[j] + s[u] * v[b, h, ktl[u], j]")
    w(f"for j in T.vectorized({sh.DV}):")
    with w.block():
        w("o[b, h, qtok, j] = acc[j]")
    w("lse[b, h, qtok] = row_lse(st[0], st[1], T.log(st[1]))")
