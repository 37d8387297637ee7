"""Evaluate IR expressions on arrays (numpy at compile time, torch in the reference backend).

`ops` adapts the array library (see NUMPY below; the reference backend brings a torch one).
Integer arithmetic stays exact: ``floor(p / q)`` is evaluated as a floor division of integers.
Tables (captured tensors, constants, runtime tables) are indexed with bounds checks on the
entries where `valid` is true; elsewhere indices are clamped (those pairs are masked anyway).
"""
from __future__ import annotations

import numpy as np
import sympy

from . import symbols as S


class EvalError(ValueError):
    """An expression could not be evaluated on the given inputs (a user-facing message)."""


class NumpyOps:
    name = "numpy"

    def __init__(self, float_dtype=np.float64):
        self.float_dtype = float_dtype

    asarray = staticmethod(np.asarray)
    where = staticmethod(np.where)
    floor_divide = staticmethod(np.floor_divide)
    remainder = staticmethod(np.remainder)
    logical_and = staticmethod(np.logical_and)
    logical_or = staticmethod(np.logical_or)
    logical_not = staticmethod(np.logical_not)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    abs = staticmethod(np.abs)
    floor = staticmethod(np.floor)
    tanh = staticmethod(np.tanh)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    sqrt = staticmethod(np.sqrt)
    clip = staticmethod(np.clip)
    any = staticmethod(np.any)

    def shape(self, x):
        return np.shape(x)

    def is_array(self, x):
        return isinstance(x, np.ndarray)

    def is_int(self, x):
        return np.issubdtype(x.dtype, np.integer)

    def pow(self, a, e):
        if not self.is_array(a) and not isinstance(a, np.generic):
            a = float(a)
        return np.power(a, e)


NUMPY = NumpyOps()

_SCALARS = (int, float, bool, np.integer, np.floating, np.bool_)


def _is_scalar(x):
    return isinstance(x, _SCALARS)


class Evaluator:
    def __init__(self, env, ops, valid=None):
        self.env = env          # Symbol -> array/scalar, table name -> array
        self.ops = ops
        self.valid = valid
        self.memo = {}

    def __call__(self, e):
        got = self.memo.get(e)
        if got is None:
            got = self._eval(e)
            self.memo[e] = got
        return got

    def _eval(self, e):
        ops = self.ops
        if isinstance(e, sympy.Symbol):
            if e not in self.env:
                raise EvalError(f"no value for symbol {e} while evaluating an attncc expression")
            return self.env[e]
        if e is sympy.true or e is sympy.false:
            return bool(e)
        if isinstance(e, sympy.Integer):
            return int(e)
        if isinstance(e, (sympy.Rational, sympy.Float)) or e.is_Number or isinstance(e, sympy.NumberSymbol):
            return float(e)
        if isinstance(e, sympy.Add):
            acc = self(e.args[0])
            for a in e.args[1:]:
                acc = acc + self(a)
            return acc
        if isinstance(e, sympy.Mul):
            acc = self(e.args[0])
            for a in e.args[1:]:
                acc = acc * self(a)
            return acc
        if isinstance(e, sympy.Pow):
            base, ex = e.args
            if ex == -1:
                return 1.0 / self(base)
            if ex == sympy.Rational(1, 2):
                return self._fn(ops.sqrt, self(base))
            return ops.pow(self(base), self(ex))
        if isinstance(e, S.FloorDiv):
            a, q = self(e.args[0]), self(e.args[1])
            if _is_scalar(a) and _is_scalar(q):
                return int(a) // int(q)
            return ops.floor_divide(a, q)
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            if den.is_Integer:
                n = self(num)
                if isinstance(n, (int, np.integer)):
                    return int(n) // int(den)
                if ops.is_array(n) and ops.is_int(n):
                    return ops.floor_divide(n, int(den))
            x = self(e.args[0])
            return int(np.floor(x)) if _is_scalar(x) else ops.floor(x)
        if isinstance(e, sympy.Mod):
            a, q = self(e.args[0]), self(e.args[1])
            return a % q if _is_scalar(a) and _is_scalar(q) else ops.remainder(a, q)
        if isinstance(e, sympy.Abs):
            x = self(e.args[0])
            return abs(x) if _is_scalar(x) else ops.abs(x)
        if isinstance(e, (sympy.Min, sympy.Max)):
            f = ops.minimum if isinstance(e, sympy.Min) else ops.maximum
            py = min if isinstance(e, sympy.Min) else max
            acc = self(e.args[0])
            for a in e.args[1:]:
                x = self(a)
                if _is_scalar(acc) and _is_scalar(x):
                    acc = py(acc, x)
                else:
                    acc = f(self._arr(acc, x), self._arr(x, acc))
            return acc
        if isinstance(e, sympy.tanh):
            return self._fn(ops.tanh, self(e.args[0]))
        if isinstance(e, sympy.exp):
            return self._fn(ops.exp, self(e.args[0]))
        if isinstance(e, sympy.log):
            return self._fn(ops.log, self(e.args[0]))
        if isinstance(e, sympy.Piecewise):
            acc = None
            for val, cond in reversed(e.args):
                v = self(val)
                if acc is None:
                    acc = v
                    continue
                c = self(cond)
                if _is_scalar(c):
                    acc = v if c else acc
                else:
                    acc = ops.where(c, self._arr(v, acc), self._arr(acc, v))
            return acc
        if isinstance(e, sympy.core.relational.Relational):
            a, c = self(e.lhs), self(e.rhs)
            return {"==": lambda: a == c, "!=": lambda: a != c, "<": lambda: a < c, "<=": lambda: a <= c,
                    ">": lambda: a > c, ">=": lambda: a >= c}[e.rel_op]()
        if isinstance(e, (sympy.And, sympy.Or)):
            f = ops.logical_and if isinstance(e, sympy.And) else ops.logical_or
            acc = None
            for a in e.args:
                x = self(a)
                if _is_scalar(x):
                    x = bool(x)
                    if isinstance(e, sympy.And) and not x:
                        return False
                    if isinstance(e, sympy.Or) and x:
                        return True
                    continue
                acc = x if acc is None else f(acc, x)
            return (isinstance(e, sympy.And)) if acc is None else acc
        if isinstance(e, sympy.Not):
            x = self(e.args[0])
            return (not x) if _is_scalar(x) else ops.logical_not(x)
        if isinstance(e, sympy.Indexed):
            return self._index(e)
        raise EvalError(f"attncc cannot evaluate the operation {type(e).__name__} in {e}")

    def _fn(self, f, x):
        return f(self.ops.asarray(x)) if not self.ops.is_array(x) else f(x)

    def _arr(self, x, like):
        return x if self.ops.is_array(x) else self.ops.asarray(x)

    def _index(self, e):
        name = str(e.base.label)
        if name not in self.env:
            raise EvalError(f"tensor {name!r} is needed by the expression {e} but was not passed; "
                            f"pass it by keyword: kern(q, k, v, {name}=...)")
        tab = self.env[name]
        shape = tuple(self.ops.shape(tab))
        if len(shape) != len(e.indices):
            raise EvalError(f"tensor {name!r} has {len(shape)} dims {shape} but the expression indexes it "
                            f"with {len(e.indices)}: {e}")
        idx = []
        for d, ix in enumerate(e.indices):
            x = self(ix)
            size = shape[d]
            if _is_scalar(x):
                if not 0 <= int(x) < size:
                    raise EvalError(f"tensor {name!r} is indexed out of range: index {int(x)} on dim {d} of "
                                    f"size {size} (in {e})")
                idx.append(int(x))
                continue
            if not self.ops.is_int(x):
                raise EvalError(f"tensor {name!r} is indexed by non-integer values on dim {d} (in {e}); "
                                "use // for integer division")
            bad = (x < 0) | (x >= size)
            if self.valid is not None:
                bad = bad & self.valid
            if bool(self.ops.any(bad)):
                lo, hi = int(x.min()), int(x.max())
                raise EvalError(f"tensor {name!r} is indexed out of range on dim {d} (size {size}): indices "
                                f"span [{lo}, {hi}] for pairs that are not masked (in {e}); give it the "
                                "shape the expression needs")
            idx.append(self.ops.clip(x, 0, size - 1))
        return tab[tuple(idx)]


def evaluate(expr, env, ops=NUMPY, valid=None):
    """Evaluate a sympy expression; symbols and tables come from `env`."""
    return Evaluator(env, ops, valid)(sympy.sympify(expr))
