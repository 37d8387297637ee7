"""The symbols every IR expression is written over.

Masks, index maps and score expressions are sympy expressions over these integer symbols.
Runtime tensors (captured by name, or tables computed by a prologue) appear as
``sympy.IndexedBase(name)[...]``.
"""
import sympy

_int = dict(integer=True, nonnegative=True)

b = sympy.Symbol("b", **_int)   # batch index
h = sympy.Symbol("h", **_int)   # head index (global, also inside per-head groups)
i = sympy.Symbol("i", **_int)   # query token
j = sympy.Symbol("j", **_int)   # key token
g = sympy.Symbol("g", **_int)   # group of a gathered key source (a window, a row, a stripe ...)
t = sympy.Symbol("t", **_int)   # query's local index inside its group
u = sympy.Symbol("u", **_int)   # key's local index inside its group
score = sympy.Symbol("score", real=True)    # the scaled score s_ij before modifiers
weight = sympy.Symbol("weight", real=True)  # the normalized weight w_ij (post-modifiers)

# Dimension symbols (the IR is symbolic in them until the call binds shapes).
B, H, N, M, D, DV = sympy.symbols("B H N M d dv", integer=True, positive=True)

TOKEN = (b, h, i, j)
LOCAL = (b, h, g, t, u)


class FloorDiv(sympy.Function):
    """Integer floor division ``a // q`` of an integer expression by a positive integer: an IR
    node of its own (sympy's floor(a / q) rewrites itself into forms that are slow to build
    and awkward to print for a target)."""
    nargs = 2
    is_integer = True

    @classmethod
    def eval(cls, a, q):
        if a.is_Integer and q.is_Integer:
            return sympy.Integer(int(a) // int(q))
        if q == 1:
            return a

    def _sympystr(self, printer):
        return f"({printer._print(self.args[0])} // {printer._print(self.args[1])})"


def fdiv(a, n):
    """Floor division of integer expressions, as an IR expression."""
    return FloorDiv(sympy.sympify(a), sympy.sympify(n))


def table(name):
    """A runtime or captured tensor, indexed in expressions as ``table(name)[idx, ...]``."""
    return sympy.IndexedBase(name)


def tables_in(expr):
    """Names of the tensors an expression reads (captured tensors and runtime tables)."""
    expr = sympy.sympify(expr)
    return frozenset(str(x.base.label) for x in expr.atoms(sympy.Indexed))


def free_index_symbols(expr):
    """The index symbols an expression uses, looking inside table indices (not table names)."""
    expr = sympy.sympify(expr)
    found = set()
    for x in expr.atoms(sympy.Indexed):
        for ix in x.indices:
            found |= free_index_symbols(ix)
    stripped = expr.xreplace({x: sympy.Integer(0) for x in expr.atoms(sympy.Indexed)})
    return found | {s for s in stripped.free_symbols if isinstance(s, sympy.Symbol)}


def is_boolean(expr):
    """True for boolean expressions (relations, logic, true/false); a Symbol is not one here."""
    from sympy.core.relational import Relational
    from sympy.logic.boolalg import BooleanAtom, BooleanFunction
    return isinstance(expr, (Relational, BooleanFunction, BooleanAtom))
