"""Bi-level routing (BiFormer) in the generated CPU kernel: the routing prologue and the
routed key source (its static description: codegen/routes.py).

The prologue runs inside the kernel, before the attention: region sums of q and k over all
heads (the means up to the positive factor 1 / tokens, which changes no ranking), their
affinity, and the top-k regions per query region by repeated arg-max; it writes the index
table ridx [B, S^2, topk] (returned by `return_routing=True`). K is then packed transposed
once per (batch, head, region), the same single copy as the dense kernel's pack: no
topk-fold gathered K or V. The attention's gather groups are the query regions; key tile kk
of a group is its kk-th routed region, read in place through ridx (kpk for K, the region's
token map for V rows).
"""
from ...dsl.patterns import ROUTE_IDX
from ..routes import COL, REG
from .microkernel import pack_tile
from .printer import TIRPrinter


def route_param(sh, route):
    return f"{ROUTE_IDX[2:]}: T.Buffer(({sh.B}, {route.count}, {route.topk}), \"int32\")"


def prologue_and_pack(w, sh, route, heads):
    """The routing prologue (writes route_idx) and K packed per (batch, head, region)."""
    S2, W, nt = route.count, heads * sh.D, route.tokens
    ridx = ROUTE_IDX[2:]
    # no let-bound indices in these loops: TVM 0.27 then fails to lower them ("Buffer b is used
    # before its definition", seen here and in the linear kernel); the indices are inlined
    bb, reg = f"bs // {S2}", f"bs % {S2}"
    tok = TIRPrinter({REG: (f"({reg})", "int"), COL: ("c", "int")}, {})(route.token(REG, COL), "int")
    w(f"qm = T.alloc_buffer(({sh.B}, {S2}, {W}), \"float32\")")
    w(f"km = T.alloc_buffer(({sh.B}, {S2}, {W}), \"float32\")")
    w(f"for bs in T.parallel({sh.B * S2}):")
    with w.block():
        w(f"for j in range({W}):")
        with w.block():
            w(f"qm[{bb}, {reg}, j] = T.float32(0)")
            w(f"km[{bb}, {reg}, j] = T.float32(0)")
        w(f"for c in range({nt}):")
        with w.block():
            w(f"for hx in range({heads}):")
            with w.block():
                w(f"for j in T.vectorized({sh.D}):")
                with w.block():
                    for m, x in (("qm", "q"), ("km", "k")):
                        cell = f"{m}[{bb}, {reg}, hx * {sh.D} + j]"
                        w(f"{cell} = {cell} + {x}[{bb}, hx, {tok}, j]")
    w(f"aff = T.alloc_buffer(({sh.B}, {S2}, {S2}), \"float32\")")
    w(f"for bs in T.parallel({sh.B * S2}):")
    with w.block():
        w("best = T.alloc_buffer((1,), \"int32\", scope=\"local\")")
        w("top = T.alloc_buffer((1,), \"float32\", scope=\"local\")")
        w(f"for r2 in range({S2}):")
        with w.block():
            w(f"aff[{bb}, {reg}, r2] = T.float32(0)")
            w(f"for j in range({W}):")
            with w.block():
                w(f"aff[{bb}, {reg}, r2] = aff[{bb}, {reg}, r2] + qm[{bb}, {reg}, j] * km[{bb}, r2, j]")
        w(f"for kk in range({route.topk}):")
        with w.block():
            w("best[0] = 0")
            w("top[0] = T.float32(-3.0e38)")
            w(f"for r2 in range({S2}):")
            with w.block():
                w(f"if aff[{bb}, {reg}, r2] > top[0]:")
                with w.block():
                    w(f"top[0] = aff[{bb}, {reg}, r2]")
                    w("best[0] = r2")
            w(f"{ridx}[{bb}, {reg}, kk] = best[0]")
            w(f"aff[{bb}, {reg}, best[0]] = T.float32(-3.4e38)")       # taken: below every real affinity
    region_keys(w, sh, route)
    pack_regions(w, sh, route, (("kpk", "k", sh.D),))


def region_keys(w, sh, route):
    """ktk / kokp [S^2, 1, BNP]: each region's tokens (the routed key tiles' key map)."""
    S2, nt = route.count, route.tokens
    tok = TIRPrinter({REG: ("reg", "int"), COL: ("c", "int")}, {})(route.token(REG, COL), "int")
    w(f"ktk = T.alloc_buffer(({S2}, 1, {sh.BNP}), \"int32\")")
    w(f"kokp = T.alloc_buffer(({S2}, 1, {sh.BNP}), \"float32\")")
    w(f"for reg in T.parallel({S2}):")
    with w.block():
        w(f"for c in range({sh.BNP}):")
        with w.block():
            w(f"kokp[reg, 0, c] = T.Select(c < {nt}, T.float32(1), T.float32(0))")
            w(f"ktk[reg, 0, c] = T.Select(c < {nt}, {tok}, 0)")


def pack_regions(w, sh, route, packs):
    """Per (batch, head, region), each (buffer, tensor, width) of `packs` packed transposed
    through the region's tokens (K for QK^T; V too for the backward's dO V^T): one copy."""
    S2 = route.count
    for buf, _, width in packs:
        w(f"{buf} = T.alloc_buffer(({sh.B}, {sh.HG}, {S2}, 1, {width}, {sh.BNP}), \"float32\")")
    w(f"for task in T.parallel({sh.B * sh.HG * S2}):")
    with w.block():
        w(f"b = task // {sh.HG * S2}")
        w(f"hh = task // {S2} % {sh.HG}")
        w(f"reg = task % {S2}")
        w("h = heads[hh]")
        for buf, src, width in packs:
            pack_tile(w, sh, f"{buf}[b, hh, reg, 0, ", "reg, 0", src=src, width=width)
