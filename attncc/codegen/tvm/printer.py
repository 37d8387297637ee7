"""The sympy -> TVMScript printer: IR expressions (masks, index maps, score and post
expressions) become TIR expression text for the generated kernels.

Every printed expression carries a kind (int, float or bool) so mixed arithmetic gets
explicit casts (TIR does not promote). Reads of tensors clamp their indices to the tensor's
extent: masked pairs may compute indices outside it, and a generated kernel must never read
out of bounds (unmasked pairs are in range: every call checks its tensors, runtime/inputs.py).
"""
import sympy

from ...ir import symbols as S
from ..captured import param


class PrintError(ValueError):
    """An expression the TVM printer cannot express (a user-facing message)."""


class TIRPrinter:
    """`names`: Symbol -> (text, kind); `tables`: name -> (shape, kind)."""

    def __init__(self, names, tables):
        self.names = names
        self.tables = tables

    def __call__(self, expr, want=None):
        text, kind = self.p(sympy.sympify(expr))
        if want == "float" and kind != "float":
            return f"T.Cast(\"float32\", {text})"
        if want == "bool" and kind != "bool":
            return f"({text} != 0)"
        if want == "int" and kind == "bool":
            return f"T.Cast(\"int32\", {text})"
        return text

    # each returns (text, kind)
    def p(self, e):
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise PrintError(f"the TVM backend has no value for {e} here")
            return self.names[e]
        if e is sympy.true or e is sympy.false:
            return f"T.bool({bool(e)})", "bool"
        if isinstance(e, sympy.Integer):
            return (f"T.int32({int(e)})" if int(e) < 0 else str(int(e))), "int"
        if e.is_Number or isinstance(e, sympy.NumberSymbol):
            return f"T.float32({float(e)!r})", "float"
        if isinstance(e, (sympy.Add, sympy.Mul)):
            parts = [self.p(a) for a in e.args]
            kind = "float" if any(k == "float" for _, k in parts) else "int"
            op = " + " if isinstance(e, sympy.Add) else " * "
            return "(" + op.join(self.cast(t, k, kind) for t, k in parts) + ")", kind
        if isinstance(e, sympy.Pow):
            base, ex = e.args
            if ex.is_Integer and int(ex) >= 0 and self.p(base)[1] == "int":
                t, _ = self.p(base)
                return "(" + " * ".join([t] * int(ex)) + ")" if int(ex) else "1", "int"
            if ex == sympy.Rational(1, 2) or ex == sympy.Rational(-1, 2):   # llvm.sqrt vectorizes
                t = f"T.sqrt({self(base, 'float')})"
                return (t if ex > 0 else f"(T.float32(1.0) / {t})"), "float"
            if ex.is_Integer and 0 < abs(int(ex)) <= 4:      # x * x ...: exact, no pow
                t = self(base, "float")
                prod = "(" + " * ".join([t] * abs(int(ex))) + ")"
                return (prod if int(ex) > 0 else f"(T.float32(1.0) / {prod})"), "float"
            if base.is_Number and base > 0:                 # c ** y = exp(y ln c): ALiBi's slopes
                if base == 1:
                    return "T.float32(1.0)", "float"
                return f"fexp_any({self(ex, 'float')} * T.float32({float(sympy.log(base))!r}))", "float"
            # a general base stays libm's powf (scalar calls): exp(y ln|a|) with powf's special
            # cases, inlined, grows expression trees TVM expands past what it compiles quickly
            return f"T.pow({self(base, 'float')}, {self(ex, 'float')})", "float"
        if isinstance(e, S.FloorDiv):
            return f"T.floordiv({self(e.args[0], 'int')}, {self(e.args[1], 'int')})", "int"
        if isinstance(e, sympy.Mod):
            a, q = self.p(e.args[0]), self.p(e.args[1])
            if a[1] == "int" and q[1] == "int":
                return f"T.floormod({a[0]}, {q[0]})", "int"
            raise PrintError(f"the TVM backend supports % on integers only, got {e}")
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            if den.is_Integer and self.p(num)[1] == "int":
                return f"T.floordiv({self(num, 'int')}, {int(den)})", "int"
            return f"T.Cast(\"int32\", T.floor({self(e.args[0], 'float')}))", "int"
        if isinstance(e, (sympy.Min, sympy.Max)):
            parts = [self.p(a) for a in e.args]
            kind = "float" if any(k == "float" for _, k in parts) else "int"
            f = "T.min" if isinstance(e, sympy.Min) else "T.max"
            acc = self.cast(*parts[0], kind)
            for t, k in parts[1:]:
                acc = f"{f}({acc}, {self.cast(t, k, kind)})"
            return acc, kind
        if isinstance(e, sympy.Abs):
            t, k = self.p(e.args[0])
            return f"T.abs({t})", k
        # vectorizable forms (intrin.py): T.tanh / T.exp / T.log / T.pow on a vector become
        # scalar libm calls, which keep LLVM from vectorizing the score loop
        for cls, fn in ((sympy.tanh, "ftanh"), (sympy.exp, "fexp_any"), (sympy.log, "flog_any")):
            if isinstance(e, cls):
                return f"{fn}({self(e.args[0], 'float')})", "float"
        if isinstance(e, sympy.Piecewise):
            vals = [self.p(v) for v, _ in e.args]
            kind = "float" if any(k == "float" for _, k in vals) else vals[0][1]
            acc = None
            for (v, c), (t, k) in zip(reversed(e.args), reversed(vals)):
                t = self.cast(t, k, kind)
                acc = t if acc is None or c is sympy.true else f"T.Select({self(c, 'bool')}, {t}, {acc})"
            return acc, kind
        if isinstance(e, sympy.core.relational.Relational):
            a, b = self.p(e.lhs), self.p(e.rhs)
            kind = "float" if "float" in (a[1], b[1]) else "int"
            op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[e.rel_op]
            return f"({self.cast(*a, kind)} {op} {self.cast(*b, kind)})", "bool"
        if isinstance(e, (sympy.And, sympy.Or)):
            f = "T.And" if isinstance(e, sympy.And) else "T.Or"
            parts = [self(a, "bool") for a in e.args]
            acc = parts[0]
            for t in parts[1:]:
                acc = f"{f}({acc}, {t})"
            return acc, "bool"
        if isinstance(e, sympy.Not):
            return f"T.Not({self(e.args[0], 'bool')})", "bool"
        if isinstance(e, sympy.Indexed):
            name = str(e.base.label)
            if name not in self.tables:
                raise PrintError(f"tensor {name!r} is not a parameter of this kernel")
            shape, kind = self.tables[name]
            idx = [f"T.max(T.min({self(ix, 'int')}, {n - 1}), 0)" for ix, n in zip(e.indices, shape)]
            return f"{param(name)}[{', '.join(idx)}]", kind
        raise PrintError(f"the TVM backend cannot print the operation {type(e).__name__} in {e}")

    @staticmethod
    def cast(text, kind, want):
        if kind == want:
            return text
        if want == "float":
            return f"T.Cast(\"float32\", {text})"
        if want == "int":
            return f"T.Cast(\"int32\", {text})"
        return f"({text} != 0)"
