"""Generate the Triton sources of one head group's backward kernels from the lowered IR
(FlashAttention-2's scheme over the forward's tiles; issue 23): the Triton counterpart of
codegen/tvm/backward.py, whose docstring gives the maths. Given out, lse and dO, with
Dr = rowsum(dO * out) - dlse per query row (computed by the caller), every pair the forward
computed is recomputed tile by tile from q, k and the lse:

    s = q.k * scale;  s' = f(s);  masked pairs as the forward masks them (the residual mask
    on PARTIAL tiles, padding, invalid tokens of either map)
    softmax: p = exp(s' - lse_i),     dS' = p * (dP - Dr_i)
    sigmoid: p = sigmoid(s' + bias),  dS' = dP * p * (1 - p)  (- exp(s' - lse_i) dlse_i when the
                                                               lse has a gradient)
    dP = dO_i . v_j;  dS = dS' * f'(s)  (ir/derivative.py)

A masked pair, or a score at or below the mask sentinel's half, weighs 0 and has dS = 0
whatever its row's lse (-inf for a fully masked row); a NaN score is not masked, so a NaN
query reaches its own row of dQ (and, as in SDPA, the keys of its head it meets).

Two kernels, each output row with one writer (no atomics: the same bits run to run):

- dq: one program per (batch, head of the group, gather group, query tile), over the
  forward's key-tile tables (codegen/tiles.tile_tables): dQ = scale * sum dS K;
- dkv: one program per (batch, head of the group, gather group, key tile), over the
  transposed tables (tiles.query_tile_tables): dV = sum p^T dO, dK = scale * sum dS^T q.

A key token must fill one slot of the gather (tiles.slots_once: codegen/backward.why_not
checks it), so that a key tile's program is the only writer of its rows of dK and dV.

Gradients of float captured tensors the score reads: the dq kernel adds dS' * d s'/d read
(ir/derivative.table_partials) into its slot's float64 copy of the gradient; its programs
are dealt `table_slots` slots (a program loops over its slot's tasks in order when there are
fewer slots than tasks) and the caller sums the slots in a fixed order. Inside a tile, many
pairs read one entry, and a Triton tile cannot scatter-add without atomics: the tile's
distinct offsets are visited in increasing order (each visit sums the pairs at that offset,
then finds the next offset as the least one above it), a read of one entry per tile (a
per-head slope) is one sum, and a read that depends on the rows only (or the columns only)
is first summed over the other axis. The tile's sums are fp32 trees; the slots accumulate
them in float64.

With a block-sparse layout passed per call, both kernels read tables made from each call's
layout, one row per (head of the group, gather group) (codegen/tiles.RuntimeLayout).

Every size is a literal of the source; tiles and head dims are padded as the forward's.
"""
import math

import sympy

from ...ir import symbols as S
from ...ir.derivative import score_derivative, table_partials
from ...ir.program import PARTIAL
from ..backward import grad_param, table_slots
from ..hoist import Hoister
from ..writer import SourceWriter
from .printer import TritonPrinter
from .source import (KERNEL, NEG, TL_DTYPES, _load_mask, decode_pid, dot_precision, hoisted, key_rows, module,
                     pair_mask, pow2, query_tile, sigmoid_weight)

NEG_HALF = NEG / 2      # a score at or below it counts as masked (README "Range"), as in the TVM kernels
BIG = 2 ** 31 - 1       # above every table offset: "no more offsets" in the distinct-offset loop
SLOTS = 1024            # at most this many gradient slots (a few programs per SM of the largest GPUs)


def not_generated(prog):
    """Why the Triton backward kernels cannot serve a program that codegen/backward.why_not
    lets through (the TVM backend generates these), or None."""
    if prog.post:
        return "the Triton backward of post modifiers (decay2d, clipped) is not generated yet"
    if prog.prologues:
        return "the Triton backward of routed attention is not generated yet"
    return None


def dq_params(tables, grads=()):
    """The dq kernel's parameters: q, k, v, dO, lse, Dr, dQ, the head list, the tile tables,
    the gradient slots of the captured tensors `grads`, the tensors the expressions read."""
    return ["q", "k", "v", "do", "lse", "dr", "dq", "heads", "tcnt", "tlist", "tcls", "acls",
            *(grad_param(n) for n in grads), *(p for p, _, _ in tables.values())]


def dkv_params(tables):
    """The dkv kernel's parameters: q, k, v, dO, lse, Dr, dK, dV, the head list, the
    transposed tile tables, the atom classes, the tensors the expressions read."""
    return ["q", "k", "v", "do", "lse", "dr", "dk", "dv", "heads", "qcnt", "qlist", "qcls", "acls",
            *(p for p, _, _ in tables.values())]


def table_slots_of(sh, tables, grads):
    """The dq kernel's programs: one per task, or its gradient slots (codegen/backward.
    table_slots), at most SLOTS (a few programs per SM of the largest GPUs)."""
    return table_slots(sh.programs, [tables[n][1] for n in grads], SLOTS)


def backward_plan(prog, grp):
    """The backward kernels' schedule, from the forward plan. A program holds about twice the
    forward's live tiles (q, dO and the dQ accumulator, or K, V and the dK, dV accumulators,
    beside s, p, dP and dS): tiles of 64 x 64 and more get twice the forward's warps, at most
    8 (at 4, sm_80's 128 x 64 tiles spill 150-500 bytes at d = 64; at 8, none). fp32's dots
    (three tf32 products) stage split operands: at the forward's 128 x 64 tiles dq needs
    180 KB of shared memory on sm_80 (163 KB), so fp32 tiles are at most 64 x 32 (d <= 64) or
    32 x 32, 4 warps, 2 stages, where the atoms of the block classification allow (the
    backward's tables coarsen them to its own tiles)."""
    plan, (aq, ak) = grp.plan, grp.blocks.atom
    if TL_DTYPES[prog.dtype] == "tl.float32":
        bm, bn = (64, 32) if max(prog.dims.d, prog.dims.dv) <= 64 else (32, 32)
        bm, bn = min(bm, plan.block_m), min(bn, plan.block_n)
        if bm % aq == 0 and bn % ak == 0:
            return plan.replace(block_m=bm, block_n=bn, num_warps=4, num_stages=min(plan.num_stages, 2))
    if pow2(plan.block_m) * pow2(plan.block_n) >= 64 * 64:
        return plan.replace(num_warps=min(8, 2 * plan.num_warps))
    return plan


def key_blocks(sh):
    """The number of key tiles of a gather group (the dkv kernel's inner index)."""
    return -(-sh.LK // sh.BN)


def _sides(expr):
    """(reads a row symbol, reads a column symbol) of an index expression."""
    syms = S.free_index_symbols(expr)
    return bool(syms & {S.i, S.t}), bool(syms & {S.j, S.u})


class _Exprs:
    """The score modifier, its derivative, the residual mask and the differentiated table
    reads' coefficients, hoisted as the forward hoists them (row-only parts once per query
    tile, column-only parts once per key tile) and printed as Triton text."""

    def __init__(self, prog, grp, sh, tables, grads=()):
        self.P = TritonPrinter({S.g: ("g", "int"), S.b: ("b", "int"), S.h: ("h", "int")}, tables)
        self.tables = tables
        mod = prog.score != S.score
        deriv = score_derivative(prog.score) if mod else sympy.Integer(1)
        parts = table_partials(prog.score, set(grads)) if grads else {}
        hoist = Hoister(row={S.i, S.t}, col={S.j, S.u}, blocked={S.score})
        score, fd = hoist(prog.score), hoist(deriv)
        coefs = [hoist(c) for c in parts.values()]
        residual = hoist(grp.residual) if grp.residual is not None else None
        residual = None if residual is sympy.true else residual
        self.rows, cols, names = hoisted(self.P, hoist)
        names[S.score] = ("s", "float")
        pair_syms = set().union(score.free_symbols, fd.free_symbols, *(c.free_symbols for c in coefs))
        self.cols_pair = [(n, t) for sym, n, t in cols if sym in pair_syms]
        self.cols_mask = [(n, t) for sym, n, t in cols if sym not in pair_syms]
        # the score, its derivative and the coefficients share subexpressions (softcap's tanh,
        # a bias read): each is computed once per pair, before the score is modified
        shared, (score, fd, *coefs) = sympy.cse([score, fd, *coefs], symbols=sympy.numbered_symbols("cse"))
        self.shared = []
        for sym, expr in shared:
            text, kind = TritonPrinter(names, tables).p(expr)
            self.shared.append((str(sym), text))
            names[sym] = (str(sym), kind)
        Pp = TritonPrinter(names, tables)
        self.score = Pp(score, "float") if mod else None
        self.fd = Pp(fd, "float") if deriv != 1 else None
        # (read, its coefficient's text or None for 1); coefficients are printed before the
        # score is modified (they may read the raw score, e.g. d(s * gate[h]) / d gate[h] = s)
        self.reads = [(read, None if c == 1 else Pp(c, "float")) for read, c in zip(parts, coefs)]
        self.ac, self.pair_ok = pair_mask(sh, Pp(residual, "bool") if residual is not None else None)


def _key_tiles(w, sh):
    """The key tile `kt` [BNP, DP] and value tile `vt` [BNP, DVP] of key_rows' tokens."""
    for name, src, width, lanes, lanesp in (("kt", "k", sh.D, "dd", sh.DP), ("vt", "v", sh.DV, "dvv", sh.DVP)):
        w(f"{name} = tl.load({src} + plane * {sh.M * width} + ktok[:, None] * {width} + {lanes}[None, :]"
          + _load_mask("kok[:, None]", f"{lanes}[None, :] < {width}" if lanesp != width else "") + ")")


def _query_rows(w, sh, needs_lse):
    """The query tile's dO `dos` [BMP, DVP], and its lse `lr` and Dr `drr` when the weights need
    them (zero on rows that are no query: their pairs are masked)."""
    w(f"dos = tl.load(do + plane * {sh.N * sh.DV} + i2 * {sh.DV} + dvv[None, :]"
      + _load_mask("qok[:, None]", f"dvv[None, :] < {sh.DV}" if sh.DVP != sh.DV else "") + ")")
    if needs_lse:
        # a fully masked row (lse -inf) has dead pairs only: 0 keeps their exp from -inf - -inf
        w(f"lr = tl.load(lse + plane * {sh.N} + qtok, mask=qok, other=0.0)")
        w("lr = tl.where(lr == NEG_INF, 0.0, lr)")
        w(f"drr = tl.load(dr + plane * {sh.N} + qtok, mask=qok, other=0.0)")


def _pair(w, sh, prog, E, lse_grad, in_dq):
    """One (query tile, key tile): the weights `p`, then `ds` = dS (dS' while the dq kernel
    adds the table gradients), both 0 on `dead` pairs; the dkv kernel's dV update between."""
    prec, dtype, norm = dot_precision(prog), TL_DTYPES[prog.dtype], prog.norm
    w(f"s = tl.dot(qt, tl.trans(kt){prec}) * {prog.scale!r}")
    if in_dq:
        for name, text in E.cols_pair:
            w(f"{name} = {text}")
    for name, text in E.shared:
        w(f"{name} = {text}")
    if E.fd:
        w(f"fd = {E.fd}")
    for n, (_, coef) in enumerate(E.reads):
        if coef:
            w(f"tc{n} = {coef}")
    if E.score:
        w(f"s = {E.score}")
    w("ok = qok[:, None] & kok[None, :]")
    if E.pair_ok is not None:
        w(f"if cls == {PARTIAL}:")          # the residual mask only on PARTIAL tiles, as the forward
        with w.block():
            for name, text in E.cols_mask if in_dq else ():
                w(f"{name} = {text}")
            for line in E.ac or ():
                w(line)
            w(f"ok = ok & ({E.pair_ok})")
    # masked pairs weigh 0 whatever the row's lse (-inf when the row is fully masked); a NaN
    # score is not dead, so a NaN query's row carries its NaN on
    w("s = tl.where(ok, s, NEG_INF)")
    w(f"dead = s <= {NEG_HALF!r}")
    if norm.kind == "softmax":
        w("p = tl.where(dead, 0.0, tl.exp(s - lr[:, None]))")
    else:
        w(f"p = tl.where(dead, 0.0, {sigmoid_weight(w, norm, 's')})")
    w(f"dp = tl.dot(dos, tl.trans(vt){prec})")
    if not in_dq:
        w(f"dva += tl.dot(tl.trans(p).to({dtype}), dos{prec})")
    if norm.kind == "softmax":
        ds = "p * (dp - drr[:, None])"
    elif lse_grad:          # the lse's own gradient: its softmax weights times dlse (drr = -dlse)
        ds = "dp * p * (1.0 - p) - tl.exp(s - lr[:, None]) * drr[:, None]"
    else:
        ds = "dp * p * (1.0 - p)"
    if in_dq and E.reads:           # the table gradients take dS', then dS = dS' f'(s)
        w(f"ds = tl.where(dead, 0.0, {ds})")
        _table_grads(w, sh, E)
        if E.fd:
            w("ds = tl.where(dead, 0.0, ds * fd)")
    else:
        w(f"ds = tl.where(dead, 0.0, {f'({ds}) * fd' if E.fd else ds})")


def _table_grads(w, sh, E):
    """Each differentiated read's gradient += dS' * its coefficient, into this program's slot
    (float64), one addition per distinct entry the tile reads, in increasing offset order."""
    for n, (read, coef) in enumerate(E.reads):
        name = str(read.base.label)
        base = f"{grad_param(name)} + slot.to(tl.int64) * {math.prod(E.tables[name][1])}"
        # (a coefficient may be inf or NaN on a dead pair, e.g. at padding: its dS' is 0 there)
        val = "ds" if coef is None else f"tl.where(dead, 0.0, ds * tc{n})"
        rows, cols = _sides(read)
        if not rows and not cols:             # one entry per tile: one sum
            w(f"cell = {base} + {E.P.offset(read)}")
            w(f"tl.store(cell, tl.load(cell) + tl.sum({val}).to(tl.float64))")
            continue
        if rows and not cols:                 # one entry per row: sum the columns first
            off = E.P.with_names({S.t: ("t", "int"), S.i: ("qtok", "int")}).offset(read)
            w(f"gv = tl.sum({val}, 1)")
            w(f"gi = tl.where(qok, {off} + r * 0, {BIG})")
        elif cols and not rows:               # one entry per column: sum the rows first
            off = E.P.with_names({S.u: ("u", "int"), S.j: ("ktok", "int")}).offset(read)
            w(f"gv = tl.sum({val}, 0)")
            w(f"gi = tl.where(kok, {off} + c * 0, {BIG})")
        else:
            off = E.P.with_names({S.t: ("t2", "int"), S.i: ("i2", "int"), S.u: ("u2", "int"),
                                  S.j: ("j2", "int")}).offset(read)
            w(f"gv = {val}")
            w(f"gi = tl.where(dead, {BIG}, {off} + tl.zeros([{sh.BMP}, {sh.BNP}], tl.int32))")
        w("e = tl.min(gi)")
        w(f"while e < {BIG}:")
        with w.block():
            w(f"cell = {base} + e")
            w("tl.store(cell, tl.load(cell) + tl.sum(tl.where(gi == e, gv, 0.0)).to(tl.float64))")
            w(f"e = tl.min(tl.where(gi > e, gi, {BIG}))")


def generate_dq(prog, grp, sh, tables, lse_grad=False, grads=()):
    """The dq kernel's source (defining `attncc_group`): dQ over the forward's key-tile tables,
    and the gradient slots of the captured tensors `grads` (table_slots)."""
    E, gat = _Exprs(prog, grp, sh, tables, grads), grp.gather
    needs_lse = prog.norm.kind == "softmax" or lse_grad
    slots = table_slots_of(sh, tables, grads)
    per = -(-sh.programs // slots)
    w = SourceWriter()
    w(f"def {KERNEL}({', '.join(dq_params(tables, grads))}):")
    w.depth += 1
    if per == 1:
        decode_pid(w, sh, "qi", sh.NQ)
        if grads:
            w("slot = pid")
    else:               # a slot's tasks in order, one after the other
        w("slot = tl.program_id(0)")
        w(f"for it in range(0, {per}):")
        w.depth += 1
        w(f"task = slot * {per} + it")
        if per * slots != sh.programs:
            w(f"if task < {sh.programs}:")
            w.depth += 1
        decode_pid(w, sh, "qi", sh.NQ, "task")
    query_tile(w, sh, E.P, gat)
    for name, text in E.rows:
        w(f"{name} = {text}")
    _query_rows(w, sh, needs_lse)
    w(f"acc = tl.zeros([{sh.BMP}, {sh.DP}], tl.float32)")
    w(f"item = ({sh.tg}) * {sh.NQ} + qi")
    w("ntiles = tl.load(tcnt + item)")
    w("for kk in range(0, ntiles):")
    with w.block():
        w(f"kb = tl.load(tlist + item * {sh.KMAX} + kk)")
        if E.pair_ok is not None:
            w(f"cls = tl.load(tcls + item * {sh.KMAX} + kk)")
        key_rows(w, sh, E.P.with_names({S.u: ("u", "int")}), gat)
        _key_tiles(w, sh)
        _pair(w, sh, prog, E, lse_grad, in_dq=True)
        w(f"acc += tl.dot(ds.to({TL_DTYPES[prog.dtype]}), kt{dot_precision(prog)})")
    w(f"tl.store(dq + plane * {sh.N * sh.D} + i2 * {sh.D} + dd[None, :], "
      f"(acc * {prog.scale!r}).to(dq.dtype.element_ty), mask=qok[:, None] & (dd[None, :] < {sh.D}))")
    return module(w)


def generate_dkv(prog, grp, sh, tables, qmax, lse_grad=False):
    """The dkv kernel's source (defining `attncc_group`): dK and dV over the transposed tables
    (qmax: their width)."""
    E, gat = _Exprs(prog, grp, sh, tables), grp.gather
    prec, dtype, nk = dot_precision(prog), TL_DTYPES[prog.dtype], key_blocks(sh)
    w = SourceWriter()
    w(f"def {KERNEL}({', '.join(dkv_params(tables))}):")
    w.depth += 1
    decode_pid(w, sh, "kb", nk)
    w(f"dd = tl.arange(0, {sh.DP})")
    w(f"dvv = tl.arange(0, {sh.DVP})")
    key_rows(w, sh, E.P.with_names({S.u: ("u", "int")}), gat)
    _key_tiles(w, sh)
    for name, text in E.cols_pair + E.cols_mask:        # the key tile's columns, once
        w(f"{name} = {text}")
    w(f"dka = tl.zeros([{sh.BNP}, {sh.DP}], tl.float32)")
    w(f"dva = tl.zeros([{sh.BNP}, {sh.DVP}], tl.float32)")
    w(f"item = ({sh.tg}) * {nk} + kb")
    w("nq = tl.load(qcnt + item)")
    w("for qq in range(0, nq):")
    with w.block():
        w(f"qi = tl.load(qlist + item * {qmax} + qq)")
        if E.pair_ok is not None:
            w(f"cls = tl.load(qcls + item * {qmax} + qq)")
        query_tile(w, sh, E.P, gat, lanes=False)
        for name, text in E.rows:
            w(f"{name} = {text}")
        _query_rows(w, sh, prog.norm.kind == "softmax" or lse_grad)
        _pair(w, sh, prog, E, lse_grad, in_dq=False)
        w(f"dka += tl.dot(tl.trans(ds).to({dtype}), qt{prec})")
    for name, acc, width, lanes, scale in (("dk", "dka", sh.D, "dd", f" * {prog.scale!r}"),
                                           ("dv", "dva", sh.DV, "dvv", "")):
        w(f"tl.store({name} + plane * {sh.M * width} + ktok[:, None] * {width} + {lanes}[None, :], "
          f"({acc}{scale}).to({name}.dtype.element_ty), mask=kok[:, None] & ({lanes}[None, :] < {width}))")
    return module(w)
