"""Generate the TVMScript of a linear-attention head group (PATTERNS.md: out_i =
phi(q_i)^T S / (phi(q_i)^T z + eps), S and z summed over the keys i attends).

The tiles are the softmax kernels' (block_n is the chunk), so the same static block
classification decides the work. Three stages in one PrimFunc:

1. per (batch, head, group, key tile): phi(K) packed transposed (zero for invalid and padding
   keys), the tile's state phi(K)^T V [d, dv] and its normalizer sum phi(K) [d];
2. per (batch, head, group): prefix sums of the tile states (the carried state of a causal
   scan: state k+1 holds tiles 0..k);
3. per query tile: phi(Q); the states of its FULL key tiles, summed by one prefix read when
   they are the first n tiles (full attention: every tile; causal: the tiles below the
   diagonal; windows: the window's tiles), else tile by tile; applied to phi(Q) by a
   register-tiled micro-kernel; then on each PARTIAL tile (the causal diagonal, Swin's region
   mask) the quadratic form phi(Q) phi(K)^T with the residual mask, added to numerator and
   denominator.

The denominator phi(q)^T z is accumulated in float64 (O(N d) work): with a signed feature map
(identity) it is a sum with cancellation, and a row whose sum nearly cancels would otherwise
amplify the fp32 rounding of z beyond the textbook quadratic form's.
"""
from ...ir import symbols as S
from ...ir.program import FULL, PARTIAL
from .printer import TIRPrinter
from .microkernel import tile_loop, mask, pv, qk, skips_atoms, value_lanes
from .source import _chunk, close_kernel, key_tables, key_tile_tasks, open_kernel, query_row, task_item


def _phi_elem(name, x, fs="fs[0]"):
    """The feature map of one element `x` (text); focused scales by the row factor `fs`."""
    if name == "elu1":
        return f"T.Select({x} > T.float32(0), {x} + T.float32(1), fexp({x}))"
    if name == "relu":
        return f"T.max({x}, T.float32(0))"
    if name == "identity":
        return x
    if name == "focused":
        r = f"T.max({x}, T.float32(0))"
        return f"({r} * {r} * {r} * {fs})"
    raise ValueError(f"unknown feature map {name!r}")


def _phi_row(w, sh, fmap, src, dst, scale="T.float32(1)", via=None):
    """dst(j) = phi(src(j)) * scale for j < D, vectorized over j (through the local row
    `via` when dst is strided); focused first takes the row's norms:
    phi = ||relu(x)|| relu(x)^3 / ||relu(x)^3|| (0 when relu(x) is all zero)."""
    if fmap == "focused":
        w("fs[0] = T.float32(0)")
        w("fs[1] = T.float32(0)")
        w(f"for j in range({sh.D}):")
        with w.block():
            r = f"T.max({src('j')}, T.float32(0))"
            w(f"fs[0] = fs[0] + {r} * {r}")
            w(f"fs[1] = fs[1] + {r} * {r} * {r} * {r} * {r} * {r}")
        w("fs[0] = T.Select(fs[1] > T.float32(0), T.sqrt(fs[0]) / T.sqrt(T.max(fs[1], T.float32(1e-38))), "
          "T.float32(0))")
    if via is None:
        w(f"for j in T.vectorized({sh.D}):")
        with w.block():
            w(f"{dst('j')} = {_phi_elem(fmap, src('j'))} * {scale}")
        return
    # a strided destination: the row is mapped vectorized into `via`, then copied
    w(f"for j in T.vectorized({sh.D}):")
    with w.block():
        w(f"{via}[j] = {_phi_elem(fmap, src('j'))} * {scale}")
    w(f"for j in range({sh.D}):")
    with w.block():
        w(f"{dst('j')} = {via}[j]")


def _apply_state(w, sh, state, zstate):
    """acc += phi(Q) S (register tile MR x PW) and den += phi(Q) . z, for a state S [d, dv]
    and z [d] given as index templates."""
    MR, PW = sh.MR, 16 if sh.DVP % 16 == 0 else 8
    w(f"for jg in range({sh.DVP // PW}):")
    with w.block():
        w(f"for rg in range({sh.BMP // MR}):")
        with w.block():
            w(f"for dd in range({sh.D}):")
            with w.block():
                tile_loop(w, MR, PW, f"acc[rg * {MR} + ri, jg * {PW} + ci] = acc[rg * {MR} + ri, jg * {PW} + ci]"
                                      f" + qs[rg * {MR} + ri, dd] * {state.format(dd='dd', j=f'jg * {PW} + ci')}")
    w(f"for r in range({sh.BMP}):")
    with w.block():
        w("for i in T.vectorized(4):")
        with w.block():
            w("dl[i] = T.float64(0)")
        w(f"for d4 in range({sh.D // 4}):")
        with w.block():
            w("for i in T.vectorized(4):")
            with w.block():
                w(f"dl[i] = dl[i] + T.Cast(\"float64\", qs[r, d4 * 4 + i]) * {zstate.format(dd='d4 * 4 + i')}")
        if sh.D % 4:
            w(f"for dd in range({sh.D // 4 * 4}, {sh.D}):")
            with w.block():
                w(f"dl[0] = dl[0] + T.Cast(\"float64\", qs[r, dd]) * {zstate.format(dd='dd')}")
        w("den[r] = den[r] + ((dl[0] + dl[1]) + (dl[2] + dl[3]))")


def generate_linear(prog, grp, shape, tables):
    """TVMScript source defining `build()` -> PrimFunc for one linear-attention head group."""
    sh, gat, norm = shape, grp.gather, prog.norm
    fmap = norm.feature_map
    P = TIRPrinter({S.g: ("g", "int"), S.t: ("t", "int"), S.u: ("u", "int"), S.b: ("b", "int"),
                    S.h: ("h", "int"), S.i: ("qtok[r]", "int"), S.j: ("ktk[g, kb, c]", "int")},
                   {n: (s, k) for n, (s, k, _) in tables.items()})
    pair_ok = P(grp.residual, "bool") if grp.residual is not None else "T.bool(True)"
    w = open_kernel(sh, tables, "the IR (linear attention)")
    key_tables(w, sh, P, gat)
    st = f"({sh.B}, {sh.HG}, {sh.G}, {sh.NK}, {sh.D}, {sh.DVP})"
    pst = f"({sh.B}, {sh.HG}, {sh.G}, {sh.NK + 1}, {sh.D}, {sh.DVP})"
    partial = bool((grp.blocks.classes == PARTIAL).any())
    if partial:
        w(f"kpk = T.alloc_buffer(({sh.B}, {sh.HG}, {sh.G}, {sh.NK}, {sh.D}, {sh.BNP}), \"float32\")")
    w(f"st = T.alloc_buffer({st}, \"float32\")")
    w(f"zt = T.alloc_buffer(({sh.B}, {sh.HG}, {sh.G}, {sh.NK}, {sh.D}), \"float64\")")
    w(f"pst = T.alloc_buffer({pst}, \"float32\")")
    w(f"pzt = T.alloc_buffer(({sh.B}, {sh.HG}, {sh.G}, {sh.NK + 1}, {sh.D}), \"float64\")")
    # ---- 1. phi(K) and the state of every key tile
    key_tile_tasks(w, sh)
    with w.block():
        w("fs = T.alloc_buffer((2,), \"float32\", scope=\"local\")")
        w(f"krow = T.alloc_buffer(({sh.BNP}, {sh.D}), \"float32\", scope=\"local\")")
        w(f"sacc = T.alloc_buffer(({sh.D}, {sh.DVP}), \"float32\", scope=\"local\")")
        w(f"zacc = T.alloc_buffer(({sh.D},), \"float64\", scope=\"local\")")
        w(f"for dd in range({sh.D}):")
        with w.block():
            w("zacc[dd] = T.float64(0)")
            w(f"for j in T.vectorized({sh.DVP}):")
            with w.block():
                w("sacc[dd, j] = T.float32(0)")
        w(f"for c in range({sh.BNP}):")
        with w.block():
            _phi_row(w, sh, fmap, lambda j: f"k[b, h, ktk[g, kb, c], {j}]", lambda j: f"krow[c, {j}]",
                     "kokp[g, kb, c]")
            w(f"for dd in T.vectorized({sh.D}):")
            with w.block():
                w("zacc[dd] = zacc[dd] + T.Cast(\"float64\", krow[c, dd])")
            if partial:           # the quadratic form on PARTIAL tiles reads phi(K) transposed
                w(f"for dd in range({sh.D}):")
                with w.block():
                    w("kpk[b, hh, g, kb, dd, c] = krow[c, dd]")
        # the state phi(K)^T V, register tiles of 6 rows of d (12 accumulators) and one of
        # the remaining rows, x PW lanes of dv, keys inside
        PW = value_lanes(sh.DV)
        vrow = f"v[b, h, ktk[g, kb, c], jg * {PW} + ci]"
        w(f"for jg in range({sh.DV // PW}):")
        with w.block():
            for r0, MR, n in ((0, 6, sh.D // 6), (sh.D // 6 * 6, sh.D % 6, 1)):
                if not MR or not n:
                    continue
                w(f"for rg in range({n}):")
                with w.block():
                    w(f"for c in range({sh.BNP}):")
                    with w.block():
                        row = f"{r0} + rg * {MR} + ri"
                        cell = f"sacc[{row}, jg * {PW} + ci]"
                        tile_loop(w, MR, PW, f"{cell} = {cell} + krow[c, {row}] * {vrow}")
        w(f"for dd in range({sh.D}):")
        with w.block():
            w("zt[b, hh, g, kb, dd] = zacc[dd]")
            w(f"for j in T.vectorized({sh.DVP}):")
            with w.block():
                w("st[b, hh, g, kb, dd, j] = sacc[dd, j]")
    # ---- 2. prefix sums of the tile states per (batch, head, group)
    w(f"for task in T.parallel({sh.B * sh.HG * sh.G}):")
    with w.block():
        w(f"b = task // {sh.HG * sh.G}")
        w(f"hh = task // {sh.G} % {sh.HG}")
        w(f"g = task % {sh.G}")
        w(f"for dd in range({sh.D}):")
        with w.block():
            w("pzt[b, hh, g, 0, dd] = T.float64(0)")
            w(f"for j in T.vectorized({sh.DVP}):")
            with w.block():
                w("pst[b, hh, g, 0, dd, j] = T.float32(0)")
        w(f"for kb in range({sh.NK}):")
        with w.block():
            w(f"for dd in range({sh.D}):")
            with w.block():
                w("pzt[b, hh, g, kb + 1, dd] = pzt[b, hh, g, kb, dd] + zt[b, hh, g, kb, dd]")
                w(f"for j in T.vectorized({sh.DVP}):")
                with w.block():
                    w("pst[b, hh, g, kb + 1, dd, j] = pst[b, hh, g, kb, dd, j] + st[b, hh, g, kb, dd, j]")
    # ---- 3. query tiles
    items = sh.B * sh.HG * sh.G * sh.NQ
    chunk = _chunk(items)
    w(f"for task in T.parallel({items // chunk}):")
    with w.block():
        # (a buffer nothing reads breaks TVM's lowering: the quadratic form's only when used)
        for name, shp, dt in (("qs", (sh.BMP, sh.D), "float32"), ("qtok", (sh.BMP,), "int32"),
                              ("qok", (sh.BMP,), "int32"), ("acc", (sh.BMP, sh.DVP), "float32"),
                              ("den", (sh.BMP,), "float64"), ("ssum", (sh.D, sh.DVP), "float32"),
                              ("zsum", (sh.D,), "float64"), ("fs", (2,), "float32"), ("nf", (2,), "int32"),
                              ("dl", (4,), "float64"),
                              *((("s", (sh.BMP, sh.BNP), "float32"), ("lanes2", (8,), "float32")) if partial else ())):
            w(f"{name} = T.alloc_buffer({shp}, \"{dt}\", scope=\"local\")")
        w(f"for it in range({chunk}):")
        w.depth += 1
        task_item(w, sh, chunk)
        w(f"for r in range({sh.BMP}):")
        with w.block():
            query_row(w, sh, P, gat)
            _phi_row(w, sh, fmap, lambda j: f"q[b, h, qtok[r], {j}]", lambda j: f"qs[r, {j}]",
                     "T.Cast(\"float32\", qok[r])")
            w(f"for j in T.vectorized({sh.DVP}):")
            with w.block():
                w("acc[r, j] = T.float32(0)")
            w("den[r] = T.float64(0)")
        # the FULL key tiles: their states summed (one prefix read when they are tiles 0..n-1)
        w("nf[0] = 0")
        w("nf[1] = -1")
        w("for kk in range(tcnt[g, qi]):")
        with w.block():
            w(f"if tcls[g, qi, kk] == {FULL}:")
            with w.block():
                w("nf[0] = nf[0] + 1")
                w("nf[1] = T.max(nf[1], tlist[g, qi, kk])")
        w("if nf[0] > 0:")
        with w.block():
            w("if nf[1] + 1 == nf[0]:")            # tiles 0..n-1: apply the prefix state in place
            with w.block():
                _apply_state(w, sh, "pst[b, hh, g, nf[0], {dd}, {j}]", "pzt[b, hh, g, nf[0], {dd}]")
            w("else:")
            with w.block():
                w(f"for dd in range({sh.D}):")
                with w.block():
                    w("zsum[dd] = T.float64(0)")
                    w(f"for j in T.vectorized({sh.DVP}):")
                    with w.block():
                        w("ssum[dd, j] = T.float32(0)")
                w("for kk in range(tcnt[g, qi]):")
                with w.block():
                    w(f"if tcls[g, qi, kk] == {FULL}:")
                    with w.block():
                        w(f"for dd in range({sh.D}):")
                        with w.block():
                            w("zsum[dd] = zsum[dd] + zt[b, hh, g, tlist[g, qi, kk], dd]")
                            w(f"for j in T.vectorized({sh.DVP}):")
                            with w.block():
                                w("ssum[dd, j] = ssum[dd, j] + st[b, hh, g, tlist[g, qi, kk], dd, j]")
                _apply_state(w, sh, "ssum[{dd}, {j}]", "zsum[{dd}]")
        # the PARTIAL key tiles: the masked quadratic form
        if partial:
            w("for kk in range(tcnt[g, qi]):")
            with w.block():
                w("kb = tlist[g, qi, kk]")
                w("cls = tcls[g, qi, kk]")
                w(f"if cls == {PARTIAL}:")
                with w.block():
                    qk(w, sh, atoms=skips_atoms(sh, grp))
                    mask(w, sh, pair_ok)
                    w(f"for r in range({sh.BMP}):")
                    with w.block():
                        w("for i in T.vectorized(8):")
                        with w.block():
                            w("lanes2[i] = T.float32(0)")
                        w(f"for cc in range({sh.BNP // 8}):")
                        with w.block():
                            w("for i in T.vectorized(8):")
                            with w.block():
                                sc = "s[r, cc * 8 + i]"
                                w(f"{sc} = T.Select({sc} > T.float32(NEG_HALF), {sc}, T.float32(0))")
                                w(f"lanes2[i] = lanes2[i] + {sc}")
                        w("den[r] = den[r] + T.Cast(\"float64\", lanes_sum(lanes2, 8))")
                    pv(w, sh, atoms=skips_atoms(sh, grp))
        # ---- epilogue: write through the query map
        w(f"for r in range({sh.BM}):")
        with w.block():
            w("if qok[r] != 0:")
            with w.block():
                w(f"inv = T.Cast(\"float32\", T.float64(1) / (den[r] + T.float64({norm.eps!r})))")
                w(f"for j in T.vectorized({sh.DV}):")
                with w.block():
                    w("o[b, h, qtok[r], j] = acc[r, j] * inv")
        w.depth -= 1
    return close_kernel(w)
