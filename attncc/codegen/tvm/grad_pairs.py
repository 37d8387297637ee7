"""The per-tile pieces of the generated backward kernels (backward.py): the score, post
modifiers and their derivatives as TIR text at a score column (Exprs), the loop nest over a
tile's pairs, the query tile's rows, the recomputed weights and dS, and the captured tensors'
gradient sums."""
import contextlib

import sympy

from ...ir import symbols as S
from ...ir.derivative import derivative, score_derivative, table_partials, weight_derivative
from ..backward import grad_param
from ..hoist import Hoister, group_invariant
from .items import query_row
from .microkernel import mask, qk
from .printer import TIRPrinter
from .source import _post_chain, _sigmoid


class Exprs:
    """The score modifier, the post modifiers, their derivatives, the residual mask and the
    differentiated table reads as TIR text at a score column."""

    def __init__(self, prog, grp, sh, tables, kslot="g, kb"):
        self.prog, self.sh, self.kslot = prog, sh, kslot
        self.tables = {n: (s, k) for n, (s, k, _) in tables.items()}
        self.base = {S.g: ("g", "int"), S.b: ("b", "int"), S.h: ("h", "int")}
        self.mod = prog.score != S.score
        # one query and one key tile per group: a float table read that is the same in every
        # group (Swin's relative position bias) becomes a per-call [heads, BMP, BNP] tile, as in
        # the forward (no index arithmetic per pair), and its gradient is summed per tile
        self.pairs, self.score = {}, prog.score
        if self.mod and kslot == "g, kb" and sh.NQ == 1 and sh.NK == 1:
            pair = lambda e: self.tables.get(str(e.base), ((), ""))[1] == "float" and \
                group_invariant(e, grp.gather, grp.heads)
            hoist = Hoister(row={S.i, S.t}, col={S.j, S.u}, blocked={S.score, S.weight}, pair=pair)
            hoisted = hoist(prog.score)
            self.score = hoisted.xreplace({sym: e for e, sym in {**hoist.rows, **hoist.cols}.items()})
            self.pairs = dict(hoist.pairs)
        self.deriv = score_derivative(self.score) if self.mod else 1
        self.post = _post_chain(prog) if prog.post else None
        self.dpost = weight_derivative(self.post) if self.post is not None else None
        self.reads, self.post_reads = [], []    # (read, coefficient, its per-pair buffer or None)
        self.pair_reads = []
        P = TIRPrinter({**self.base, S.t: ("t", "int"), S.u: ("u", "int"), S.i: ("qtok[r]", "int"),
                        S.j: (f"ktk[{kslot}, c]", "int")}, self.tables)
        self.pair_ok = P(grp.residual, "bool") if grp.residual is not None else "T.bool(True)"
        self.P = TIRPrinter({**self.base, S.t: ("t", "int"), S.u: ("u", "int")}, self.tables)

    def with_grads(self, names):
        """Differentiate the score's and the post modifiers' reads of the tensors `names` too
        (a coefficient that varies per pair gets a buffer, filled while the raw score, or the
        weight, is at hand)."""
        def reads(expr, prefix):
            if expr is None:
                return []
            parts = table_partials(expr, set(names))
            return [(x, c, None if not c.free_symbols - {S.b, S.h, S.g} and not c.atoms(sympy.Indexed)
                     else f"{prefix}{n}") for n, (x, c) in enumerate(parts.items())]
        self.reads, self.post_reads = reads(self.score, "tc"), reads(self.post, "pc")
        # (read, its tile's symbol, coefficient) of the hoisted reads that get gradients
        self.pair_reads = []
        for n, (x, sym) in enumerate(self.pairs.items()):
            if str(x.base.label) in names:
                coef = derivative(self.score, sym)
                self.pair_reads.append((x, sym, coef, None if coef.is_number else f"hc{n}"))
        return self

    def _names(self, col, weight=None):
        sh = self.sh
        names = {**self.base, S.t: (f"(qi * {sh.BM} + r)", "int"), S.u: (f"(kb * {sh.BN} + {col})", "int"),
                 S.i: ("qtok[r]", "int"), S.j: (f"ktk[{self.kslot}, {col}]", "int"),
                 S.score: (f"s[r, {col}]", "float")}
        if weight is not None:
            names[S.weight] = (weight, "float")
        names.update({sym: (f"{sym}[hh, r, {col}]", "float") for sym in self.pairs.values()})
        return names

    def at(self, expr, col, weight=None):
        return TIRPrinter(self._names(col, weight), self.tables)(expr, "float")

    def index(self, read, col):
        """The indices of a table read at column `col`, clamped as the printer's reads are."""
        P = TIRPrinter(self._names(col), self.tables)
        shape = self.tables[str(read.base.label)][0]
        return ", ".join(f"T.max(T.min({P(ix, 'int')}, {n - 1}), 0)" for ix, n in zip(read.indices, shape))

    def buffers(self):
        """The per-pair scratch tiles these expressions need besides s and dp."""
        names = ["fd"] if self.mod and self.deriv != 1 else []
        names += ["wp", "fdw"] if self.post is not None else []
        return names + [buf for *_, buf in self.reads + self.post_reads + self.pair_reads if buf]


@contextlib.contextmanager
def pairs(w, sh):
    """The loop nest over a tile's pairs, SL lanes at a time (rows r, lanes i): the body's
    column is `col`."""
    L = sh.SL
    w(f"for r in range({sh.BMP}):")
    with w.block():
        w(f"for cc in range({sh.BNP // L}):")
        with w.block():
            w(f"for i in T.vectorized({L}):")
            with w.block():
                yield f"cc * {L} + i"


def tile_rows(w, sh, prog, P, gat, zero_invalid):
    """The query tile's rows: token, validity, q * scale, dO, lse and Dr (zeros for rows that
    are no query when `zero_invalid`: their pairs then add nothing to dK and dV)."""
    w(f"for r in range({sh.BMP}):")
    with w.block():
        query_row(w, sh, P, gat)
        z = "qok[r] != 0"
        sel = (lambda x: f"T.Select({z}, {x}, T.float32(0))") if zero_invalid else (lambda x: x)
        w(f"for j in T.vectorized({sh.D}):")
        with w.block():
            w(f"qs[r, j] = {sel(f'q[b, h, qtok[r], j] * T.float32({prog.scale!r})')}")
        w(f"for j in T.vectorized({sh.DV}):")
        with w.block():
            w(f"dos[r, j] = {sel('do[b, h, qtok[r], j]')}")
        w(f"lr[r] = {sel('lse[b, h, qtok[r]]')}")
        w(f"drr[r] = {sel('dr[b, h, qtok[r]]')}")


def scores(w, sh, E, kslot, ktile, vtile):
    """s: the pair's weight p (0 where masked or no query); dp: dO V^T; fd: f'(s) when the
    score has modifiers."""
    qk(w, sh, kslot=kslot, ktile=ktile)
    if E.mod:
        with pairs(w, sh) as col:
            if E.deriv != 1:
                w(f"fd[r, {col}] = {E.at(E.deriv, col)}")
            for *_, coef, buf in E.reads + E.pair_reads:
                if buf:
                    w(f"{buf}[r, {col}] = {E.at(coef, col)}")
            w(f"s[r, {col}] = {E.at(E.score, col)}")
    mask(w, sh, E.pair_ok, (), kslot)
    qk(w, sh, kslot=kslot, ktile=vtile, a="dos", depth=sh.DV, out="dp")


def weights(w, sh, norm, E, lse_grad):
    """s (the masked score s') becomes the weight p, 0 where masked or no query; with post
    modifiers also wp = post(p) (what multiplies V), fdw = d post / d p and the post tables'
    coefficients; with a sigmoid's lse gradient, sl = exp(s' - lse)."""
    with pairs(w, sh) as col:
        sc = f"s[r, {col}]"
        p = f"fexp({sc} - lr[r])" if norm.kind == "softmax" else _sigmoid(norm, sc)
        keep = lambda x: f"T.Select(qok[r] != 0, live({sc}, {x}), T.float32(0))"
        if E.post is not None:
            w(f"wp[r, {col}] = {keep(E.at(E.post, col, p))}")
            w(f"fdw[r, {col}] = {keep(E.at(E.dpost, col, p))}")
            for _, coef, buf in E.post_reads:
                if buf:
                    w(f"{buf}[r, {col}] = {keep(E.at(coef, col, p))}")
        if norm.kind != "softmax" and lse_grad:
            w(f"sl[r, {col}] = {keep(f'fexp({sc} - lr[r])')}")
        w(f"{sc} = {keep(p)}")


def dscores(w, sh, norm, E, lse_grad, chain=True):
    """s (the weight p) becomes dS = dS' * f'(s) (dS' alone unless `chain`: chain_rule then).
    dL/dp is dp, or dp * fdw through post modifiers."""
    with pairs(w, sh) as col:
        sc = f"s[r, {col}]"
        dw = f"dp[r, {col}]" + (f" * fdw[r, {col}]" if E.post is not None else "")
        if norm.kind == "softmax":
            ds = f"{sc} * ({dw} - drr[r])"
        else:
            ds = f"{dw} * {sc} * (T.float32(1) - {sc})"
            if lse_grad:        # the lse's own gradient: its softmax weights times dlse (drr = -dlse)
                ds = f"{ds} - sl[r, {col}] * drr[r]"
        if chain and E.mod and E.deriv != 1:
            ds = f"({ds}) * fd[r, {col}]"
        w(f"{sc} = {ds}")


def row_sums(w, sh):
    """dracc[r] += sum over the tile of p * dL/dp (softmax through post modifiers: the
    row's D, which rowsum(dO * out) is not when out is made of post(p))."""
    w(f"for r in range({sh.BMP}):")
    with w.block():
        w(f"for i in T.vectorized({sh.SL}):")
        with w.block():
            w("lanes[i] = T.float32(0)")
        w(f"for cc in range({sh.BNP // sh.SL}):")
        with w.block():
            w(f"for i in T.vectorized({sh.SL}):")
            with w.block():
                c = f"cc * {sh.SL} + i"
                w(f"lanes[i] = lanes[i] + s[r, {c}] * dp[r, {c}] * fdw[r, {c}]")
        w(f"dracc[r] = dracc[r] + lanes_sum(lanes, {sh.SL})")


def chain_rule(w, sh, E):
    """s: dS' becomes dS = dS' * f'(s)."""
    if E.mod and E.deriv != 1:
        with pairs(w, sh) as col:
            w(f"s[r, {col}] = s[r, {col}] * fd[r, {col}]")


def table_grads(w, sh, E, reads, value):
    """Each differentiated read's gradient += value * its coefficient (value: dS' for the
    score's reads, dP = dL/d post(p) for the post modifiers'), pair by pair (scalar: lanes of
    a vector may read the same entry), into the task's slot, in float64 (a bias entry sums
    one term per pair of many rows: fp32 would lose digits the dense formula's pairwise sums
    keep)."""
    if not reads:
        return
    end = f"T.max(T.min({sh.BN}, {sh.LK} - kb * {sh.BN}), 0)"
    w(f"for r in range({sh.BM}):")
    with w.block():
        w("if qok[r] != 0:")
        with w.block():
            w(f"for c in range({end}):")
            with w.block():
                for read, coef, buf in reads:
                    cell = f"{grad_param(str(read.base.label))}[slot, {E.index(read, 'c')}]"
                    v = f"{value}[r, c]"
                    term = v if coef == 1 else (f"{v} * {buf}[r, c]" if buf else f"{v} * {E.at(coef, 'c')}")
                    w(f"{cell} = {cell} + T.Cast(\"float64\", {term})")


def hoisted_grads(w, sh, E):
    """The gradient of each hoisted [heads, tile] read (Swin's bias): dS' times its
    coefficient summed into the slot's float64 tile, vectorized (the caller adds the tile
    into the tensor's gradient through the read's index, once per call)."""
    if not E.pair_reads:
        return
    with pairs(w, sh) as col:
        for _, sym, coef, buf in E.pair_reads:
            cell = f"{pair_param(sym)}[slot, hh, r, {col}]"
            term = f"s[r, {col}] * {buf}[r, {col}]" if buf else f"s[r, {col}] * {E.at(coef, col)}"
            w(f"{cell} = {cell} + T.Cast(\"float64\", {term})")


def pair_param(sym):
    """The kernel parameter of a hoisted read's gradient tiles."""
    return f"grad_{sym}"


def pair_grads(prog, grp, sh, tables, grads):
    """[(tensor name, read)] of the hoisted reads whose gradients the dq kernel sums per tile,
    in the order of its parameters."""
    return [(str(x.base.label), x) for x, *_ in Exprs(prog, grp, sh, tables).with_grads(grads).pair_reads]


def scratch(w, sh, E, extra):
    for name, shp in (("qs", (sh.BMP, sh.D)), ("dos", (sh.BMP, sh.DV)), ("s", (sh.BMP, sh.BNP)),
                      ("dp", (sh.BMP, sh.BNP)), ("lr", (sh.BMP,)), ("drr", (sh.BMP,)),
                      ("lanes", (sh.SL,)), *((buf, (sh.BMP, sh.BNP)) for buf in E.buffers()), *extra):
        w(f"{name} = T.alloc_buffer({shp}, \"float32\", scope=\"local\")")
    for name in ("qtok", "qok"):
        w(f"{name} = T.alloc_buffer(({sh.BMP},), \"int32\", scope=\"local\")")
