"""Generate the Triton source of one head group's kernel from the lowered IR.

One program per (batch, head of the group, gather group, query tile), a 1-D grid with the
query tile fastest (neighbouring programs share their key tiles in L2). A program loads its
query tile straight from the unpartitioned [B, H, N, d] layout through the query index map,
then loops over only the non-empty key tiles of its (group, query tile), read from the tile
tables of the static block classification (empty tiles are never loaded). Each key tile is
loaded through the key index map (no gather copies, no window partition, no roll); the
residual mask is evaluated only on PARTIAL tiles (FULL tiles mask only their padding keys).
Softmax is online in fp32 (running max and sum); sigmoid needs no statistics (they are kept
only for the log-sum-exp, under the STATS constexpr); post modifiers need the final
statistics, so softmax with post modifiers sweeps the key tiles twice. Row-only and
column-only subexpressions of scores, post modifiers and masks are hoisted out of the pairs
(rows once per program, columns once per key tile).

Every size is a literal of the source (the kernel is specialised per shape, dtype and plan);
tiles and head dims are padded to powers of two of at least 16 (tl.arange and tl.dot need
them) and the padding is masked.
"""
from dataclasses import dataclass

import sympy

from ...ir import symbols as S
from ...ir.program import FULL, PARTIAL
from ..hoist import Hoister
from ..routes import COL, REG
from ..writer import SourceWriter
from .printer import TritonPrinter

NEG = -1.0e30          # the running max's start: finite, so masked scores (-inf) give exp(-inf - NEG) = 0
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
# the element type the kernel multiplies in (float64 inputs run in float32: fp32 accumulation)
TL_DTYPES = {"float16": "tl.float16", "bfloat16": "tl.bfloat16", "float32": "tl.float32", "float64": "tl.float32"}


def pow2(n, least=16):
    p = least
    while p < n:
        p *= 2
    return p


@dataclass(frozen=True)
class GroupShape:
    """The static sizes a group kernel is specialised on (P: padded to a power of two)."""
    B: int
    H: int
    N: int
    M: int
    D: int
    DV: int
    HG: int
    G: int
    LQ: int
    LK: int
    BM: int
    BN: int
    NQ: int
    KMAX: int
    AQ: int
    AK: int
    NQA: int
    NKA: int
    BMP: int
    BNP: int
    DP: int
    DVP: int
    TG: int = 0         # rows of the tile tables: G, or HG * G for per-call tables of a per-head layout

    @property
    def programs(self):
        return self.B * self.HG * self.G * self.NQ

    @property
    def tg(self):
        """The kernel's row of the tile tables (text)."""
        return "g" if self.TG in (0, self.G) else f"(bh % {self.HG}) * {self.G} + g"


def group_shape(prog, grp, kmax, tg=0):
    d, gat, plan = prog.dims, grp.gather, grp.plan
    aq, ak = grp.blocks.atom
    return GroupShape(B=d.B, H=d.H, N=d.N, M=d.M, D=d.d, DV=d.dv, HG=len(grp.heads), G=gat.G, LQ=gat.Lq,
                      LK=gat.Lk, BM=plan.block_m, BN=plan.block_n, NQ=-(-gat.Lq // plan.block_m), KMAX=kmax,
                      AQ=aq, AK=ak, NQA=-(-gat.Lq // aq), NKA=-(-gat.Lk // ak), BMP=pow2(plan.block_m),
                      BNP=pow2(plan.block_n), DP=pow2(d.d), DVP=pow2(d.dv), TG=tg)


def decode_pid(w, sh, inner, count, pid=None):
    """The program's (inner tile index, gather group g, batch b, head h, plane of [B, H]) from
    a 1-D grid with the inner tile fastest (or from the index `pid` names)."""
    if pid is None:
        w("pid = tl.program_id(0)")
        pid = "pid"
    w(f"{inner} = {pid} % {count}")
    w(f"g = ({pid} // {count}) % {sh.G}")
    w(f"bh = {pid} // {count * sh.G}")
    w(f"b = bh // {sh.HG}")
    w(f"h = tl.load(heads + bh % {sh.HG})")
    w(f"plane = (b * {sh.H} + h).to(tl.int64)")


def query_tile(w, sh, P, gat, lanes=True):
    """The query tile `qt` [BMP, DP], straight from [B, H, N, d] through the query map (rows
    `r`, local indices `t`, tokens `qtok`, validity `qok`; `t2`, `i2` as columns; the head-dim
    lanes `dd` and `dvv` unless the caller set them: `lanes` False)."""
    w(f"r = tl.arange(0, {sh.BMP})")
    w(f"t = qi * {sh.BM} + r")
    Pq = P.with_names({S.t: ("t", "int")})
    w(f"qok = (r < {sh.BM}) & (t < {sh.LQ})" + _and(Pq, gat.q_valid))
    # tokens of padding rows/keys are only ever used under a load/store mask (or clamped in a
    # table read), so the maps are printed bare: an affine map keeps Triton's contiguity analysis
    w(f"qtok = {Pq(gat.q_token, 'int')} + r * 0")
    w("t2 = t[:, None]")
    w("i2 = qtok[:, None]")
    if lanes:
        w(f"dd = tl.arange(0, {sh.DP})")
        w(f"dvv = tl.arange(0, {sh.DVP})")
    w(f"qt = tl.load(q + plane * {sh.N * sh.D} + i2 * {sh.D} + dd[None, :], "
      f"mask=qok[:, None] & (dd[None, :] < {sh.D}), other=0.0)")


def hoisted(P, hoist):
    """(row statements [(name, text)], column statements [(symbol, name, text)], printer names)
    of a Hoister's row and column subexpressions: rows are printed over `t2`/`i2`, columns over
    `u2`/`j2` (the names bind those too)."""
    row_p = P.with_names({S.t: ("t2", "int"), S.i: ("i2", "int")})
    col_p = P.with_names({S.u: ("u2", "int"), S.j: ("j2", "int")})
    rows, cols = [], []
    names = {**P.names, S.t: ("t2", "int"), S.i: ("i2", "int"), S.u: ("u2", "int"), S.j: ("j2", "int")}
    for e, sym in hoist.rows.items():
        text, kind = row_p.p(e)
        rows.append((str(sym), text))
        names[sym] = (str(sym), kind)
    for e, sym in hoist.cols.items():
        text, kind = col_p.p(e)
        cols.append((sym, str(sym), text))
        names[sym] = (str(sym), kind)
    return rows, cols, names


def dot_precision(prog):
    """The dots' input precision argument: fp32 inputs get three tf32 products per product
    (fp32 accuracy on the tensor cores; plain tf32 loses 10 bits, and "ieee" trips a layout
    assertion in Triton 3.6-3.9's LLVM lowering); fp16 and bf16 multiply natively."""
    return ', input_precision="tf32x3"' if TL_DTYPES[prog.dtype] == "tl.float32" else ""


def key_rows(w, sh, Pk, gat):
    """Key tile `kb`'s columns: local indices u, tokens ktok, validity kok (padding columns,
    keys past the group's end and invalid tokens of the key map are not keys), and u2, j2."""
    w(f"c = tl.arange(0, {sh.BNP})")
    w(f"u = kb * {sh.BN} + c")
    w(f"kok = (c < {sh.BN}) & (u < {sh.LK})" + _and(Pk, gat.k_valid))
    w(f"ktok = {Pk(gat.k_token, 'int')} + c * 0")
    w("u2 = u[None, :]")
    w("j2 = ktok[None, :]")


def pair_mask(sh, res_text):
    """(statements setting the atom classes `ac`, or None; the mask of a PARTIAL tile's pairs,
    or None) from the residual mask's text: a tile coarser than the atoms of the block
    classification admits its FULL atoms whole and evaluates the residual on its PARTIAL ones."""
    if sh.BM != sh.AQ or sh.BN != sh.AK:
        return atom_classes(sh), f"(ac == {FULL})" + (f" | ((ac == {PARTIAL}) & {res_text})" if res_text else "")
    return None, res_text


def sigmoid_weight(w, norm, s):
    """Write the statements of the sigmoid weight of the scores `s` (x, ex); return its text.
    sigmoid(x) from exp(-|x|): never overflows (masked scores are -inf: weight 0)."""
    w(f"x = {s} + {norm.bias!r}")
    w("ex = tl.exp(-tl.abs(x))")
    return "tl.where(x >= 0.0, 1.0 / (1.0 + ex), ex / (1.0 + ex))"


def post_chain(prog):
    """The post modifiers composed in order, as one expression of the weight."""
    chain = S.weight
    for post in prog.post:
        chain = post.xreplace({S.weight: chain})
    return chain


KERNEL = "attncc_group"


def kernel_params(tables, routed=False):
    """q, k, v, o, lse, the head list, the tile tables, the routing table when routed, the
    tensors the expressions read (tab_<name>, so a user's tensor name never shadows a kernel
    variable), STATS."""
    return ["q", "k", "v", "o", "lse", "heads", "tcnt", "tlist", "tcls", "acls", *(["route_idx"] if routed else []),
            *(p for p, _, _ in tables.values()), "STATS: tl.constexpr"]


def generate(prog, grp, sh, tables, route=None):
    """Triton source defining `attncc_group(...)` (undecorated: the backend wraps it in a
    JITFunction, or the interpreter) for one head group.

    `tables`: IR name -> (param name, shape, kind) of the tensors the expressions read."""
    gat, norm = (route.gather() if route else grp.gather), prog.norm
    dtype = TL_DTYPES[prog.dtype]
    prec = dot_precision(prog)
    two_pass = norm.kind == "softmax" and bool(prog.post)
    # the running statistics are kept in log2 units (exp2 is the hardware's exponential); with
    # no score modifier the softmax scale folds into that conversion, so that each weight is one
    # fused multiply-add and one exp2 of the raw product, and the raw tile is masked as it is
    fold = (norm.kind == "softmax" and prog.score == S.score and prog.scale > 0
            and S.score not in post_chain(prog).free_symbols)
    c2 = f"{(prog.scale if fold else 1.0) * LOG2E!r}"
    base = {S.g: ("g", "int"), S.b: ("b", "int"), S.h: ("h", "int")}
    P = TritonPrinter(base, tables)

    hoist = Hoister(row={S.i, S.t}, col={S.j, S.u}, blocked={S.score, S.weight})
    score = hoist(prog.score)
    post = hoist(post_chain(prog))
    # a routed gather visits only routed regions: nothing to mask but padding
    residual = hoist(grp.residual) if grp.residual is not None and route is None else None
    if residual is sympy.true:
        residual = None
    rows, cols, names = hoisted(P, hoist)
    names[S.score] = ("s", "float")
    Pp = TritonPrinter(names, tables)
    pair_syms = score.free_symbols | post.free_symbols
    cols_pair = [(n, t) for sym, n, t in cols if sym in pair_syms]
    cols_mask = [(n, t) for sym, n, t in cols if sym not in pair_syms]

    ac, pair_ok = pair_mask(sh, Pp(residual, "bool") if residual is not None else None)

    w = SourceWriter()
    w(f"def {KERNEL}(" + ", ".join(kernel_params(tables, route is not None)) + "):")
    w.depth += 1
    decode_pid(w, sh, "qi", sh.NQ)
    query_tile(w, sh, P, gat)
    for name, text in rows:
        w(f"{name} = {text}")
    w(f"m_i = tl.full([{sh.BMP}], {NEG!r}, tl.float32)")
    w(f"l_i = tl.zeros([{sh.BMP}], tl.float32)")
    w(f"acc = tl.zeros([{sh.BMP}, {sh.DVP}], tl.float32)")
    w(f"item = ({sh.tg}) * {sh.NQ} + qi")
    w("ntiles = tl.load(tcnt + 2 * item)")
    w("nfull = tl.load(tcnt + 2 * item + 1)")

    Pk = P.with_names({S.u: ("u", "int")})

    # keys a FULL tile may still have to mask: the padding columns of a tile narrower than its
    # power of two, and invalid tokens of the key map (tiles past the end of the keys are never
    # in the FULL sweep: the backend lists them with the PARTIAL ones)
    full_kok = " & ".join(x for x in (f"(c < {sh.BN})" if sh.BN != sh.BNP else "", _and(Pk, gat.k_valid)[3:]) if x)

    def key_tile(pass_, full):
        """One sweep over the program's key tiles. pass_ 0: the only pass; 1: statistics only;
        2: weights from the final statistics, post modifiers, PV. full: the sweep over the
        FULL tiles (first in the list: no residual mask, no atom classes; padding keys score
        -inf, so that exp gives 0 against the finite running max), else over the others."""
        w("for kk in range(0, nfull):" if full else "for kk in range(nfull, ntiles):")
        with w.block():
            w(f"kb = tl.load(tlist + item * {sh.KMAX} + kk)")
            w(f"c = tl.arange(0, {sh.BNP})")
            w(f"u = kb * {sh.BN} + c")
            kmask = full_kok if full else f"(c < {sh.BN}) & (u < {sh.LK})" + _and(Pk, gat.k_valid)
            if kmask:
                w(f"kok = {kmask}")
            if route:
                # the kk-th routed region of this query region, read through the routing table
                w(f"rsel = tl.load(route_idx + (b * {route.count} + g) * {route.topk} + kb)")
                ktok = TritonPrinter({REG: ("rsel", "int"), COL: ("c", "int")}, {})(route.token(REG, COL), "int")
                w(f"ktok = {ktok} + c * 0")
            else:
                w(f"ktok = {Pk(gat.k_token, 'int')} + c * 0")
            w("u2 = u[None, :]")
            w("j2 = ktok[None, :]")
            w(f"kt = tl.load(k + plane * {sh.M * sh.D} + j2 * {sh.D} + dd[:, None]"
              + _load_mask("kok[None, :]" if kmask else "", f"dd[:, None] < {sh.D}" if sh.DP != sh.D else "") + ")")
            w(f"s = tl.dot(qt, kt{prec})" + ("" if fold else f" * {prog.scale!r}"))
            for name, text in cols_pair:
                w(f"{name} = {text}")
            if prog.score != S.score:
                w(f"s = {Pp(score, 'float')}")
            # masked scores are -inf: exp(-inf - m) is 0 against the running max, which starts
            # finite (NEG); a 2-D mask is kept only where post modifiers need it
            ok = None
            if kmask:
                w("s = tl.where(kok[None, :], s, NEG_INF)")
                ok = "kok[None, :]"
            if not full and pair_ok is not None:
                if prog.post:
                    w(f"ok = tl.full([{sh.BMP}, {sh.BNP}], 1, tl.int1)" + (f" & {ok}" if ok else ""))
                    ok = "ok"
                # the residual mask only on PARTIAL tiles
                w(f"if tl.load(tcls + item * {sh.KMAX} + kk) == {PARTIAL}:")
                with w.block():
                    for name, text in cols_mask:
                        w(f"{name} = {text}")
                    for line in ac or ():
                        w(line)
                    if prog.post:
                        w(f"ok = ok & ({pair_ok})")
                        w("s = tl.where(ok, s, NEG_INF)")
                    else:
                        w(f"s = tl.where({pair_ok}, s, NEG_INF)")
            if pass_ in (0, 1) and (norm.kind == "softmax" or pass_ == 0):
                stats = norm.kind == "sigmoid"
                if stats:
                    w("if STATS:")
                    w.depth += 1
                w(f"m_new = tl.maximum(m_i, tl.max(s, 1) * {c2})")
                w(f"p = tl.math.exp2(s * {c2} - m_new[:, None])")
                w("alpha = tl.math.exp2(m_i - m_new)")
                w("l_i = l_i * alpha + tl.sum(p, 1)")
                if norm.kind == "softmax" and pass_ == 0:
                    w("acc = acc * alpha[:, None]")
                w("m_i = m_new")
                if stats:
                    w.depth -= 1
            if pass_ == 1:
                return
            if norm.kind == "sigmoid":
                wexpr = sigmoid_weight(w, norm, "s")
            elif pass_ == 2:
                wexpr = f"(tl.math.exp2(s * {c2} - m_i[:, None]) * inv[:, None])"
            else:
                wexpr = None
            if wexpr is not None:
                wtext = TritonPrinter({**names, S.weight: (wexpr, "float")}, tables)(post, "float")
                # a post modifier may map a zero weight to non-zero: masked pairs are zeroed after it
                w(f"p = tl.where({ok}, {wtext}, 0.0)" if ok and post != S.weight else f"p = {wtext}")
            w(f"vt = tl.load(v + plane * {sh.M * sh.DV} + ktok[:, None] * {sh.DV} + dvv[None, :]"
              + _load_mask("kok[:, None]" if kmask else "", f"dvv[None, :] < {sh.DV}" if sh.DVP != sh.DV else "") + ")")
            w(f"acc += tl.dot(p.to({dtype}), vt{prec})")

    def sweep(pass_):
        key_tile(pass_, True)
        key_tile(pass_, False)

    if two_pass:
        sweep(1)
        w("inv = tl.where(l_i > 0.0, 1.0 / tl.maximum(l_i, 1e-30), 0.0)")
        sweep(2)
    else:
        sweep(0)
    # ---- epilogue: write through the query map into [B, H, N, dv]
    if norm.kind == "softmax" and not two_pass:
        w("acc = acc * tl.where(l_i > 0.0, 1.0 / tl.maximum(l_i, 1e-30), 0.0)[:, None]")
    w(f"tl.store(o + plane * {sh.N * sh.DV} + i2 * {sh.DV} + dvv[None, :], acc.to(o.dtype.element_ty), "
      f"mask=qok[:, None] & (dvv[None, :] < {sh.DV}))")
    if norm.kind == "sigmoid":
        w("if STATS:")
        w.depth += 1
    # a row with no unmasked key has l_i == 0: its log-sum-exp is -inf; a NaN score's row NaN
    w(f"lse_v = tl.where(l_i > 0.0, (m_i + tl.math.log2(tl.maximum(l_i, 1e-30))) * {LN2!r}, "
      "tl.where(l_i == 0.0, NEG_INF, l_i))")
    w(f"tl.store(lse + plane * {sh.N} + qtok, lse_v, mask=qok)")
    return module(w)


def module(w):
    """The module text of a kernel written by `w` (its header, then the kernel): NEG_INF, and
    the device functions it calls."""
    body = "\n".join(w.lines) + "\n"
    helpers = TANH if "_tanh(" in body else ""
    names = ["_tanh"] if helpers else []
    return header(names) + helpers + body


def header(helpers=()):
    """A generated module's first lines: triton.language, NEG_INF, the names of its device
    functions (the backend jits them)."""
    return ("# generated by attncc from the IR; do not edit\nimport triton.language as tl\n\n"
            f"NEG_INF = tl.constexpr(float(\"-inf\"))\nHELPERS = {list(helpers)!r}   # device functions\n\n\n")


# tanh in fp32 to ~2 ulp (tl has none; 1 - 2 / (exp(2x) + 1) alone cancels for small x):
# x + x z P(z), z = x^2, below |x| = 0.625 (Cephes' tanhf minimax coefficients), the exp form above
TANH = '''def _tanh(x):
    a = tl.abs(x)
    z = x * x
    small = x + x * z * ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
                          + 1.33314422036e-1) * z - 3.33332819422e-1)
    big = 1.0 - 2.0 / (tl.exp(2.0 * tl.where(a > 44.0, 44.0, a)) + 1.0)     # NaN stays NaN
    return tl.where(a < 0.625, small, tl.where(x < 0.0, -big, big))


'''


def atom_classes(sh):
    """Statements that set `ac`, the atom class of every pair of a coarse tile. When the tile
    holds a power-of-two grid of whole atoms, one class per atom is loaded and broadcast (a
    per-pair gather would hold a full tile of indices in registers: ptxas spills at 128x64)."""
    ra, ca = sh.BM // sh.AQ, sh.BN // sh.AK
    if sh.BM == sh.BMP and sh.BN == sh.BNP and ra == pow2(ra, 1) and ca == pow2(ca, 1):
        rows = f"tl.minimum(qi * {ra} + tl.arange(0, {ra}), {sh.NQA - 1})"
        cols = f"tl.minimum(kb * {ca} + tl.arange(0, {ca}), {sh.NKA - 1})"
        return [f"ac = tl.load(acls + ({sh.tg}) * {sh.NQA * sh.NKA} + {rows}[:, None] * {sh.NKA} + {cols}[None, :])",
                f"ac = tl.reshape(tl.broadcast_to(ac[:, None, :, None], [{ra}, {sh.AQ}, {ca}, {sh.AK}]), "
                f"[{sh.BM}, {sh.BN}])"]
    return [f"ac = tl.load(acls + ({sh.tg}) * {sh.NQA * sh.NKA} + tl.minimum(t2 // {sh.AQ}, {sh.NQA - 1}) * {sh.NKA} "
            f"+ tl.minimum(u2 // {sh.AK}, {sh.NKA - 1}))"]


def _load_mask(*parts):
    """The mask and other arguments of a tile load (none when nothing needs masking)."""
    mask = " & ".join(f"({p})" for p in parts if p)
    return f", mask={mask}, other=0.0" if mask else ""


def _and(printer, expr):
    if sympy.sympify(expr) is sympy.true:
        return ""
    return f" & {printer(expr, 'bool')}"
