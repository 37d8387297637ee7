"""The register-tiled pieces of the generated CPU kernels, shared by the softmax and linear
kernels: K's key tile packed transposed, QK^T into the score tile, the atom-wise mask of a
PARTIAL tile, acc += s V with V rows read in place through the key map, and the EMPTY-atom
skipping of partial tiles; `gemm`, the register-tiled product of the linear-attention
kernels."""
from ...ir.program import EMPTY, PARTIAL


def value_lanes(dv):
    """Lanes of the PV register tile: the widest of 16, 8, 4, 2, 1 dividing dv, so V is read
    in place through the key map (no packed copy; acc's padding columns stay 0)."""
    return next(p for p in (16, 8, 4, 2, 1) if dv % p == 0)


def mask(w, sh, pair_ok, skip=(), kslot="g, kb"):
    """Masked scores of the current key tile in s become NEG: pairs of PARTIAL tiles by the
    residual, and every tile's padding keys (past the extent, or past block_n). `kslot`: the
    indices of the key tile in the per-tile tables (ktk, kokp, kpk)."""
    w(f"for r in range({0 if 'mask' in skip else sh.BMP}):")
    with w.block():
        w(f"if cls == {PARTIAL}:")
        with w.block():
            _mask_partial_row(w, sh, pair_ok, kslot)
        # padding keys, SL lanes at a time from the vector holding the first (a scalar loop over
        # the 15 padding columns of a 49-key window: 1-2% slower on Swin's windows, ViT, N=50)
        end = f"T.max(T.min({sh.BN}, {sh.LK} - kb * {sh.BN}), 0)"
        w(f"for cc in range({end} // {sh.SL}, {sh.BNP // sh.SL}):")
        with w.block():
            w(f"for i in T.vectorized({sh.SL}):")
            with w.block():
                w(f"s[r, cc * {sh.SL} + i] = T.Select(cc * {sh.SL} + i < {end}, s[r, cc * {sh.SL} + i], "
                  "T.float32(NEG))")


def pv(w, sh, skip=(), atoms=False, kslot="g, kb", acc="acc", src="v", width=None):
    """acc += s V over the current key tile, register tile MR x PW. atoms: on PARTIAL tiles,
    key atoms that are EMPTY for the row group are skipped (their weights are 0). `src` and
    `width`: another [B, H, M, width] tensor read through the key map (K, for dQ += dS K)."""
    width = width or sh.DV
    MR, PW = sh.MR, value_lanes(width)
    end = f"T.max(T.min({sh.BN}, {sh.LK} - kb * {sh.BN}), 0)"      # the tile's keys inside the extent
    vrow = f"{src}[b, h, ktk[{kslot}, c], jg * {PW} + ci]"

    def micro():
        tile_loop(w, MR, PW, f"{acc}[rg * {MR} + ri, jg * {PW} + ci] = {acc}[rg * {MR} + ri, jg * {PW} + ci] + "
                              f"s[rg * {MR} + ri, c] * {vrow}")
    # value-column blocks outer: a [bn, PW] slice of V stays in L1 across the row groups
    w(f"for jg in range({0 if 'pv' in skip else width // PW}):")
    with w.block():
        w(f"for rg in range({sh.BMP // MR}):")
        with w.block():
            if atoms:
                w(f"if cls == {PARTIAL}:")
                with w.block():
                    w(f"for ca in range({sh.BN // sh.AK}):")
                    with w.block():
                        w(f"if {_atom_class(sh, f'rg * {MR}', f'ca * {sh.AK}')} != {EMPTY}:")
                        with w.block():
                            w(f"for c in range(ca * {sh.AK}, T.min(ca * {sh.AK} + {sh.AK}, {end})):")
                            with w.block():
                                micro()
                w("else:")
                w.depth += 1
            w(f"for c in range({end}):")
            with w.block():
                micro()
            if atoms:
                w.depth -= 1


def skips_atoms(sh, grp):
    """Whether QK^T and PV skip the EMPTY atoms of PARTIAL tiles: tiles of several atoms
    whose register tiles lie inside one atom, in a group with EMPTY atoms beside others
    (the causal diagonal, a band's edges)."""
    cls = grp.blocks.classes
    return (sh.AK % sh.VW == 0 and sh.AQ % sh.MR == 0 and (sh.BM > sh.AQ or sh.BN > sh.AK)
            and bool((cls == EMPTY).any()) and bool((cls == PARTIAL).any()))


def _atom_class(sh, row, col):
    """The class of the atom holding tile row `row` and tile column `col` (text)."""
    return (f"acls[{sh.tg}, T.min(T.floordiv(qi * {sh.BM} + {row}, {sh.AQ}), {sh.NQA - 1}), "
            f"T.min(T.floordiv(kb * {sh.BN} + {col}, {sh.AK}), {sh.NKA - 1})]")


def pack_tile(w, sh, dst, ks, src="k", width=None):
    """K's key tile `ks` (through the key map) transposed into `dst` (indexed by (dd, column))
    (`src`, `width`: another [B, H, M, width] tensor, V for the backward's dP = dO V^T):
    in L x L blocks of shuffled vectors where L = 16 or 8 divides the head dim and the padded
    tile, else a row of the tile at a time, its columns gathered as vectors. Padding and invalid keys
    read token 0 unscaled: their scores are masked (NEG) before any use, and their weights
    never reach PV. Measured on Zen4 against the column-at-a-time scalar copy zeroing them:
    Swin-T window kernels 7% (stage 1) and 15% (stage 3) faster."""
    width = width or sh.D
    L = next((n for n in (16, 8) if width % n == 0 and sh.BNP % n == 0), None)
    if L is not None:
        # L x L blocks: L key rows loaded as vectors, transposed by one shuffle each output
        # row (LLVM lowers it to a permute network) instead of a gathered lane at a time. Zen 4,
        # in-process A/B against the gather: axial columns 64x64 1.37x, Swin windows 1.03x,
        # N=197 1.02x, N=4096 full and causal 0.99x (noise); built for znver3 (AVX2) and run
        # here, Swin windows 0.99-1.01x
        rows = ", ".join(f"{src}[b, h, ktk[{ks}, cb * {L} + {i}], T.Ramp(jb * {L}, 1, {L})]" for i in range(L))
        w(f"for cb in range({sh.BNP // L}):")
        with w.block():
            w(f"for jb in range({width // L}):")
            with w.block():
                for j in range(L):
                    lanes = ", ".join(str(i * L + j) for i in range(L))
                    w(f"{dst}jb * {L} + {j}, T.Ramp(cb * {L}, 1, {L})] = T.Shuffle([{rows}], [{lanes}])")
        return
    w(f"for j in range({width}):")
    with w.block():
        w(f"for c in T.vectorized({sh.BNP}):")
        with w.block():
            w(f"{dst}j, c] = {src}[b, h, ktk[{ks}, c], j]")


def qk(w, sh, skip=(), epilogue=None, atoms=False, kslot="g, kb", ktile=None, a="qs", depth=None, out="s"):
    """S = Q K^T into s, register tile MR x VW; `epilogue` (a statement on the tile's cells)
    runs on the registers before they are stored. atoms: on PARTIAL tiles, register tiles in
    EMPTY atoms are not computed (the mask fills them). ktile: the packed [d, BNP] key tile's
    buffer, indexed by (dd, column) (default: the tile's slot of the per-call pack kpk).
    `a`, `depth`, `out`: another product of the same form (the backward's dP = dO V^T)."""
    ktile = ktile or f"kpk[b, hh, {kslot}, "
    depth = depth or sh.D
    MR, VW = sh.MR, sh.VW
    # key-column blocks outer: a [d, VW] block of K stays in L1 across the row groups
    w(f"for cg in range({0 if 'qk' in skip else sh.BNP // VW}):")
    with w.block():
        w(f"for rg in range({sh.BMP // MR}):")
        with w.block():
            if atoms:
                w(f"if cls != {PARTIAL} or {_atom_class(sh, f'rg * {MR}', f'cg * {VW}')} != {EMPTY}:")
                w.depth += 1
            cell = f"{out}[rg * {MR} + ri, cg * {VW} + ci]"
            tile_loop(w, MR, VW, f"{cell} = T.float32(0)")
            w(f"for dd in range({depth}):")
            with w.block():
                tile_loop(w, MR, VW, f"{cell} = {cell} + {a}[rg * {MR} + ri, dd] * {ktile}dd, cg * {VW} + ci]")
            if epilogue:
                tile_loop(w, MR, VW, epilogue)
            if atoms:
                w.depth -= 1


def _mask_partial_row(w, sh, pair_ok, kslot):
    """Row r of a PARTIAL tile. A tile made of several atoms looks each atom's class up once
    per row: FULL atoms stay, EMPTY atoms are masked whole, and only PARTIAL atoms evaluate
    the residual mask per pair (simplify_masks' contract: it is exact there)."""
    def pairs():
        w(f"u = kb * {sh.BN} + c")
        w(f"s[r, c] = T.Select(T.And(kokp[{kslot}, c] > T.float32(0), {pair_ok}), s[r, c], T.float32(NEG))")
    w(f"t = qi * {sh.BM} + r")
    if sh.BM == sh.AQ and sh.BN == sh.AK:        # the tile is one atom
        w(f"for c in range({sh.BN}):")
        with w.block():
            pairs()
        return
    w(f"for ca in range({sh.BN // sh.AK}):")
    with w.block():
        w(f"acl = acls[{sh.tg}, T.min(T.floordiv(t, {sh.AQ}), {sh.NQA - 1}), "
          f"T.min(T.floordiv(kb * {sh.BN}, {sh.AK}) + ca, {sh.NKA - 1})]")
        w(f"if acl == {EMPTY}:")
        with w.block():
            w(f"for cj in range({sh.AK}):")
            with w.block():
                w(f"s[r, ca * {sh.AK} + cj] = T.float32(NEG)")
        w(f"elif acl == {PARTIAL}:")
        with w.block():
            w(f"for cj in range({sh.AK}):")
            with w.block():
                w(f"c = ca * {sh.AK} + cj")
                pairs()


def tile_loop(w, rows, lanes, body):
    w(f"for ri in T.unroll({rows}):")
    with w.block():
        w(f"for ci in T.vectorized({lanes}):")
        with w.block():
            w(body)


def row_groups(rows):
    """Register tiles along the rows: (first row, rows per tile, tiles): 6 rows (12
    accumulators of 8 lanes), the rest in one tile."""
    return [(r0, mr, n) for r0, mr, n in ((0, 6, rows // 6), (rows // 6 * 6, rows % 6, 1)) if mr and n]


def reduce_over(n):
    """A reduction over x in [0, n) for gemm."""
    def red(w, r0, mr):
        w(f"for x in range({n}):")
        return 1
    return red


def gemm(w, rows, cols, PW, cell, a, b, red, init=False, guard=None):
    """cell(r, j) (+)= sum over x of a(r, x) * b(x, j) for r < rows, j < cols: register tiles of
    up to 6 rows x PW lanes, column blocks outer (a [x, PW] slice of b stays in L1 across the
    row groups). red(w, r0, mr) writes the loops over x (returns how many it opened);
    guard(r0, mr, j0): the register tile is computed only where it holds (text)."""
    w(f"for jg in range({cols // PW}):")
    with w.block():
        for first, MR, n in row_groups(rows):
            w(f"for rg in range({n}):")
            with w.block():
                r0 = f"{first} + rg * {MR}"
                row, col = f"{r0} + ri", f"jg * {PW} + ci"
                depth = w.depth
                if guard is not None:
                    w(f"if {guard(r0, MR, f'jg * {PW}')}:")
                    w.depth += 1
                if init:
                    tile_loop(w, MR, PW, f"{cell(row, col)} = T.float32(0)")
                w.depth += red(w, r0, MR)
                tile_loop(w, MR, PW, f"{cell(row, col)} = {cell(row, col)} + {a(row, 'x')} * {b('x', col)}")
                w.depth = depth


def live_atoms(sh, r0, mr, c0):
    """Whether the register tile of rows r0..r0+mr-1 at key column c0 touches an atom that is
    not EMPTY (text; its rows lie in at most two atoms, its lanes in one)."""
    return f"T.Or({_atom_class(sh, r0, c0)} != {EMPTY}, {_atom_class(sh, f'{r0} + {mr - 1}', c0)} != {EMPTY})"
