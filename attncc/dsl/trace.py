"""Tracing user lambdas (``ac.mask``, ``ac.score_mod``) into sympy expressions.

The lambda is called once with symbolic stand-ins for its arguments. Arithmetic, comparisons,
``& | ~``, indexing of captured tensors and a small set of torch functions (through the
``__torch_function__`` protocol, so torch itself is never imported here) build a sympy
expression. Anything else (Python ``and``/``or``/``if`` on a symbolic value, ``float()``,
``math.*``, an unknown torch function) raises a TypeError that names the operation.
"""
import inspect

import sympy

from ..ir import symbols as S


class TraceError(TypeError):
    """A traced lambda used an operation attncc cannot express."""


def _unwrap(x):
    if isinstance(x, Sym):
        return x.expr
    if isinstance(x, Captured):
        raise TraceError(f"captured tensor {x.name!r} used without an index; write {x.name}[...]")
    if isinstance(x, bool):
        return sympy.true if x else sympy.false
    if isinstance(x, (int, float)):
        return sympy.sympify(x)
    if isinstance(x, sympy.Basic):
        return x
    raise TraceError(f"a traced expression cannot use a value of type {type(x).__name__} ({x!r}); "
                     "use Python numbers, the lambda's arguments and captured tensors")


def _is_bool(e):
    return S.is_boolean(e)


def _bool(e):
    if _is_bool(e):
        return e
    return sympy.Ne(e, 0)


def _num(e, op):
    if _is_bool(e):
        return sympy.Piecewise((1, e), (0, True))
    return e


def _floordiv(a, b):
    if b.is_Integer and b > 0 and a.is_integer:
        return S.fdiv(a, b)
    return sympy.floor(a / b)


def _integral(e):
    """False when an index expression is certainly not an integer (a fraction or a float
    outside floor()); None-valued sympy assumptions (a table read, say) are let through."""
    if e.is_integer is False:
        return False
    stripped = e.replace(sympy.floor, lambda *a: sympy.Integer(0)).replace(S.FloorDiv, lambda *a: sympy.Integer(0))
    return not any(isinstance(x, sympy.Float) or (x.is_Rational and not x.is_Integer)
                   for x in stripped.atoms(sympy.Number))


def _where(c, a, b):
    c, a, b = _bool(_unwrap(c)), _unwrap(a), _unwrap(b)
    if _is_bool(a) and _is_bool(b):
        return Sym(sympy.Or(sympy.And(c, a), sympy.And(sympy.Not(c), b)))
    return Sym(sympy.Piecewise((a, c), (b, True)))


def _clamp(x, min=None, max=None):
    e = _unwrap(x)
    if min is not None:
        e = sympy.Max(e, _unwrap(min))
    if max is not None:
        e = sympy.Min(e, _unwrap(max))
    return Sym(e)


# torch function name -> how to build it (only these are traceable)
_TORCH = {
    "tanh": lambda x: Sym(sympy.tanh(_unwrap(x))),
    "exp": lambda x: Sym(sympy.exp(_unwrap(x))),
    "log": lambda x: Sym(sympy.log(_unwrap(x))),
    "sqrt": lambda x: Sym(sympy.sqrt(_unwrap(x))),
    "sigmoid": lambda x: Sym(1 / (1 + sympy.exp(-_unwrap(x)))),
    "abs": lambda x: Sym(sympy.Abs(_unwrap(x))),
    "minimum": lambda a, b: Sym(sympy.Min(_unwrap(a), _unwrap(b))),
    "maximum": lambda a, b: Sym(sympy.Max(_unwrap(a), _unwrap(b))),
    "where": _where,
    "clamp": _clamp,
    "logical_and": lambda a, b: Sym(sympy.And(_bool(_unwrap(a)), _bool(_unwrap(b)))),
    "logical_or": lambda a, b: Sym(sympy.Or(_bool(_unwrap(a)), _bool(_unwrap(b)))),
    "logical_not": lambda a: Sym(sympy.Not(_bool(_unwrap(a)))),
}


class _Traceable:
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name not in _TORCH:
            raise TraceError(f"torch.{name} is not supported in a traced attncc expression; "
                             f"supported: {', '.join('torch.' + n for n in sorted(_TORCH))}")
        return _TORCH[name](*args, **(kwargs or {}))


class Sym(_Traceable):
    """A symbolic value inside a traced lambda."""

    __slots__ = ("expr",)

    def __init__(self, expr):
        self.expr = expr

    def _bin(self, other, f, reverse=False):
        a, b = self.expr, _unwrap(other)
        if reverse:
            a, b = b, a
        return Sym(f(_num(a, f), _num(b, f)))

    __add__ = lambda s, o: s._bin(o, lambda a, b: a + b)
    __radd__ = lambda s, o: s._bin(o, lambda a, b: a + b, True)
    __sub__ = lambda s, o: s._bin(o, lambda a, b: a - b)
    __rsub__ = lambda s, o: s._bin(o, lambda a, b: a - b, True)
    __mul__ = lambda s, o: s._bin(o, lambda a, b: a * b)
    __rmul__ = lambda s, o: s._bin(o, lambda a, b: a * b, True)
    __truediv__ = lambda s, o: s._bin(o, lambda a, b: a / b)
    __rtruediv__ = lambda s, o: s._bin(o, lambda a, b: a / b, True)
    __floordiv__ = lambda s, o: s._bin(o, _floordiv)
    __rfloordiv__ = lambda s, o: s._bin(o, _floordiv, True)
    __mod__ = lambda s, o: s._bin(o, sympy.Mod)
    __rmod__ = lambda s, o: s._bin(o, sympy.Mod, True)
    __pow__ = lambda s, o: s._bin(o, lambda a, b: a ** b)
    __rpow__ = lambda s, o: s._bin(o, lambda a, b: a ** b, True)
    __neg__ = lambda s: Sym(-_num(s.expr, None))
    __pos__ = lambda s: s
    __abs__ = lambda s: Sym(sympy.Abs(_num(s.expr, None)))

    __lt__ = lambda s, o: Sym(sympy.Lt(s.expr, _unwrap(o)))
    __le__ = lambda s, o: Sym(sympy.Le(s.expr, _unwrap(o)))
    __gt__ = lambda s, o: Sym(sympy.Gt(s.expr, _unwrap(o)))
    __ge__ = lambda s, o: Sym(sympy.Ge(s.expr, _unwrap(o)))
    __eq__ = lambda s, o: Sym(sympy.Eq(s.expr, _unwrap(o)))
    __ne__ = lambda s, o: Sym(sympy.Ne(s.expr, _unwrap(o)))
    __hash__ = None

    __and__ = lambda s, o: Sym(sympy.And(_bool(s.expr), _bool(_unwrap(o))))
    __rand__ = __and__
    __or__ = lambda s, o: Sym(sympy.Or(_bool(s.expr), _bool(_unwrap(o))))
    __ror__ = __or__
    __invert__ = lambda s: Sym(sympy.Not(_bool(s.expr)))

    def __bool__(self):
        raise TraceError(f"Python `if`/`and`/`or`/`not` on the symbolic value {self.expr} cannot be "
                         "traced; use `&`, `|`, `~` or torch.where(cond, a, b)")

    def _no(op):
        def f(self, *a):
            raise TraceError(f"{op} of the symbolic value {self.expr} cannot be traced; attncc traces "
                             "arithmetic, comparisons, & | ~, captured-tensor indexing and "
                             f"{', '.join('torch.' + n for n in sorted(_TORCH))}")
        return f

    __float__ = _no("float()")
    __int__ = _no("int()")
    __index__ = _no("using as a Python index")
    __iter__ = _no("iterating")
    __len__ = _no("len()")
    __round__ = _no("round()")
    __getitem__ = _no("indexing")

    def __repr__(self):
        return f"Sym({self.expr})"


class Captured(_Traceable):
    """A tensor passed to the kernel at call time by keyword, indexed inside the lambda."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        for x in idx:
            if isinstance(x, slice) or x is Ellipsis or x is None:
                raise TraceError(f"captured tensor {self.name!r} must be indexed by scalar expressions, "
                                 f"not {x!r}")
        args = [_num(_unwrap(x), None) for x in idx]
        for a in args:
            if not _integral(a):
                raise TraceError(f"captured tensor {self.name!r} is indexed by {a}, which is not an integer "
                                 "expression; use // for integer division")
        return Sym(S.table(self.name)[tuple(args)])

    def __bool__(self):
        raise TraceError(f"captured tensor {self.name!r} used as a truth value; index it first")

    def __repr__(self):
        return f"Captured({self.name!r})"


def lambda_params(fn, fixed, what):
    """The parameter names of `fn` beyond its `fixed` leading ones (those are captured tensors)."""
    if not callable(fn):
        raise TypeError(f"{what} takes a function, got {type(fn).__name__} ({fn!r})")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: cannot read the signature of {fn!r} ({e}); pass a def or lambda") from None
    params = list(sig.parameters.values())
    bad = [p.name for p in params if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if bad:
        raise TypeError(f"{what}: parameters {bad} are not plain positional parameters; "
                        f"write lambda {', '.join(fixed)}[, captured tensor names]: ...")
    if len(params) < len(fixed):
        raise TypeError(f"{what} takes a function of ({', '.join(fixed)}[, captured tensors]), "
                        f"got one with {len(params)} parameter(s): {[p.name for p in params]}")
    return tuple(p.name for p in params[len(fixed):])


def trace(fn, args, captured, what):
    """Call `fn` with symbolic `args` and Captured stand-ins; return the sympy expression."""
    stand_ins = [Sym(a) for a in args] + [Captured(n) for n in captured]
    try:
        out = fn(*stand_ins)
    except TraceError:
        raise
    except Exception as e:  # a user's lambda failing on symbolic input: say which operation
        raise TraceError(f"{what}: tracing the function failed with {type(e).__name__}: {e}. "
                         "attncc traces arithmetic, comparisons, & | ~, captured-tensor indexing and "
                         f"{', '.join('torch.' + n for n in sorted(_TORCH))}") from e
    expr = _unwrap(out)
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise TraceError(f"{what}: the expression {expr} divides by zero or takes log(0) for every input; "
                         "check the function")
    return expr
