"""Grid patterns: (shifted) windows, neighborhoods, axial attention, stripes and bi-level
routing on an R x C (or N-D) token grid, as PATTERNS.md defines them."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir import grid as G
from ..ir import symbols as S
from ..ir.program import Pred
from . import _check as C
from .algebra import Pattern, _grid2


@dataclass(frozen=True, repr=False)
class Window2d(Pattern):
    _grid: tuple
    window: tuple
    shift: tuple = (0, 0)

    def preds(self):
        (R, Cc), (wr, wc), (sr, sc) = self._grid, self.window, self.shift
        terms = []
        for size, win, sh, axis in ((R, wr, sr, 0), (Cc, wc, sc, 1)):
            ci = sympy.Mod(G.coords(S.i, self._grid)[axis] - sh, size)
            cj = sympy.Mod(G.coords(S.j, self._grid)[axis] - sh, size)
            terms.append(sympy.Eq(S.fdiv(ci, win), S.fdiv(cj, win)))
            if sh:
                terms.append(sympy.Eq(G.region(ci, size, win, sh), G.region(cj, size, win, sh)))
        params = (("grid", self._grid), ("window", self.window), ("shift", self.shift))
        return (Pred("window2d", params, sympy.And(*terms)),)

    def __repr__(self):
        return f"window2d(grid={self._grid}, window={self.window}, shift={self.shift})"


def window2d(grid, window, shift=(0, 0)):
    """Swin's (shifted) window attention on an R x C grid: tokens attend inside their window of
    the map rolled by -shift, and only to tokens from the same region of the shifted map."""
    w = "window2d: "
    grid, window = _grid2(grid, w), C.int_tuple("window", window, length=2, min=1, what=w)
    shift = C.int_tuple("shift", shift, length=2, min=0, what=w)
    for a in range(2):
        if window[a] > grid[a]:
            raise ValueError(f"window2d: window {window} is larger than the grid {grid}; "
                             "use a window no larger than the grid")
        if shift[a] >= window[a]:
            raise ValueError(f"window2d: shift {shift} must be smaller than the window {window} "
                             "(Swin uses window // 2)")
        if shift[a] and grid[a] % window[a]:
            raise ValueError(f"window2d: a shifted window must divide the grid, got grid {grid}, "
                             f"window {window}, shift {shift}; pad the map to a multiple of the "
                             "window first (as Swin does)")
    return Window2d(grid, window, shift)


@dataclass(frozen=True, repr=False)
class Neighborhood2d(Pattern):
    _grid: tuple
    kernel: tuple
    dilation: tuple = (1, 1)

    def preds(self):
        terms = []
        ci, cj = G.coords(S.i, self._grid), G.coords(S.j, self._grid)
        for a in range(2):
            size, k, dil = self._grid[a], self.kernel[a], self.dilation[a]
            res = sympy.Mod(ci[a], dil)
            sub_i, sub_j = S.fdiv(ci[a], dil), S.fdiv(cj[a], dil)
            sub_size = S.fdiv(size - res + dil - 1, dil)
            start = sympy.Min(sympy.Max(sub_i - k // 2, 0), sub_size - k)
            terms += [sympy.Eq(sympy.Mod(cj[a], dil), res), sub_j >= start, sub_j < start + k]
        params = (("grid", self._grid), ("kernel", self.kernel), ("dilation", self.dilation))
        return (Pred("neighborhood2d", params, sympy.And(*terms)),)

    def __repr__(self):
        return f"neighborhood2d(grid={self._grid}, kernel={self.kernel}, dilation={self.dilation})"


def neighborhood2d(grid, kernel, dilation=(1, 1)):
    """NATTEN's neighborhood attention: the k x k box around each query, slid to stay inside the
    grid; with dilation D the box lives in the query's sub-grid of stride D."""
    w = "neighborhood2d: "
    grid = _grid2(grid, w)
    kernel = C.int_tuple("kernel", kernel, length=2, min=1, what=w)
    dilation = C.int_tuple("dilation", dilation, length=2, min=1, what=w)
    for a in range(2):
        if kernel[a] * dilation[a] > grid[a]:
            raise ValueError(f"neighborhood2d: kernel {kernel} times dilation {dilation} exceeds the grid "
                             f"{grid} along axis {a}; use kernel * dilation <= grid")
    return Neighborhood2d(grid, kernel, dilation)


@dataclass(frozen=True, repr=False)
class Axial(Pattern):
    _grid: tuple
    axis: int

    def preds(self):
        ci, cj = G.coords(S.i, self._grid), G.coords(S.j, self._grid)
        e = sympy.And(*(sympy.Eq(ci[a], cj[a]) for a in range(len(self._grid)) if a != self.axis))
        return (Pred("axial", (("grid", self._grid), ("axis", self.axis)), e),)

    def __repr__(self):
        return f"axial(grid={self._grid}, axis={self.axis})"


def axial(grid, axis=1):
    """Axial attention on an N-D grid: a query sees the keys that share every coordinate but
    `axis` (on (R, C): axis=1 is row attention, axis=0 column attention)."""
    w = "axial: "
    grid = C.int_tuple("grid", grid, min=1, what=w)
    axis = C.integer("axis", axis, what=w)
    if not -len(grid) <= axis < len(grid):
        raise ValueError(f"axial: axis {axis} is out of range for a {len(grid)}-D grid {grid}")
    return Axial(grid, axis % len(grid))


@dataclass(frozen=True, repr=False)
class Stripes(Pattern):
    _grid: tuple
    width: int
    axis: int = 0

    def preds(self):
        ci, cj = G.coords(S.i, self._grid), G.coords(S.j, self._grid)
        a, w = self.axis, self.width
        e = sympy.Eq(S.fdiv(ci[a], w), S.fdiv(cj[a], w))
        return (Pred("stripes", (("grid", self._grid), ("width", w), ("axis", a)), e),)

    def __repr__(self):
        return f"stripes(grid={self._grid}, width={self.width}, axis={self.axis})"


def stripes(grid, width, axis=0):
    """CSWin's stripes: coord_axis(i) // width == coord_axis(j) // width (axis=0: horizontal
    stripes of `width` rows; axis=1: vertical stripes of `width` columns)."""
    w = "stripes: "
    grid = C.int_tuple("grid", grid, min=1, what=w)
    axis = C.integer("axis", axis, what=w)
    if not -len(grid) <= axis < len(grid):
        raise ValueError(f"stripes: axis {axis} is out of range for a {len(grid)}-D grid {grid}")
    axis %= len(grid)
    width = C.integer("width", width, min=1, what=w)
    if width > grid[axis]:
        raise ValueError(f"stripes: width {width} exceeds the grid's size {grid[axis]} along axis {axis}")
    return Stripes(grid, width, axis)


ROUTE_MASK, ROUTE_IDX = "__route_mask", "__route_idx"


@dataclass(frozen=True, repr=False)
class Routing(Pattern):
    _grid: tuple
    regions: tuple
    topk: int
    in_union = False

    def region_of(self, tok):
        (R, Cc), (Sr, Sc) = self._grid, self.regions
        r, c = G.coords(tok, self._grid)
        return S.fdiv(r, R // Sr) * Sc + S.fdiv(c, Cc // Sc)

    def preds(self):
        e = sympy.Ne(S.table(ROUTE_MASK)[S.b, self.region_of(S.i), self.region_of(S.j)], 0)
        params = (("grid", self._grid), ("regions", self.regions), ("topk", self.topk))
        return (Pred("routing", params, e),)

    def __repr__(self):
        return f"routing(grid={self._grid}, regions={self.regions}, topk={self.topk})"


def routing(grid, regions, topk):
    """BiFormer's bi-level routing: each query region attends to the `topk` regions whose mean
    key is most similar to its mean query (computed at run time over all heads)."""
    w = "routing: "
    grid = _grid2(grid, w)
    regions = C.int_tuple("regions", regions, length=2, min=1, what=w)
    for a in range(2):
        if grid[a] % regions[a]:
            raise ValueError(f"routing: regions {regions} must divide the grid {grid}; pad the map to a "
                             "multiple of the region count first (as BiFormer does)")
    topk = C.integer("topk", topk, min=1, what=w)
    if topk > regions[0] * regions[1]:
        raise ValueError(f"routing: topk {topk} exceeds the number of regions "
                         f"{regions[0]} x {regions[1]} = {regions[0] * regions[1]}")
    return Routing(grid, regions, topk)
