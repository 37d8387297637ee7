"""Generate the TVMScript source of one head group's kernel from the lowered IR.

The kernel is one parallel loop over tasks (batch, head of the group, gather group, query
tile). A task loads its query tile through the query index map, then visits only the
non-empty key tiles of its (group, query tile) (tables from classify_blocks). K is packed once
per call, transposed per key tile through the key index map; V rows are read in place through
it. QK^T and PV are register-tiled micro-kernels (unrolled rows x vector lanes); masks are
evaluated only on PARTIAL tiles, atom by atom (EMPTY atoms of a PARTIAL tile are neither
computed nor read; FULL tiles only mask the padding of the last tile); softmax is online
(running max and sum, exp vectorized by fexp); sigmoid needs no statistics (on FULL tiles its
weights come straight out of the QK^T register tile); post modifiers need the final statistics,
so softmax with post modifiers makes a second pass over the key tiles. The output is written
back through the query index map into the unpartitioned [B, H, N, dv] layout.
"""
from dataclasses import dataclass

from ...ir import symbols as S
from ...ir.plan import softmax_lanes
from ...ir.program import FULL
from ..hoist import Hoister, group_invariant
from ..writer import SourceWriter
from .items import _chunk, heads_inner, next_item, prefetch_row, prefetches, query_row, query_tables, task_item
from .microkernel import mask, pack_tile, pv, qk, skips_atoms
from .routing import prologue_and_pack, route_param
from ..captured import param
from .printer import TIRPrinter


def _up(x, m):
    return -(-x // m) * m


@dataclass(frozen=True)
class GroupShape:
    """The static sizes a group kernel is specialised on."""
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
    NK: int
    KMAX: int
    AQ: int
    AK: int
    NQA: int
    NKA: int
    MR: int
    VW: int
    BMP: int
    BNP: int
    DVP: int
    TG: int = 0         # rows of the tile tables: G, or HG * G for per-call tables of a per-head layout
    SL: int = 8         # vector lanes of the softmax / sigmoid loops (softmax_lanes; BNP is a multiple)
    ST: tuple = ()      # element strides of q, k, v, o when not compact (read and written in place)

    @property
    def tg(self):
        """The kernel's row of the tile tables (text)."""
        return self.table_row("hh", "g")

    def table_row(self, hh, g):
        """The row of the tile tables of head `hh` of the group and gather group `g` (text)."""
        return g if self.TG in (0, self.G) else f"{hh} * {self.G} + {g}"

    @property
    def table_rows(self):
        return self.TG or self.G


def group_shape(prog, grp, kmax, tg=0):
    d, gat, plan = prog.dims, grp.gather, grp.plan
    aq, ak = grp.blocks.atom
    MR, VW, SL = plan.unroll, plan.vector, softmax_lanes(plan.block_n)
    return GroupShape(B=d.B, H=d.H, N=d.N, M=d.M, D=d.d, DV=d.dv, HG=len(grp.heads), G=gat.G, LQ=gat.Lq,
                      LK=gat.Lk, BM=plan.block_m, BN=plan.block_n, NQ=-(-gat.Lq // plan.block_m),
                      NK=-(-gat.Lk // plan.block_n), KMAX=kmax, AQ=aq, AK=ak, NQA=-(-gat.Lq // aq),
                      NKA=-(-gat.Lk // ak), MR=MR, VW=VW, BMP=_up(plan.block_m, MR), BNP=_up(plan.block_n, max(VW, SL)),
                      DVP=_up(d.dv, 8), TG=tg, SL=SL)


PHASES = ("qk", "mask", "softmax", "pv")


def generate(prog, grp, shape, tables, skip=(), stats=True, route=None):
    """TVMScript source defining `build()` -> PrimFunc for one head group.
    `tables`: name -> (shape, kind, tir dtype) of the tensors the expressions read.
    `skip`: phases of PHASES left out, for profiling only (bench/tvm_phases.py): the result
    is then wrong by construction. `stats=False` (sigmoid without return_lse) skips the
    row statistics that only the log-sum-exp needs. `route` (a routing.Route): the gather is
    the routed one (groups are query regions, key tile kk is the kk-th routed region, read
    through the route_idx table the kernel's prologue writes)."""
    sh, gat, norm = shape, (route.gather() if route else grp.gather), prog.norm
    ks = "rsel, 0" if route else "g, kb"         # the key tile's slot in ktk, kokp, kpk
    P = TIRPrinter({S.g: ("g", "int"), S.t: ("t", "int"), S.u: ("u", "int"), S.b: ("b", "int"),
                    S.h: ("h", "int")}, {n: (s, k) for n, (s, k, _) in tables.items()})
    Pq = TIRPrinter({**P.names, S.i: ("qtok[r]", "int"), S.j: (f"ktk[{ks}, c]", "int"), S.score: ("s[r, c]", "float"),
                     S.weight: ("s[r, c]", "float")}, P.tables)
    two_pass = norm.kind == "softmax" and bool(prog.post)
    # per-pair expressions with their row-only and column-only parts hoisted out; with one
    # query and one key tile per group, a float table read that is the same in every group
    # (Swin's relative position bias) becomes a per-call [heads, BMP, BNP] tile
    one_tile = not route and sh.NQ == 1 and sh.NK == 1
    pair = (lambda e: tables.get(str(e.base), (0, ""))[1] == "float" and group_invariant(e, gat, grp.heads)) \
        if one_tile else None
    hoist = Hoister(row={S.i, S.t}, col={S.j, S.u}, blocked={S.score, S.weight}, pair=pair)
    score = hoist(prog.score)
    post = hoist(_post_chain(prog))
    res = hoist(grp.residual) if grp.residual is not None else None
    row_names = {S.t: ("t", "int"), S.i: ("qtok[r]", "int")}
    col_names = {S.u: ("u", "int"), S.j: (f"ktk[{ks}, c]", "int")}
    hoisted = []
    for table, buf, idx, names in ((hoist.rows, "hrow", "r", row_names), (hoist.cols, "hcol", "c", col_names)):
        for e, sym in table.items():
            pr = TIRPrinter({**P.names, **names}, P.tables)
            text, kind = pr.p(e)
            kind = "int" if kind == "bool" else kind
            hoisted.append((buf, sym, TIRPrinter.cast(text, pr.p(e)[1], kind), kind))
            P.names[sym] = Pq.names[sym] = (f"{sym}[{idx}]", kind)
    for sym in hoist.pairs.values():
        P.names[sym] = Pq.names[sym] = (f"{sym}[hh, r, c]", "float")
    pair_ok = P(res, "bool") if res is not None else "T.bool(True)"
    w = open_kernel(sh, tables, "the IR", [route_param(sh, route)] if route else [])
    # one query tile per (batch, head, group) in one pass reads each key tile once: the task
    # packs it into its own buffer, in cache, instead of a per-call pack through memory
    inline = not route and sh.NQ == 1 and not two_pass
    if route:
        prologue_and_pack(w, sh, route, prog.dims.H)
    else:
        _pack(w, sh, P, gat, inline)
    _pair_tiles(w, sh, P, gat, hoist.pairs)
    items = sh.B * sh.HG * sh.G * sh.NQ
    chunk = _chunk(items)
    prefetch = not route and prefetches(sh, gat) and chunk > 1
    if prefetch:
        query_tables(w, sh, P, gat)
    # a task runs `chunk` consecutive (batch, head, group, query tile) items, so its
    # scratch buffers are allocated once per task, not once per item
    w(f"for task in T.parallel({items // chunk}):")
    with w.block():
        for name, shp, dt in (("qs", (sh.BMP, sh.D), "float32"), ("qtok", (sh.BMP,), "int32"),
                              ("qok", (sh.BMP,), "int32"), ("s", (sh.BMP, sh.BNP), "float32"),
                              ("acc", (sh.BMP, sh.DVP), "float32"), ("mx", (sh.BMP,), "float32"),
                              ("sm", (sh.BMP,), "float32"), ("lz", (sh.BMP,), "float32"),
                              ("lanes", (sh.SL,), "float32"),
                              ("lanes2", (sh.SL,), "float32"),
                              *([("kpl", (sh.D, sh.BNP), "float32")] if inline else [])):
            w(f"{name} = T.alloc_buffer({shp}, \"{dt}\", scope=\"local\")")
        for buf, sym, _, kind in hoisted:
            n = sh.BMP if buf == "hrow" else sh.BNP
            w(f"{sym} = T.alloc_buffer(({n},), \"{'int32' if kind == 'int' else 'float32'}\", scope=\"local\")")
        w(f"for it in range({chunk}):")
        w.depth += 1
        task_item(w, sh, chunk, route is None and heads_inner(sh))
        if prefetch:
            next_item(w, sh, chunk, route is None and heads_inner(sh))
        # ---- query tile through the query map
        w(f"for r in range({sh.BMP}):")
        with w.block():
            query_row(w, sh, P, gat, prefetch)
            for buf, sym, text, _ in hoisted:
                if buf == "hrow":
                    w(f"{sym}[r] = {text}")
            w(f"for j in T.vectorized({sh.D}):")
            with w.block():
                w(f"qs[r, j] = q[b, h, qtok[r], j] * T.float32({prog.scale!r})")
            w(f"for j in T.vectorized({sh.DVP}):")
            with w.block():
                w("acc[r, j] = T.float32(0)")
            w("mx[r] = T.float32(NEG)")
            w("sm[r] = T.float32(0)")
            if prefetch:                      # the next item's rows, while this one's arrive
                w(f"if r < {sh.BM}:")
                with w.block():
                    prefetch_row(w, sh, "r", "q")
                w(f"if r < {sh.BN}:")
                with w.block():
                    prefetch_row(w, sh, "r", "kv")
        if prefetch and sh.BN > sh.BMP:
            w(f"for c in range({sh.BMP}, {sh.BN}):")
            with w.block():
                prefetch_row(w, sh, "c", "kv")
        for pass_ in ((1, 2) if two_pass else (0,)):
            _key_loop(w, prog, grp, sh, Pq, pair_ok, pass_, score, post, hoisted, set(skip), stats, ks, inline)
        # ---- epilogue: write through the query map; the rows' logs vectorized first (flog:
        # libm's scalar logf was 4% of Swin-T's window kernels)
        full = sh.BMP // sh.SL * sh.SL
        w(f"for rr in range({sh.BMP // sh.SL}):")
        with w.block():
            w(f"for i in T.vectorized({sh.SL}):")
            with w.block():
                w(f"lz[rr * {sh.SL} + i] = flog(sm[rr * {sh.SL} + i])")
        if sh.BMP > full:
            w(f"for i in T.vectorized({sh.BMP - full}):")
            with w.block():
                w(f"lz[{full} + i] = flog(sm[{full} + i])")
        w(f"for r in range({sh.BM}):")
        with w.block():
            w("if qok[r] != 0:")
            with w.block():
                if norm.kind == "softmax" and not two_pass:
                    w("inv = T.Select(sm[r] > T.float32(0), T.float32(1) / sm[r], T.float32(0))")
                else:
                    w("inv = T.float32(1)")
                w(f"for j in T.vectorized({sh.DV}):")
                with w.block():
                    w("o[b, h, qtok[r], j] = acc[r, j] * inv")
                w("lse[b, h, qtok[r]] = row_lse(mx[r], sm[r], lz[r])")
        w.depth -= 1
    return close_kernel(w)


def kernel_params(sh, tables, extra=()):
    """The generated kernel's parameters: q, k, v, o, lse, the head list, the tile tables,
    `extra` (the routing table) and the tensors the expressions read."""
    st = [f", strides={tuple(x)}" for x in sh.ST] if sh.ST else [""] * 4
    params = [f"q: T.Buffer(({sh.B}, {sh.H}, {sh.N}, {sh.D}), \"float32\"{st[0]})",
              f"k: T.Buffer(({sh.B}, {sh.H}, {sh.M}, {sh.D}), \"float32\"{st[1]})",
              f"v: T.Buffer(({sh.B}, {sh.H}, {sh.M}, {sh.DV}), \"float32\"{st[2]})",
              f"o: T.Buffer(({sh.B}, {sh.H}, {sh.N}, {sh.DV}), \"float32\"{st[3]})",
              f"lse: T.Buffer(({sh.B}, {sh.H}, {sh.N}), \"float32\")",
              f"heads: T.Buffer(({sh.HG},), \"int32\")",
              f"tcnt: T.Buffer(({sh.table_rows}, {sh.NQ}), \"int32\")",
              f"tlist: T.Buffer(({sh.table_rows}, {sh.NQ}, {sh.KMAX}), \"int32\")",
              f"tcls: T.Buffer(({sh.table_rows}, {sh.NQ}, {sh.KMAX}), \"int32\")",
              f"acls: T.Buffer(({sh.table_rows}, {sh.NQA}, {sh.NKA}), \"int32\")"]
    return params + list(extra) + [f"{param(n)}: T.Buffer({tuple(s)}, \"{dt}\")" for n, (s, _, dt) in tables.items()]


def open_kernel(sh, tables, what, extra=()):
    """A writer holding the generated module's header, positioned in the body of main()."""
    w = SourceWriter()
    w(f"# generated by attncc from {what}; do not edit")
    w("from tvm.script import tirx as T")
    w("from attncc.codegen.tvm.intrin import NEG, NEG_HALF, fexp, fexp_any, flog, flog_any, ftanh, "
      "lanes_max, lanes_sum, live, row_lse")
    w("")
    w("")
    w("def build():")
    w.depth += 1
    w("@T.prim_func")
    w("def main(" + ", ".join(kernel_params(sh, tables, extra)) + "):")
    w.depth += 1
    w('T.func_attr({"global_symbol": "main", "tirx.noalias": True})')
    return w


def close_kernel(w):
    w.depth = 1
    w("return main")
    return "\n".join(w.lines) + "\n"


def key_tables(w, sh, P, gat):
    """ktk / kokp [G, NK, BNP]: the key map evaluated per key tile (token, validity)."""
    w(f"ktk = T.alloc_buffer(({sh.G}, {sh.NK}, {sh.BNP}), \"int32\")")
    w(f"kokp = T.alloc_buffer(({sh.G}, {sh.NK}, {sh.BNP}), \"float32\")")
    w(f"for gk in T.parallel({sh.G * sh.NK}):")
    with w.block():
        w(f"g = gk // {sh.NK}")
        w(f"kb = gk % {sh.NK}")
        w(f"for c in range({sh.BNP}):")
        with w.block():
            w(f"u = kb * {sh.BN} + c")
            w(f"kv = T.And(T.And(c < {sh.BN}, u < {sh.LK}), {P(gat.k_valid, 'bool')})")
            w("kokp[g, kb, c] = T.Select(kv, T.float32(1), T.float32(0))")
            w(f"ktk[g, kb, c] = T.Select(kv, {P(gat.k_token, 'int')}, 0)")


def key_tile_tasks(w, sh):
    """A parallel loop over (batch, head of the group, group, key tile); the caller writes
    its body."""
    w(f"for task in T.parallel({sh.B * sh.HG * sh.G * sh.NK}):")
    with w.block():
        w(f"b = task // {sh.HG * sh.G * sh.NK}")
        w(f"hh = task // {sh.G * sh.NK} % {sh.HG}")
        w(f"g = task // {sh.NK} % {sh.G}")
        w(f"kb = task % {sh.NK}")
        w("h = heads[hh]")


def _pack(w, sh, P, gat, inline=False):
    """Once per call: the key map evaluated per key tile (tokens and validity), then K packed
    transposed per (batch, head, group, key tile) (pack_tile), so every query tile reads a
    contiguous [d, bn] tile (V rows are read in place through the key map). inline: the
    tasks pack their key tiles themselves."""
    key_tables(w, sh, P, gat)
    if inline:
        return
    w(f"kpk = T.alloc_buffer(({sh.B}, {sh.HG}, {sh.G}, {sh.NK}, {sh.D}, {sh.BNP}), \"float32\")")
    key_tile_tasks(w, sh)
    with w.block():
        pack_tile(w, sh, "kpk[b, hh, g, kb, ", "g, kb")


def _pair_tiles(w, sh, P, gat, pairs):
    """Once per call: each group-invariant table read of the score (Hoister.pairs) evaluated
    on group 0's tokens into a [heads of the group, BMP, BNP] tile."""
    if not pairs:
        return
    q0, k0 = gat.q_token.subs(S.g, 0), gat.k_token.subs(S.g, 0)
    pr = TIRPrinter({**P.names, S.t: ("r", "int"), S.u: ("c", "int")}, P.tables)
    for e, sym in pairs.items():
        w(f"{sym} = T.alloc_buffer(({sh.HG}, {sh.BMP}, {sh.BNP}), \"float32\")")
        w(f"for hh in T.parallel({sh.HG}):")
        with w.block():
            w("h = heads[hh]")
            w(f"for r in range({sh.BMP}):")
            with w.block():
                w(f"for c in range({sh.BNP}):")
                with w.block():
                    w(f"{sym}[hh, r, c] = {pr(e.subs({S.i: q0, S.j: k0}), 'float')}")


def _post_chain(prog):
    """The post modifiers composed in order, as one expression of the weight."""
    chain = S.weight
    for post in prog.post:
        chain = post.xreplace({S.weight: chain})
    return chain


def _key_loop(w, prog, grp, sh, Pq, pair_ok, pass_, score, post, hoisted, skip, stats, ks, inline=False):
    """One sweep over the task's key tiles. pass_ 0: the only pass; 1: statistics only;
    2: weights from the final statistics, post modifiers, PV. inline: each key tile is packed
    here, into the task's kpl."""
    norm, L = prog.norm, sh.SL

    def at_col(expr, col, wexpr=None):
        """`expr` as text at score column `col` (the weight `wexpr`, the key token and the
        column tables inlined: TVM miscompiles let-bindings inside vectorized loops)."""
        names = {**Pq.names, S.j: (f"ktk[{ks}, {col}]", "int"), S.score: (f"s[r, {col}]", "float"),
                 S.weight: (wexpr or f"s[r, {col}]", "float")}
        names.update({sym: (f"{sym}[{col}]", k) for buf, sym, _, k in hoisted if buf == "hcol"})
        names.update({sym: (text.replace(", c]", f", {col}]"), k) for sym, (text, k) in Pq.names.items()
                      if text.endswith("[hh, r, c]")})
        return TIRPrinter(names, Pq.tables)(expr, "float")

    def weight(wexpr, col):
        return at_col(post, col, wexpr)

    col = f"cc * {L} + i"
    atoms = ks == "g, kb" and skips_atoms(sh, grp)      # routed tiles are whole regions: no atoms
    w(f"for kk in range(tcnt[{sh.tg}, qi]):")
    with w.block():
        w(f"kb = tlist[{sh.tg}, qi, kk]")
        w(f"cls = tcls[{sh.tg}, qi, kk]")
        if ks != "g, kb":
            w("rsel = route_idx[b, g, kb]")
        ktile = None
        if inline:
            pack_tile(w, sh, "kpl[", ks)
            ktile = "kpl["
        cols = [(sym, text) for buf, sym, text, _ in hoisted if buf == "hcol"]
        if cols:
            w(f"for c in range({sh.BNP}):")
            with w.block():
                w(f"u = kb * {sh.BN} + c")
                for sym, text in cols:
                    w(f"{sym}[c] = {text}")
        # plain sigmoid weights of a FULL tile come straight out of the QK^T register tile (no
        # mask, no statistics: the weights need no second pass over the scores)
        fused = (norm.kind == "sigmoid" and not stats and pass_ == 0 and prog.score == S.score
                 and post == S.weight and not skip)
        if fused:
            w(f"if cls == {FULL}:")
            with w.block():
                cell = f"s[rg * {sh.MR} + ri, cg * {sh.VW} + ci]"
                qk(w, sh, skip, kslot=ks, ktile=ktile,
                   epilogue=f"{cell} = T.Select(cg * {sh.VW} + ci < T.min({sh.BN}, {sh.LK} - kb * {sh.BN}), "
                            f"{_sigmoid(norm, cell)}, T.float32(0))")
            w("else:")
            w.depth += 1
        qk(w, sh, skip, atoms=atoms, kslot=ks, ktile=ktile)
        # score modifiers, SL lanes at a time (their tanh, exp and log print to intrin.py's
        # vectorizable forms), then the mask (partial tiles evaluate the residual)
        if prog.score != S.score:
            w(f"for r in range({sh.BMP}):")
            with w.block():
                w(f"for cc in range({sh.BNP // L}):")
                with w.block():
                    w(f"for i in T.vectorized({L}):")
                    with w.block():
                        w(f"s[r, {col}] = {at_col(score, col)}")
        mask(w, sh, pair_ok, skip, ks)
        # normalizer, row by row (SL lanes)
        w(f"for r in range({0 if 'softmax' in skip else sh.BMP}):")
        with w.block():
            if pass_ == 2:                      # final statistics known: exact weights
                w(f"for cc in range({sh.BNP // L}):")
                with w.block():
                    w(f"for i in T.vectorized({L}):")
                    with w.block():
                        sc = f"s[r, {col}]"
                        wtext = weight(f"(fexp({sc} - mx[r]) / sm[r])", col)
                        w(f"{sc} = live({sc}, {wtext})")
            elif norm.kind == "sigmoid" and not stats:     # weights only: no running max or sum
                sc = f"s[r, {col}]"
                sig = _sigmoid(norm, sc)
                w(f"for cc in range({sh.BNP // L}):")
                with w.block():
                    w(f"for i in T.vectorized({L}):")
                    with w.block():
                        w(f"{sc} = live({sc}, {weight(sig, col)})")
            else:
                w(f"for i in T.vectorized({L}):")
                with w.block():
                    w("lanes[i] = s[r, i]")
                w(f"for cc in range(1, {sh.BNP // L}):")
                with w.block():
                    w(f"for i in T.vectorized({L}):")
                    with w.block():
                        w(f"lanes[i] = T.max(lanes[i], s[r, cc * {L} + i])")
                w(f"mnew = T.max(mx[r], lanes_max(lanes, {L}))")
                w(f"for i in T.vectorized({L}):")
                with w.block():
                    w("lanes2[i] = T.float32(0)")
                w(f"for cc in range({sh.BNP // L}):")
                with w.block():
                    w(f"for i in T.vectorized({L}):")
                    with w.block():
                        sc = f"s[r, cc * {L} + i]"
                        p = f"live({sc}, fexp({sc} - mnew))"
                        if norm.kind == "softmax" and pass_ == 0:
                            w(f"{sc} = {p}")
                            w(f"lanes2[i] = lanes2[i] + {sc}")
                        else:
                            w(f"lanes2[i] = lanes2[i] + {p}")
                        if norm.kind == "sigmoid":
                            sig = _sigmoid(norm, sc)
                            w(f"{sc} = live({sc}, {weight(sig, col)})")
                # one key tile per query tile: nothing to rescale (N=50 1.03x, Swin 1.01-1.03x)
                if sh.KMAX == 1:
                    w(f"sm[r] = lanes_sum(lanes2, {L})")
                else:
                    w("alpha = fexp(mx[r] - mnew)")
                    w(f"sm[r] = sm[r] * alpha + lanes_sum(lanes2, {L})")
                w("mx[r] = mnew")
                if norm.kind == "softmax" and pass_ == 0 and sh.KMAX > 1:
                    w(f"for j in T.vectorized({sh.DVP}):")
                    with w.block():
                        w("acc[r, j] = acc[r, j] * alpha")
        if fused:
            w.depth -= 1
        if pass_ == 1:
            return
        pv(w, sh, skip, atoms=atoms, kslot=ks)


def _sigmoid(norm, x):
    return f"(T.float32(1) / (T.float32(1) + fexp(T.float32({-norm.bias!r}) - {x})))"
