"""Loop-invariant code motion for per-pair expressions: subexpressions that depend only on
the query (the row) or only on the key (the column) are computed once per row or once per
column instead of once per pair. For Swin's relative position bias, the table index
(ri - rj + wr - 1) * (2 wc - 1) + (ci - cj + wc - 1) becomes row[r] + col[c]; for the
shifted-window mask, each side's region becomes a per-row and a per-column value."""
import numpy as np
import sympy

from ..ir import symbols as S
from ..ir.evaluate import evaluate


def _deps(e, row, col):
    syms = e.free_symbols
    for x in e.atoms(sympy.Indexed):
        syms |= set().union(*(ix.free_symbols for ix in x.indices))
    return bool(syms & row), bool(syms & col)


def _trivial(e):
    return e.is_Atom or (isinstance(e, sympy.Indexed) and all(i.is_Atom for i in e.indices))


class Hoister:
    """Collects hoisted subexpressions across several expressions (shared by name). `pair`
    (optional): a predicate on table reads that depend on both the row and the column; those
    it accepts are hoisted whole into `pairs` (the backend computes them once per call, e.g.
    a relative position bias that is the same in every window)."""

    def __init__(self, row, col, blocked=(), pair=None):
        self.row, self.col = set(row), set(col)
        self.blocked = set(blocked)          # symbols that pin a node to the pair (score, weight)
        self.pair, self._pair_ok = pair, {}
        self.rows, self.cols, self.pairs = {}, {}, {}        # expr -> symbol

    def _name(self, table, prefix, e):
        if e not in table:
            # no assumption but integer: sympy drops a Symbol declared integer=False from And()
            kw = {"integer": True} if e.is_integer else {}
            table[e] = sympy.Symbol(f"{prefix}{len(table)}", **kw)
        return table[e]

    def __call__(self, e):
        e = sympy.sympify(e)
        if self._whole_pair(e):
            return self._name(self.pairs, "hpair", e)
        if e.free_symbols & self.blocked or _trivial(e):
            return self._args(e)
        r, c = _deps(e, self.row, self.col)
        if r and not c:
            return self._name(self.rows, "hrow", e)
        if c and not r:
            return self._name(self.cols, "hcol", e)
        if not r and not c:
            return e
        if isinstance(e, (sympy.Add, sympy.Mul)):       # split mixed sums and products by side
            sides = {"row": [], "col": [], "rest": []}
            for a in e.args:
                ar, ac_ = _deps(a, self.row, self.col)
                key = "row" if ar and not ac_ and not (a.free_symbols & self.blocked) else \
                    "col" if ac_ and not ar and not (a.free_symbols & self.blocked) else "rest"
                sides[key].append(a)
            parts = []
            for key, table, prefix in (("row", self.rows, "hrow"), ("col", self.cols, "hcol")):
                if len(sides[key]) == 1 and _trivial(sides[key][0]):
                    parts.append(sides[key][0])
                elif sides[key]:
                    parts.append(self._name(table, prefix, e.func(*sides[key])))
            parts += [self(a) for a in sides["rest"]]
            with sympy.evaluate(False):
                return e.func(*parts)
        return self._args(e)

    def _whole_pair(self, e):
        if self.pair is None or not isinstance(e, sympy.Indexed) or e.free_symbols & self.blocked:
            return False
        if e not in self._pair_ok:
            self._pair_ok[e] = all(_deps(e, self.row, self.col)) and self.pair(e)
        return self._pair_ok[e]

    def _args(self, e):
        if not e.args:
            return e
        if isinstance(e, sympy.Indexed):
            return e.base[tuple(self(i) for i in e.indices)]
        new = [self(a) for a in e.args]
        with sympy.evaluate(False):
            return e.func(*new)


def group_invariant(e, gat, heads, max_cells=1 << 22):
    """Whether the table read `e`, whose indices depend on the query and key tokens (and the
    head) only, reads the same entry for (group g, local query t, local key u) as for (group
    0, t, u), for every group and head: then one [heads, Lq, Lk] tile of it serves every
    group and batch. Decided by evaluating the indices through the gather's maps (groups
    `max_cells` cells at a time)."""
    idx_syms = set().union(*(ix.free_symbols for ix in e.indices))
    if gat.per_query or not idx_syms <= {S.i, S.j, S.h} or any(ix.atoms(sympy.Indexed) for ix in e.indices):
        return False
    t, u = np.arange(gat.Lq)[None, :, None], np.arange(gat.Lk)[None, None, :]
    step = max(1, max_cells // (gat.Lq * gat.Lk))
    first = {}
    for g0 in range(0, gat.G, step):
        g = np.arange(g0, min(gat.G, g0 + step))[:, None, None]
        env = {S.g: g, S.t: t, S.u: u}
        i, j = evaluate(gat.q_token, env), evaluate(gat.k_token, env)
        for h in heads:
            for ix in e.indices:
                v = np.broadcast_to(evaluate(ix, {S.i: i, S.j: j, S.h: h}), (len(g), gat.Lq, gat.Lk))
                ref = first.setdefault((h, ix), v[:1])
                if not (v == ref).all():
                    return False
    return True

