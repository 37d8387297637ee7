"""Grid arithmetic shared by the DSL's canonical masks and the gather pass.

A token t of an N-D grid (d0, d1, ..., dk) sits at row-major coordinates; for 2-D grids
(R, C): t <-> (t // C, t % C).
"""
import math

import sympy

from .symbols import fdiv


def coords(tok, grid):
    """Row-major coordinates of token expression `tok` on `grid`, as sympy expressions."""
    out = []
    stride = math.prod(grid)
    for size in grid:
        stride //= size
        c = fdiv(tok, stride) if stride > 1 else sympy.sympify(tok)
        out.append(sympy.Mod(c, size) if len(out) else c)
    return tuple(out)


def token(cs, grid):
    """Row-major token index of coordinate expressions `cs` on `grid`."""
    tok = sympy.Integer(0)
    for c, size in zip(cs, grid):
        tok = tok * size + c
    return tok


def region(coord, size, window, shift):
    """Swin's region index (0, 1, 2) of a shifted-frame coordinate along one axis."""
    return sympy.Piecewise((0, coord < size - window), (1, coord < size - shift), (2, True))
