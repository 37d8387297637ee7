"""Generate the TVMScript of a linear-attention head group (PATTERNS.md: out_i =
phi(q_i)^T S / (phi(q_i)^T z + eps), S and z summed over the keys i attends).

The tiles are the softmax kernels' (block_n is the chunk), so the same static block
classification decides the work. A query tile adds the states of its FULL key tiles,
phi(K)^T V [d, dv] and sum phi(K) [d], applied to phi(Q) by a register-tiled micro-kernel,
and on each PARTIAL tile (the causal diagonal, Swin's region mask) the quadratic form
phi(Q) phi(K)^T with the residual mask (register tiles in EMPTY atoms skipped), added to
numerator and denominator. Two schedules:

* scan (the FULL tiles of every query tile are tiles 0..n-1, n non-decreasing: full
  attention, causal): one task per (batch, head, group) walks its query tiles in order with
  a running state in local memory, folding key tiles into it as the next query tile needs
  them; phi(K) is packed once per key tile (a PARTIAL tile's packed phi(K) serves its
  quadratic form and then its state), and no state leaves the task;
* tiled (windows): 1. per key tile phi(K) packed transposed and its state; 2. prefix sums of
  the tile states per (batch, head, group); 3. per query tile the states of its FULL tiles,
  one prefix read when they are the first n tiles, else summed tile by tile.

The denominator phi(q)^T z is accumulated in float64 (O(N d) work): with a signed feature map
(identity) it is a sum with cancellation, and a row whose sum nearly cancels would otherwise
amplify the fp32 rounding of z beyond the textbook quadratic form's.
"""
from ...ir import symbols as S
from ...ir.program import EMPTY, FULL, PARTIAL
from ...passes.plan import linear_scans
from .printer import TIRPrinter
from .microkernel import gemm, live_atoms, reduce_over, value_lanes
from .items import _chunk, query_row, task_item
from .source import close_kernel, key_tables, key_tile_tasks, open_kernel


def _phi_elem(name, x, fs="fs[0]"):
    """The feature map of one element `x` (text); focused scales by the row factor `fs`."""
    if name == "elu1":
        return f"T.Select({x} > T.float32(0), {x} + T.float32(1), fexp({x}))"
    # T.max(a, b) is a > b ? a : b: the constant comes first, so that a NaN x stays NaN
    if name == "relu":
        return f"T.max(T.float32(0), {x})"
    if name == "identity":
        return x
    if name == "focused":
        r = f"T.max(T.float32(0), {x})"
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
            r = f"T.max(T.float32(0), {src('j')})"
            w(f"fs[0] = fs[0] + {r} * {r}")
            w(f"fs[1] = fs[1] + {r} * {r} * {r} * {r} * {r} * {r}")
        w("fs[0] = T.Select(fs[1] == T.float32(0), T.float32(0), "
          "T.sqrt(fs[0]) / T.sqrt(T.max(T.float32(1e-38), fs[1])))")
    row = (lambda j: f"{via}[{j}]") if via else dst
    w(f"for j in T.vectorized({sh.D}):")
    with w.block():
        w(f"{row('j')} = {_phi_elem(fmap, src('j'))} * {scale}")
    if via:         # a strided destination: the row is mapped vectorized into `via`, then copied
        w(f"for j in range({sh.D}):")
        with w.block():
            w(f"{dst('j')} = {via}[j]")


def _lanes(n):
    return 16 if n % 16 == 0 else 8


def _apply_state(w, sh, state, zstate):
    """acc += phi(Q) S and den += phi(Q) . z (float64), for a state S [d, dv] and z [d] given
    as functions of (row, column) and (row)."""
    gemm(w, sh.BMP, sh.DVP, _lanes(sh.DVP), lambda r, j: f"acc[{r}, {j}]", lambda r, x: f"qs[{r}, {x}]",
          state, reduce_over(sh.D))
    w(f"for r in range({sh.BMP}):")
    with w.block():
        w("for i in T.vectorized(4):")
        with w.block():
            w("dl[i] = T.float64(0)")
        w(f"for d4 in range({sh.D // 4}):")
        with w.block():
            w("for i in T.vectorized(4):")
            with w.block():
                w(f"dl[i] = dl[i] + T.Cast(\"float64\", qs[r, d4 * 4 + i]) * {zstate('d4 * 4 + i')}")
        if sh.D % 4:
            w(f"for dd in range({sh.D // 4 * 4}, {sh.D}):")
            with w.block():
                w(f"dl[0] = dl[0] + T.Cast(\"float64\", qs[r, dd]) * {zstate('dd')}")
        w("den[r] = den[r] + ((dl[0] + dl[1]) + (dl[2] + dl[3]))")


def _query_tile(w, sh, P, gat, fmap):
    """phi(Q) of the query tile into qs (0 on invalid rows); acc and den cleared."""
    w(f"for r in range({sh.BMP}):")
    with w.block():
        query_row(w, sh, P, gat)
        _phi_row(w, sh, fmap, lambda j: f"q[b, h, qtok[r], {j}]", lambda j: f"qs[r, {j}]",
                 "T.Cast(\"float32\", qok[r])")
        w(f"for j in T.vectorized({sh.DVP}):")
        with w.block():
            w("acc[r, j] = T.float32(0)")
        w("den[r] = T.float64(0)")


def _denominator_of_tile(w, sh):
    """den += the row sums of the masked quadratic form in s (masked pairs become 0)."""
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
                w(f"{sc} = live({sc}, {sc})")
                w(f"lanes2[i] = lanes2[i] + {sc}")
        w("den[r] = den[r] + T.Cast(\"float64\", lanes_sum(lanes2, 8))")


def _epilogue(w, sh, norm):
    """out = acc / (den + eps), written through the query map."""
    w(f"for r in range({sh.BM}):")
    with w.block():
        w("if qok[r] != 0:")
        with w.block():
            w(f"inv = T.Cast(\"float32\", T.float64(1) / (den[r] + T.float64({norm.eps!r})))")
            w(f"for j in T.vectorized({sh.DV}):")
            with w.block():
                w("o[b, h, qtok[r], j] = acc[r, j] * inv")


def _skips_atoms(sh, grp, tiles):
    """Whether the quadratic form skips register tiles and key atoms that are EMPTY for the
    rows: tiles of several atoms, register tiles of at most 6 rows inside two row atoms and
    of lanes inside one key atom, in a group with EMPTY atoms beside PARTIAL tiles."""
    return (sh.AQ >= 6 and sh.AK % _lanes(sh.BNP) == 0 and (sh.BM > sh.AQ or sh.BN > sh.AK)
            and bool((grp.blocks.classes == EMPTY).any()) and bool((tiles == PARTIAL).any()))


def _mask_and_sum(w, sh, pair):
    """The residual mask on the PARTIAL key tile kb, atom by atom, masked pairs set to 0 (FULL
    atoms stay, EMPTY atoms and padding keys become 0, PARTIAL atoms evaluate pair(c), vectorized
    over the atom's keys); then den += the row sums."""
    w(f"for r in range({sh.BMP}):")
    with w.block():
        w(f"t = qi * {sh.BM} + r")
        if sh.BM == sh.AQ and sh.BN == sh.AK:        # the tile is one atom
            w(f"for c in T.vectorized({sh.BN}):")
            with w.block():
                w(f"s[r, c] = T.Select({pair('c')}, s[r, c], T.float32(0))")
        else:
            w(f"for ca in range({sh.BN // sh.AK}):")
            with w.block():
                w(f"acl = acls[g, T.min(T.floordiv(t, {sh.AQ}), {sh.NQA - 1}), "
                  f"T.min(T.floordiv(kb * {sh.BN}, {sh.AK}) + ca, {sh.NKA - 1})]")
                w(f"if acl == {EMPTY}:")
                with w.block():
                    w(f"for cj in T.vectorized({sh.AK}):")
                    with w.block():
                        w(f"s[r, ca * {sh.AK} + cj] = T.float32(0)")
                w(f"elif acl == {PARTIAL}:")
                with w.block():
                    w(f"for cj in T.vectorized({sh.AK}):")
                    with w.block():
                        c = f"ca * {sh.AK} + cj"
                        w(f"s[r, {c}] = T.Select({pair(c)}, s[r, {c}], T.float32(0))")
        w(f"for c in range(T.max(T.min({sh.BN}, {sh.LK} - kb * {sh.BN}), 0), {sh.BNP}):")
        with w.block():
            w("s[r, c] = T.float32(0)")
        w("for i in T.vectorized(8):")
        with w.block():
            w("lanes2[i] = s[r, i]")
        w(f"for cc in range(1, {sh.BNP // 8}):")
        with w.block():
            w("for i in T.vectorized(8):")
            with w.block():
                w("lanes2[i] = lanes2[i] + s[r, cc * 8 + i]")
        w("den[r] = den[r] + T.Cast(\"float64\", lanes_sum(lanes2, 8))")


def _quadratic(w, sh, pair, kt, atoms):
    """On the PARTIAL key tile kb: s = phi(Q) phi(K)^T (kt(x, c): phi(K) transposed), the
    residual mask, den += the row sums, acc += s V (V rows read in place through the key map)."""
    guard = (lambda r0, mr, c0: live_atoms(sh, r0, mr, c0)) if atoms else None
    gemm(w, sh.BMP, sh.BNP, _lanes(sh.BNP), lambda r, c: f"s[{r}, {c}]", lambda r, x: f"qs[{r}, {x}]", kt,
          reduce_over(sh.D), init=True, guard=guard)
    _mask_and_sum(w, sh, pair)
    end = f"T.max(T.min({sh.BN}, {sh.LK} - kb * {sh.BN}), 0)"       # the tile's keys inside the extent

    def red(w, r0, mr):
        if not atoms:
            w(f"for x in range({end}):")
            return 1
        w(f"for ca in range({sh.BN // sh.AK}):")
        w(f"    if {live_atoms(sh, r0, mr, f'ca * {sh.AK}')}:")
        w(f"        for x in range(ca * {sh.AK}, T.min(ca * {sh.AK} + {sh.AK}, {end})):")
        return 3
    gemm(w, sh.BMP, sh.DV, value_lanes(sh.DV), lambda r, j: f"acc[{r}, {j}]", lambda r, x: f"s[{r}, {x}]",
          lambda x, j: f"v[b, h, ktk[g, kb, {x}], {j}]", red)


def _alloc(w, bufs):
    for name, shp, dt in bufs:
        w(f"{name} = T.alloc_buffer({shp}, \"{dt}\", scope=\"local\")")


def _query_buffers(sh, fmap, partial):
    """The local buffers of a query tile (a buffer nothing reads breaks TVM's lowering: the
    quadratic form's only when used)."""
    return (("qs", (sh.BMP, sh.D), "float32"), ("qtok", (sh.BMP,), "int32"), ("qok", (sh.BMP,), "int32"),
            ("acc", (sh.BMP, sh.DVP), "float32"), ("den", (sh.BMP,), "float64"), ("nf", (3,), "int32"),
            ("dl", (4,), "float64"), *((("fs", (2,), "float32"),) if fmap == "focused" else ()),
            *((("s", (sh.BMP, sh.BNP), "float32"), ("lanes2", (8,), "float32")) if partial else ()))


def _count_full(w):
    """nf[0]: the number of FULL key tiles of query tile qi."""
    w("nf[0] = 0")
    w("for kk in range(tcnt[g, qi]):")
    with w.block():
        w(f"if tcls[g, qi, kk] == {FULL}:")
        with w.block():
            w("nf[0] = nf[0] + 1")


def _pack(w, sh, fmap, rows, first="0", kt=False):
    """phi(K) of keys first..first+rows-1 of key tile kb, zero on invalid keys, into the task's
    kt [d, bn] (transposed, at their columns: the quadratic form reads it) or krow [rows, d];
    kz [d] += their sum in float64."""
    w(f"for c in range({rows}):")
    with w.block():
        src = lambda j: f"k[b, h, ktk[g, kb, {first} + c], {j}]"      # noqa: E731
        if kt:
            _phi_row(w, sh, fmap, src, lambda j: f"kt[{j}, c]", "kokp[g, kb, c]", via="krw")
        else:
            _phi_row(w, sh, fmap, src, lambda j: f"krow[c, {j}]", f"kokp[g, kb, {first} + c]")
        w(f"for dd in T.vectorized({sh.D}):")
        with w.block():
            w(f"kz[dd] = kz[dd] + T.Cast(\"float64\", {'krw[dd]' if kt else 'krow[c, dd]'})")


SUB = 64            # keys per step of the scan's state update when no quadratic form keeps a tile packed


def _fold(w, sh, fmap, partial):
    """sst += phi(K)^T V and zs += sum phi(K) over key tile kb: packed in kt when PARTIAL
    tiles are (nf[1] is the packed tile: the diagonal's tile is packed once), else in steps of
    SUB keys through krow (in L1 whatever the tile)."""
    v = lambda x, j: f"v[b, h, ktk[g, kb, {x}], {j}]"      # noqa: E731
    if partial:
        w("if nf[1] != kb:")
        with w.block():
            _pack_tile(w, sh, fmap)
        gemm(w, sh.D, sh.DV, value_lanes(sh.DV), lambda r, j: f"sst[{r}, {j}]", lambda r, x: f"kt[{r}, {x}]",
              v, reduce_over(sh.BNP))
    else:
        step = SUB if sh.BNP % SUB == 0 else sh.BNP
        w(f"for dd in range({sh.D}):")
        with w.block():
            w("kz[dd] = T.float64(0)")
        w(f"for sb in range({sh.BNP // step}):")
        with w.block():
            _pack(w, sh, fmap, step, f"sb * {step}")
            gemm(w, sh.D, sh.DV, value_lanes(sh.DV), lambda r, j: f"sst[{r}, {j}]",
                  lambda r, x: f"krow[{x}, {r}]", lambda x, j: v(f"sb * {step} + {x}", j), reduce_over(step))
    w(f"for dd in T.vectorized({sh.D}):")
    with w.block():
        w("zs[dd] = zs[dd] + kz[dd]")


def _pack_tile(w, sh, fmap):
    w(f"for dd in range({sh.D}):")
    with w.block():
        w("kz[dd] = T.float64(0)")
    _pack(w, sh, fmap, sh.BNP, kt=True)
    w("nf[1] = kb")


def _scan(w, sh, P, gat, fmap, norm, pair, partial, atoms):
    """One task per (batch, head, group): query tiles in order, a running state sst [d, dv] and
    zs [d] holding key tiles 0..nf[2]-1; nf[1] is the key tile packed in kt. The tile lists are
    ascending (tiles.tile_table), so a query tile's FULL tiles 0..n-1 are its first n entries
    and the rest are PARTIAL."""
    w(f"for task in T.parallel({sh.B * sh.HG * sh.G}):")
    with w.block():
        w(f"b = task // {sh.HG * sh.G}")
        w(f"hh = task // {sh.G} % {sh.HG}")
        w(f"g = task % {sh.G}")
        w("h = heads[hh]")
        keys = (("kt", (sh.D, sh.BNP), "float32"), ("krw", (sh.D,), "float32")) if partial else \
            (("krow", (SUB if sh.BNP % SUB == 0 else sh.BNP, sh.D), "float32"),)
        _alloc(w, (*_query_buffers(sh, fmap, partial), *keys, ("sst", (sh.D, sh.DVP), "float32"),
                   ("zs", (sh.D,), "float64"), ("kz", (sh.D,), "float64")))
        w(f"for dd in range({sh.D}):")
        with w.block():
            w("zs[dd] = T.float64(0)")
            w(f"for j in T.vectorized({sh.DVP}):")
            with w.block():
                w("sst[dd, j] = T.float32(0)")
        w("nf[1] = -1")
        w("nf[2] = 0")
        w(f"for qi in range({sh.NQ}):")
        with w.block():
            _query_tile(w, sh, P, gat, fmap)
            # nf[0]: the FULL tiles (n does not decrease along the query tiles)
            w("nf[0] = nf[2]")
            w(f"while T.And(nf[0] < tcnt[g, qi], tcls[g, qi, T.min(nf[0], {sh.KMAX - 1})] == {FULL}):")
            with w.block():
                w("nf[0] = nf[0] + 1")
            # fold the key tiles this query tile adds to the running state
            w("for kb in range(nf[2], nf[0]):")
            with w.block():
                _fold(w, sh, fmap, partial)
            w("nf[2] = nf[0]")
            w("if nf[0] > 0:")
            with w.block():
                _apply_state(w, sh, lambda x, j: f"sst[{x}, {j}]", lambda x: f"zs[{x}]")
            if partial:
                w("for kk in range(nf[0], tcnt[g, qi]):")
                with w.block():
                    w("kb = tlist[g, qi, kk]")
                    w("if nf[1] != kb:")
                    with w.block():
                        _pack_tile(w, sh, fmap)
                    _quadratic(w, sh, pair, lambda x, c: f"kt[{x}, {c}]", atoms)
            _epilogue(w, sh, norm)


def _tiled(w, sh, P, gat, fmap, norm, pair, partial, atoms):
    """Key-tile states, their prefix sums, then the query tiles (any FULL tile set)."""
    shp = f"{sh.B}, {sh.HG}, {sh.G}"
    if partial:
        w(f"kpk = T.alloc_buffer(({shp}, {sh.NK}, {sh.D}, {sh.BNP}), \"float32\")")
    w(f"st = T.alloc_buffer(({shp}, {sh.NK}, {sh.D}, {sh.DVP}), \"float32\")")
    w(f"zt = T.alloc_buffer(({shp}, {sh.NK}, {sh.D}), \"float64\")")
    w(f"pst = T.alloc_buffer(({shp}, {sh.NK + 1}, {sh.D}, {sh.DVP}), \"float32\")")
    w(f"pzt = T.alloc_buffer(({shp}, {sh.NK + 1}, {sh.D}), \"float64\")")
    # ---- 1. phi(K) and the state of every key tile
    key_tile_tasks(w, sh)
    with w.block():
        _alloc(w, (*((("fs", (2,), "float32"),) if fmap == "focused" else ()), ("krow", (sh.BNP, sh.D), "float32"),
                   ("sacc", (sh.D, sh.DVP), "float32"), ("zacc", (sh.D,), "float64")))
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
        gemm(w, sh.D, sh.DV, value_lanes(sh.DV), lambda r, j: f"sacc[{r}, {j}]", lambda r, x: f"krow[{x}, {r}]",
              lambda x, j: f"v[b, h, ktk[g, kb, {x}], {j}]", reduce_over(sh.BNP))
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
        _alloc(w, (*_query_buffers(sh, fmap, partial), ("ssum", (sh.D, sh.DVP), "float32"),
                   ("zsum", (sh.D,), "float64")))
        w(f"for it in range({chunk}):")
        w.depth += 1
        task_item(w, sh, chunk)
        _query_tile(w, sh, P, gat, fmap)
        # the FULL key tiles: their states summed (one prefix read when they are tiles 0..n-1)
        _count_full(w)
        w("nf[1] = -1")
        w("for kk in range(tcnt[g, qi]):")
        with w.block():
            w(f"if tcls[g, qi, kk] == {FULL}:")
            with w.block():
                w("nf[1] = T.max(nf[1], tlist[g, qi, kk])")
        w("if nf[0] > 0:")
        with w.block():
            w("if nf[1] + 1 == nf[0]:")            # tiles 0..n-1: apply the prefix state in place
            with w.block():
                _apply_state(w, sh, lambda x, j: f"pst[b, hh, g, nf[0], {x}, {j}]",
                             lambda x: f"pzt[b, hh, g, nf[0], {x}]")
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
                _apply_state(w, sh, lambda x, j: f"ssum[{x}, {j}]", lambda x: f"zsum[{x}]")
        # the PARTIAL key tiles: the masked quadratic form
        if partial:
            w("for kk in range(tcnt[g, qi]):")
            with w.block():
                w("kb = tlist[g, qi, kk]")
                w("cls = tcls[g, qi, kk]")
                w(f"if cls == {PARTIAL}:")
                with w.block():
                    _quadratic(w, sh, pair, lambda x, c: f"kpk[b, hh, g, kb, {x}, {c}]", atoms)
        _epilogue(w, sh, norm)
        w.depth -= 1


def generate_linear(prog, grp, shape, tables):
    """TVMScript source defining `build()` -> PrimFunc for one linear-attention head group."""
    sh, gat, norm = shape, grp.gather, prog.norm
    P = TIRPrinter({S.g: ("g", "int"), S.t: ("t", "int"), S.u: ("u", "int"), S.b: ("b", "int"),
                    S.h: ("h", "int"), S.i: ("qtok[r]", "int"), S.j: ("ktk[g, kb, c]", "int")},
                   {n: (s, k) for n, (s, k, _) in tables.items()})

    def pair(c):
        """Whether the pair (row r, key column c of tile kb) is attended (text without lets:
        it is evaluated in vectorized loops)."""
        Pc = TIRPrinter({**P.names, S.u: (f"(kb * {sh.BN} + {c})", "int"), S.j: (f"ktk[g, kb, {c}]", "int")},
                        P.tables)
        ok = Pc(grp.residual, "bool") if grp.residual is not None else "T.bool(True)"
        return f"T.And(kokp[g, kb, {c}] > T.float32(0), {ok})"
    tiles = grp.blocks.coarsen(sh.BM, sh.BN)
    partial = bool((tiles == PARTIAL).any())
    atoms = _skips_atoms(sh, grp, tiles)
    w = open_kernel(sh, tables, "the IR (linear attention)")
    key_tables(w, sh, P, gat)
    schedule = _scan if linear_scans(tiles, sh.B * sh.HG * sh.G) else _tiled
    schedule(w, sh, P, gat, norm.feature_map, norm, pair, partial, atoms)
    return close_kernel(w)
