"""Generate the Triton kernels of a linear-attention head group (PATTERNS.md: out_i =
phi(q_i)^T S / (phi(q_i)^T z + eps), S and z summed over the keys i attends).

The tiles are the softmax kernels' (block_n is the chunk), so the same static block
classification decides the work. Three generated kernels, launched in order:

1. states: one program per (batch, head, gather group, key tile, block of 64 columns of dv):
   phi(K) of the tile (zero for invalid and padding keys), its state phi(K)^T V [d, dv] and
   normalizer sum phi(K) [d];
2. prefix: one program per (batch, head, gather group, slab of 16 rows of d): the prefix sums
   of the tile states (the carried state of a causal scan: entry k holds tiles 0..k-1);
3. apply: one program per (batch, head, gather group, query tile, block of 64 columns of dv):
   phi(Q); the states of its
   FULL key tiles, one prefix read when they are tiles 0..n-1 (full attention: every tile;
   causal: the tiles below the diagonal; windows: the window's tiles), else summed tile by
   tile; applied to phi(Q) by one dot; then on each PARTIAL tile (the causal diagonal, Swin's
   region mask) the quadratic form phi(Q) phi(K)^T with the residual mask.

Everything is computed in fp32 whatever the input dtype (states are sums over many keys);
the dots run on the tensor cores in tf32, three products per product for fp32 inputs (fp32
accuracy; `precision`). The normalizer sums
and the denominator phi(q)^T z are float64 (O(N d) work): with a signed feature map
(identity) the denominator is a sum with cancellation, and a row whose sum nearly cancels
would otherwise amplify the fp32 rounding of z beyond the textbook quadratic form's.
"""
import numpy as np
import sympy

from ...ir import symbols as S
from ...ir.program import FULL, PARTIAL
from ..hoist import Hoister
from ..tiles import tile_tables
from ..writer import SourceWriter
from .printer import TritonPrinter
from .source import KERNEL, _load_mask, decode_pid, hoisted, key_rows, module, pair_mask, query_tile



def precision(prog):
    """The dots' input precision: fp32 inputs get three tf32 products (fp32 accuracy); fp16 and
    bf16 inputs one (tf32 keeps 10 mantissa bits: as many as fp16, more than bf16)."""
    return ', input_precision="tf32x3"' if prog.dtype in ("float32", "float64") else ', input_precision="tf32"'
ROWS = 16           # rows of d per prefix program
VALUE_BLOCK = 64    # columns of dv per states and apply program


def linear_tables(grp):
    """(counts [G, NQ, 3]: all tiles, FULL tiles, 1 when the FULL tiles are tiles 0..n-1;
    list with the FULL tiles first, each part in key order; class)."""
    cnt, lst, cls = tile_tables(grp)
    live = np.arange(lst.shape[-1]) < cnt[..., None]
    full = (cls == FULL) & live
    order = np.argsort(~full, axis=-1, kind="stable")
    lst = np.take_along_axis(lst, order, -1)
    cls = np.take_along_axis(cls, order, -1)
    nfull = full.sum(-1, dtype=np.int32)
    # the FULL tiles are tiles 0..n-1 when the n first of the sorted list are exactly those
    prefix = np.all((lst == np.arange(lst.shape[-1])) | (np.arange(lst.shape[-1]) >= nfull[..., None]), -1)
    return np.stack((cnt, nfull, prefix.astype(np.int32)), -1).astype(np.int32), lst, cls


def phi(w, fmap, x, axis, valid):
    """Statements replacing the fp32 tile `x` by phi(x) along `axis` (the head dim), zeroed
    where `valid` (a mask broadcasting to the tile) is false."""
    if fmap == "elu1":
        w(f"{x} = tl.where({x} > 0.0, {x} + 1.0, tl.exp({x}))")
    elif fmap == "relu":
        w(f"{x} = tl.maximum({x}, 0.0)")
    elif fmap == "focused":
        # ||relu(x)|| relu(x)^3 / ||relu(x)^3|| (0 when relu(x) is all zero)
        w(f"{x} = tl.maximum({x}, 0.0)")
        w(f"n2 = tl.sum({x} * {x}, {axis})")
        w(f"{x} = {x} * {x} * {x}")
        w(f"n6 = tl.sum({x} * {x}, {axis})")
        # (no 1e-38 floor as in the TVM kernel: Triton types that literal float64)
        w("fs = tl.where(n6 > 0.0, tl.sqrt(n2) / tl.sqrt(tl.where(n6 > 0.0, n6, 1.0)), 0.0)")
        w(f"{x} = {x} * " + ("fs[:, None]" if axis == 1 else "fs[None, :]"))
    elif fmap != "identity":
        raise ValueError(f"unknown feature map {fmap!r}")
    w(f"{x} = tl.where({valid}, {x}, 0.0)")


def _params(tables, *names):
    return ", ".join([*names, *(p for p, _, _ in tables.values())])


def _load_k(w, sh):
    """phi's input: the key tile [BNP, DP] in fp32 (`kf`) and the value tile (`vt`)."""
    w(f"kf = tl.load(k + plane * {sh.M * sh.D} + ktok[:, None] * {sh.D} + dd[None, :]"
      + _load_mask("kok[:, None]", f"dd[None, :] < {sh.D}" if sh.DP != sh.D else "") + ").to(tl.float32)")
    w(f"vt = tl.load(v + plane * {sh.M * sh.DV} + ktok[:, None] * {sh.DV} + dvv[None, :]"
      + _load_mask("kok[:, None]", f"dvv[None, :] < {sh.DV}" if sh.DVP != sh.DV else "") + ").to(tl.float32)")


def _kok_dd(sh):
    return "kok[:, None]" + (f" & (dd[None, :] < {sh.D})" if sh.DP != sh.D else "")


def generate_linear(prog, grp, sh, tables):
    """The sources of the three kernels (states, prefix, apply), each defining `attncc_group`."""
    return states_source(prog, grp, sh, tables), prefix_source(sh), apply_source(prog, grp, sh, tables)


def value_block(sh):
    """(columns of dv per program, programs along dv): a [d, dv] state of d128 in fp32 does not
    fit registers and shared memory beside the tiles (the quadratic form of PARTIAL tiles is
    recomputed per block)."""
    dvb = min(sh.DVP, VALUE_BLOCK)
    return dvb, sh.DVP // dvb


def _decode(w, sh, inner, count):
    """The block of dv `jb` (fastest), then decode_pid's indices of the tile `tile`."""
    nj = value_block(sh)[1]
    w("pid = tl.program_id(0)")
    w(f"jb = pid % {nj}")
    w(f"tile = pid // {nj}")
    decode_pid(w, sh, inner, count, "tile")


def _printer(tables):
    return TritonPrinter({S.g: ("g", "int"), S.b: ("b", "int"), S.h: ("h", "int")}, tables)


def states_source(prog, grp, sh, tables):
    gat, NK = grp.gather, -(-sh.LK // sh.BN)
    dvb = value_block(sh)[0]
    Pk = _printer(tables).with_names({S.u: ("u", "int")})
    w = SourceWriter()
    w(f"def {KERNEL}({_params(tables, 'k', 'v', 'heads', 'st', 'zt')}):")
    w.depth += 1
    _decode(w, sh, "kb", NK)
    w(f"dd = tl.arange(0, {sh.DP})")
    w(f"dvv = jb * {dvb} + tl.arange(0, {dvb})")
    key_rows(w, sh, Pk, gat)
    _load_k(w, sh)
    phi(w, prog.norm.feature_map, "kf", 1, _kok_dd(sh))
    w(f"s_t = tl.dot(tl.trans(kf), vt{precision(prog)})")
    w(f"tl.store(st + tile.to(tl.int64) * {sh.DP * sh.DVP} + dd[:, None] * {sh.DVP} + dvv[None, :], s_t)")
    w(f"tl.store(zt + tile.to(tl.int64) * {sh.DP} + dd, tl.sum(kf.to(tl.float64), 0), mask=(dd * 0 + jb) == 0)")
    return module(w)


def prefix_source(sh):
    NK, rows = -(-sh.LK // sh.BN), min(ROWS, sh.DP)
    w = SourceWriter()
    w(f"def {KERNEL}(st, zt, pst, pzt):")
    w.depth += 1
    w("pid = tl.program_id(0)")
    w(f"slab = pid % {sh.DP // rows}")
    w(f"item = (pid // {sh.DP // rows}).to(tl.int64)")
    w(f"dd = slab * {rows} + tl.arange(0, {rows})")
    w(f"dvv = tl.arange(0, {sh.DVP})")
    w(f"cell = dd[:, None] * {sh.DVP} + dvv[None, :]")
    w(f"acc = tl.zeros([{rows}, {sh.DVP}], tl.float32)")
    w(f"zacc = tl.zeros([{rows}], tl.float64)")
    w(f"tl.store(pst + item * {(NK + 1) * sh.DP * sh.DVP} + cell, acc)")
    w(f"tl.store(pzt + item * {(NK + 1) * sh.DP} + dd, zacc)")
    w(f"for kb in range(0, {NK}):")
    with w.block():
        w(f"acc += tl.load(st + (item * {NK} + kb) * {sh.DP * sh.DVP} + cell)")
        w(f"zacc += tl.load(zt + (item * {NK} + kb) * {sh.DP} + dd)")
        w(f"tl.store(pst + (item * {NK + 1} + kb + 1) * {sh.DP * sh.DVP} + cell, acc)")
        w(f"tl.store(pzt + (item * {NK + 1} + kb + 1) * {sh.DP} + dd, zacc)")
    return module(w)


def apply_source(prog, grp, sh, tables):
    gat, NK, fmap = grp.gather, -(-sh.LK // sh.BN), prog.norm.feature_map
    dvb = value_block(sh)[0]
    P = _printer(tables)
    # PARTIAL at tile granularity: a tile of FULL and EMPTY atoms (a partial window) is PARTIAL
    partial = bool((grp.blocks.coarsen(sh.BM, sh.BN) == PARTIAL).any())
    residual = grp.residual if grp.residual is not None and grp.residual is not sympy.true else None
    hoist = Hoister(row={S.i, S.t}, col={S.j, S.u})
    residual = hoist(residual) if residual is not None else None
    rows, cols, names = hoisted(P, hoist)
    Pp = TritonPrinter(names, tables)
    ac, pair_ok = pair_mask(sh, Pp(residual, "bool") if residual is not None else None)

    w = SourceWriter()
    params = _params(tables, "q", "k", "v", "o", "heads", "tcnt", "tlist", "tcls", "acls", "st", "zt", "pst", "pzt")
    w(f"def {KERNEL}({params}):")
    w.depth += 1
    _decode(w, sh, "qi", sh.NQ)
    query_tile(w, sh, P, gat)
    w(f"dvv = jb * {dvb} + tl.arange(0, {dvb})")
    w("qf = qt.to(tl.float32)")
    phi(w, fmap, "qf", 1, "qok[:, None]" + (f" & (dd[None, :] < {sh.D})" if sh.DP != sh.D else ""))
    for name, text in rows:
        w(f"{name} = {text}")
    w(f"item = g * {sh.NQ} + qi")
    w("ntiles = tl.load(tcnt + 3 * item)")
    w("nfull = tl.load(tcnt + 3 * item + 1)")
    w("pre = tl.load(tcnt + 3 * item + 2)")
    w("gi = (bh * " + f"{sh.G} + g).to(tl.int64)")
    w(f"cell = dd[:, None] * {sh.DVP} + dvv[None, :]")
    # ---- the FULL key tiles: their states, one prefix read when they are tiles 0..n-1
    w("if pre != 0:")
    with w.block():
        w(f"ssum = tl.load(pst + (gi * {NK + 1} + nfull) * {sh.DP * sh.DVP} + cell)")
        w(f"zsum = tl.load(pzt + (gi * {NK + 1} + nfull) * {sh.DP} + dd)")
    w("else:")
    with w.block():
        w(f"ssum = tl.zeros([{sh.DP}, {dvb}], tl.float32)")
        w(f"zsum = tl.zeros([{sh.DP}], tl.float64)")
        w("for kk in range(0, nfull):")
        with w.block():
            w(f"kb = tl.load(tlist + item * {sh.KMAX} + kk)")
            w(f"ssum += tl.load(st + (gi * {NK} + kb) * {sh.DP * sh.DVP} + cell)")
            w(f"zsum += tl.load(zt + (gi * {NK} + kb) * {sh.DP} + dd)")
    prec = precision(prog)
    w(f"acc = tl.dot(qf, ssum{prec})")
    w("den = tl.sum(qf.to(tl.float64) * zsum[None, :], 1)")
    # ---- the PARTIAL key tiles (and those past the end of the keys): the masked quadratic form
    if partial:
        Pk = P.with_names({S.u: ("u", "int")})
        w("for kk in range(nfull, ntiles):")
        with w.block():
            w(f"kb = tl.load(tlist + item * {sh.KMAX} + kk)")
            key_rows(w, sh, Pk, gat)
            _load_k(w, sh)
            phi(w, fmap, "kf", 1, _kok_dd(sh))
            w(f"a = tl.dot(qf, tl.trans(kf){prec})")
            if pair_ok is not None:
                w(f"if tl.load(tcls + item * {sh.KMAX} + kk) == {PARTIAL}:")
                with w.block():
                    for _, name, text in cols:
                        w(f"{name} = {text}")
                    for line in ac or ():
                        w(line)
                    w(f"a = tl.where({pair_ok}, a, 0.0)")
            w("den += tl.sum(a, 1).to(tl.float64)")
            w(f"acc += tl.dot(a, vt{prec})")
    # ---- epilogue: write through the query map into [B, H, N, dv]
    w(f"acc = acc * (1.0 / (den + {prog.norm.eps!r})).to(tl.float32)[:, None]")
    w(f"tl.store(o + plane * {sh.N * sh.DV} + i2 * {sh.DV} + dvv[None, :], acc.to(o.dtype.element_ty), "
      f"mask=qok[:, None] & (dvv[None, :] < {sh.DV}))")
    return module(w)
