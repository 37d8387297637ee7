"""Symbolic derivatives of the IR's score expression, for the backward kernels (issue 23).

The forward computes s' = f(s, b, h, i, j, tables) from the scaled score s = q.k * scale
(score modifiers: relative position bias, ALiBi, softcap's tanh, a user's score_mod). The
backward needs dL/ds = dL/ds' * f_s(s, ...) and, for a float captured tensor T that f reads,
dL/dT[idx] += dL/ds' * f_T. Both come from sympy's differentiation of the same expression the
forward prints, so every backend prints them with its own printer.
"""
import sympy

from . import symbols as S


def _printable(expr):
    """Heaviside and sign (from differentiating Max, Min or Abs) as Piecewise of comparisons, which
    every printer has (its value at 0 is a subgradient's choice: 1); DiracDelta (a
    derivative of Heaviside) is 0 almost everywhere."""
    expr = expr.replace(lambda e: isinstance(e, sympy.DiracDelta), lambda e: sympy.Integer(0))
    expr = expr.replace(lambda e: isinstance(e, sympy.Heaviside),
                        lambda e: sympy.Piecewise((0, e.args[0] < 0), (1, True)))
    return expr.replace(lambda e: isinstance(e, sympy.sign),
                        lambda e: sympy.Piecewise((1, e.args[0] > 0), (-1, e.args[0] < 0), (0, True)))


def derivative(expr, x):
    """d expr / d x (a symbol or a table read), printable."""
    return _printable(sympy.diff(expr, x))


def score_derivative(score):
    """d score' / d score: 1 for additive modifiers (bias, ALiBi), an expression of the score
    for a nonlinear one (softcap: 1 - tanh(s / c)^2)."""
    return _printable(sympy.diff(score, S.score))


def weight_derivative(post):
    """d post / d weight of the post modifiers' chain (decay2d: its decay factor; clipped: the
    stretch inside the clamp, 0 where it clips)."""
    return _printable(sympy.diff(post, S.weight))


def table_partials(score, names):
    """{table read (an Indexed of a tensor in `names`): d expr / d read}: the coefficient of
    each float captured tensor's read in the score (1 for an added bias), or in the post
    modifiers' chain."""
    reads = sorted((x for x in sympy.sympify(score).atoms(sympy.Indexed) if str(x.base.label) in names), key=str)
    return {x: _printable(sympy.diff(score, x)) for x in reads}
