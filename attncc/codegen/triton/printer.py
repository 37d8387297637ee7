"""The sympy -> Triton printer: IR expressions (masks, index maps, score and post
expressions) become Triton expression text for the generated kernels.

Names map symbols to kernel variables that are scalars or tensors ([BMP, 1] rows, [1, BNP]
columns), so an expression over a row and a column broadcasts to the tile. Triton promotes
int32 and float32 by itself; the printer tracks a kind (int, float, bool) only where the
meaning differs: `//` and `%` on ints truncate towards zero on a GPU while the IR means floor
division, so both are printed in a form that is exact for either convention. Reads of tensors
clamp their indices to the tensor's extent: masked pairs may compute indices outside it, and
a generated kernel must never read out of bounds (the reference backend checks unmasked pairs).
"""
import math

import sympy

from ...ir import symbols as S


class PrintError(ValueError):
    """An expression the Triton printer cannot express (a user-facing message)."""


class TritonPrinter:
    """`names`: Symbol -> (text, kind); `tables`: name -> (param name, shape, kind)."""

    def __init__(self, names, tables):
        self.names = dict(names)
        self.tables = tables

    def with_names(self, extra):
        """A printer with more symbol bindings (Symbol -> (text, kind))."""
        return TritonPrinter({**self.names, **extra}, self.tables)

    def __call__(self, expr, want=None):
        text, kind = self.p(sympy.sympify(expr))
        return self.cast(text, kind, want) if want else text

    @staticmethod
    def cast(text, kind, want):
        if want is None or kind == want:
            return text
        if want == "float":
            return f"({text} + 0.0)" if kind == "int" else f"tl.where({text}, 1.0, 0.0)"
        if want == "int":
            return f"tl.where({text}, 1, 0)" if kind == "bool" else text
        return f"({text} != 0)"

    # each returns (text, kind)
    def p(self, e):
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise PrintError(f"the Triton backend has no value for {e} here")
            return self.names[e]
        if e is sympy.true or e is sympy.false:
            return str(bool(e)), "bool"
        if isinstance(e, sympy.Integer):
            return f"({int(e)})", "int"
        if e.is_Number or isinstance(e, sympy.NumberSymbol):
            return f"({float(e)!r})", "float"
        if isinstance(e, (sympy.Add, sympy.Mul)):
            parts = [self.p(a) for a in e.args]
            kind = "float" if any(k == "float" for _, k in parts) else "int"
            op = " + " if isinstance(e, sympy.Add) else " * "
            return "(" + op.join(self.cast(t, k, kind) for t, k in parts) + ")", kind
        if isinstance(e, sympy.Pow):
            return self._pow(*e.args)
        if isinstance(e, S.FloorDiv):
            return self._floordiv(e.args[0], e.args[1])
        if isinstance(e, sympy.Mod):
            return self._mod(e.args[0], e.args[1])
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            if den.is_Integer and self.p(num)[1] == "int":
                return self._floordiv(num, den)
            return f"tl.floor({self(e.args[0], 'float')}).to(tl.int32)", "int"
        if isinstance(e, (sympy.Min, sympy.Max)):
            parts = [self.p(a) for a in e.args]
            kind = "float" if any(k == "float" for _, k in parts) else "int"
            f = "tl.minimum" if isinstance(e, sympy.Min) else "tl.maximum"
            acc = self.cast(*parts[0], kind)
            for t, k in parts[1:]:
                acc = f"{f}({acc}, {self.cast(t, k, kind)})"
            return acc, kind
        if isinstance(e, sympy.Abs):
            t, k = self.p(e.args[0])
            return f"tl.abs({t})", k
        if isinstance(e, sympy.tanh):
            return f"_tanh({self(e.args[0], 'float')})", "float"
        for cls, fn in ((sympy.exp, "tl.exp"), (sympy.log, "tl.log")):
            if isinstance(e, cls):
                return f"{fn}({self(e.args[0], 'float')})", "float"
        if isinstance(e, sympy.Piecewise):
            vals = [self.p(v) for v, _ in e.args]
            kind = "float" if any(k == "float" for _, k in vals) else vals[0][1]
            acc = None
            for (v, c), (t, k) in zip(reversed(e.args), reversed(vals)):
                t = self.cast(t, k, kind)
                acc = t if acc is None or c is sympy.true else f"tl.where({self(c, 'bool')}, {t}, {acc})"
            return acc, kind
        if isinstance(e, sympy.core.relational.Relational):
            a, b = self.p(e.lhs), self.p(e.rhs)
            kind = "float" if "float" in (a[1], b[1]) else "int"
            return f"({self.cast(*a, kind)} {e.rel_op} {self.cast(*b, kind)})", "bool"
        if isinstance(e, (sympy.And, sympy.Or)):
            op = " & " if isinstance(e, sympy.And) else " | "
            return "(" + op.join(self(a, "bool") for a in e.args) + ")", "bool"
        if isinstance(e, sympy.Not):
            return f"({self(e.args[0], 'bool')} == False)", "bool"   # noqa: E712 (tensor compare, not `not`)
        if isinstance(e, sympy.Indexed):
            return self._load(e)
        raise PrintError(f"the Triton backend cannot print the operation {type(e).__name__} in {e}")

    def _pow(self, base, ex):
        bt, bk = self.p(base)
        if ex.is_Integer and int(ex) >= 0:
            if int(ex) == 0:
                return "(1)", "int"
            return "(" + " * ".join([bt] * int(ex)) + ")", bk
        if ex == -1:
            return f"(1.0 / {self.cast(bt, bk, 'float')})", "float"
        if ex == sympy.Rational(1, 2):
            return f"tl.sqrt({self.cast(bt, bk, 'float')})", "float"
        x = self(ex, "float")
        if base.is_Number and base > 0:         # c ** x = exp2(x * log2 c): exact for powers of two
            return f"tl.exp2({x} * {math.log2(float(base))!r})", "float"
        b = self.cast(bt, bk, "float")
        if ex.is_integer:                       # a run-time integer exponent: |b| ** x with b's sign
            odd = f"(({self(ex, 'int')} % 2) != 0)"
            mag = f"tl.exp2({x} * tl.log2(tl.abs({b})))"
            return f"tl.where({b} < 0.0, tl.where({odd}, -{mag}, {mag}), {mag})", "float"
        return f"tl.exp2({x} * tl.log2({b}))", "float"

    def _floordiv(self, a, q):
        at = self(a, "int")
        if a.is_nonnegative and q.is_Integer and int(q) > 0:
            return f"({at} // {int(q)})", "int"
        qt = self(q, "int")
        return f"(({at} - {self._fmod(at, qt)}) // {qt})", "int"

    def _mod(self, a, q):
        (at, ak), (qt, qk) = self.p(a), self.p(q)
        if ak != "int" or qk != "int":
            raise PrintError(f"the Triton backend supports % on integers only, got {a} % {q}")
        if a.is_nonnegative and q.is_Integer and int(q) > 0:
            return f"({at} % {qt})", "int"
        return self._fmod(at, qt), "int"

    @staticmethod
    def _fmod(at, qt):
        """Floor modulo by a positive divisor, exact whether % truncates or floors."""
        return f"((({at} % {qt}) + {qt}) % {qt})"

    def _load(self, e):
        param, _, kind = self.tables[str(e.base.label)]
        return f"tl.load({param} + {self.offset(e)})", kind

    def offset(self, e):
        """The flat element offset of the table read `e` (its indices clamped to the table's
        extent), as the read loads it: the backward adds a read's gradient at the same place."""
        name = str(e.base.label)
        if name not in self.tables:
            raise PrintError(f"tensor {name!r} is not a parameter of this kernel")
        _, shape, _ = self.tables[name]
        if len(e.indices) != len(shape):
            raise PrintError(f"tensor {name!r} has {len(shape)} dims but is indexed with {len(e.indices)}: {e}")
        flat, stride = [], 1
        for ix, n in reversed(list(zip(e.indices, shape))):
            clamped = f"tl.minimum(tl.maximum({self(ix, 'int')}, 0), {n - 1})"
            flat.append(clamped if stride == 1 else f"{clamped} * {stride}")
            stride *= n
        return " + ".join(reversed(flat))
