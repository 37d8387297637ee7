"""Interval analysis of integer IR expressions: the range an index expression can take when
its symbols range over boxes (a head group's (b, h, g, t, u) domain, say).

``bound(expr, ranges)`` returns inclusive integer bounds (lo, hi) that hold for every point of
the box, or None where the analysis cannot say (an operation it does not know, a table whose
values have no given range). The bounds are sound, not always tight: correlations between
subexpressions are lost (``x - x`` bounds to [-w, w]), so a caller that finds a bound too wide
for its purpose evaluates the expression exactly instead.
"""
import math

import sympy

from . import symbols as S


def _floor(x):
    return math.floor(x) if x is not None else None


class _Bounder:
    def __init__(self, ranges):
        self.ranges = ranges        # Symbol -> (lo, hi); table name -> (lo, hi) of its values
        self.memo = {}

    def __call__(self, e):
        if e not in self.memo:
            self.memo[e] = self._bound(e)
        return self.memo[e]

    def _all(self, args):
        got = [self(a) for a in args]
        return None if any(x is None for x in got) else got

    def _bound(self, e):
        if isinstance(e, sympy.Symbol):
            return self.ranges.get(e)
        if e.is_Integer:
            return int(e), int(e)
        if e.is_Rational or e.is_Float:
            return float(e), float(e)
        if isinstance(e, sympy.Indexed):
            return self.ranges.get(str(e.base.label))
        if isinstance(e, sympy.Add):
            got = self._all(e.args)
            return None if got is None else (sum(lo for lo, _ in got), sum(hi for _, hi in got))
        if isinstance(e, sympy.Mul):
            got = self._all(e.args)
            if got is None:
                return None
            lo, hi = got[0]
            for a, c in got[1:]:
                corners = (lo * a, lo * c, hi * a, hi * c)
                lo, hi = min(corners), max(corners)
            return lo, hi
        if isinstance(e, S.FloorDiv) or (isinstance(e, sympy.floor)):
            if isinstance(e, sympy.floor):
                x = self(e.args[0])
                return None if x is None else (_floor(x[0]), _floor(x[1]))
            x, q = self(e.args[0]), e.args[1]
            if x is None or not (q.is_Integer and q > 0):
                return None
            return x[0] // int(q), x[1] // int(q)
        if isinstance(e, sympy.Mod):
            x, q = self(e.args[0]), e.args[1]
            if not (q.is_Integer and q > 0):
                return None
            q = int(q)
            if x is not None and x[0] == int(x[0]) and x[1] - x[0] < q and x[0] % q <= x[1] % q:
                return int(x[0]) % q, int(x[1]) % q
            return 0, q - 1
        if isinstance(e, sympy.Abs):
            x = self(e.args[0])
            if x is None:
                return None
            lo, hi = x
            return (lo, hi) if lo >= 0 else (-hi, -lo) if hi <= 0 else (0, max(-lo, hi))
        if isinstance(e, (sympy.Min, sympy.Max)):
            got = self._all(e.args)
            if got is None:
                return None
            f = min if isinstance(e, sympy.Min) else max
            return f(lo for lo, _ in got), f(hi for _, hi in got)
        if isinstance(e, sympy.Piecewise):
            got = self._all([v for v, _ in e.args])
            return None if got is None else (min(lo for lo, _ in got), max(hi for _, hi in got))
        if isinstance(e, sympy.Pow) and e.args[1].is_Integer and int(e.args[1]) >= 0:
            x = self(e.args[0])
            n = int(e.args[1])
            if x is None:
                return None
            vals = (x[0] ** n, x[1] ** n)
            lo = 0 if n % 2 == 0 and x[0] <= 0 <= x[1] else min(vals)
            return lo, max(vals)
        return None


def bound(expr, ranges):
    """Inclusive (lo, hi) of `expr` over the box `ranges` (Symbol or table name -> (lo, hi)),
    or None when it cannot be bounded."""
    got = _Bounder(ranges)(sympy.sympify(expr))
    if got is None:
        return None
    return _floor(got[0]), -_floor(-got[1])
