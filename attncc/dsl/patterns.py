"""Attention patterns: which (query, key) pairs may attend. Compose with ``&`` and ``|``.

Each pattern is an immutable, hashable value validated when built. ``preds()`` gives its
meaning as IR predicates over the symbolic indices (b, h, i, j) and the sizes N, M, exactly
as PATTERNS.md defines it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy

from ..ir import grid as G
from ..ir import symbols as S
from ..ir.program import Pred
from . import _check as C
from .trace import lambda_params, trace


class Pattern:
    """Base class of attention patterns."""

    def __and__(self, other):
        _need_pattern(other, "&")
        return And(_flat(And, self) + _flat(And, other))

    def __or__(self, other):
        _need_pattern(other, "|")
        return Or(_flat(Or, self) + _flat(Or, other))

    def leaves(self):
        yield self

    @property
    def grid(self):
        """The token grid this pattern lives on (None for 1-D patterns)."""
        grids = {p._grid for p in self.leaves() if getattr(p, "_grid", None) is not None}
        if len(grids) > 1:
            raise ValueError(f"patterns of one spec must share a grid, got {sorted(grids)} in {self!r}")
        return grids.pop() if grids else None

    def preds(self):
        raise NotImplementedError


def _need_pattern(x, op):
    if not isinstance(x, Pattern):
        raise TypeError(f"`{op}` combines attention patterns, got {type(x).__name__} ({x!r})")


def _flat(kind, p):
    return p.parts if isinstance(p, kind) else (p,)


def _grid2(grid, what):
    grid = C.int_tuple("grid", grid, length=2, min=1, what=what)
    return grid


@dataclass(frozen=True, repr=False)
class Full(Pattern):
    """Every query attends to every key."""

    def preds(self):
        return (Pred("full"),)

    def __repr__(self):
        return "full()"


def full():
    """Dense attention: m_ij = 1 for every pair."""
    return Full()


@dataclass(frozen=True, repr=False)
class Causal(Pattern):
    align: str = "top_left"

    def preds(self):
        off = 0 if self.align == "top_left" else S.M - S.N
        return (Pred("causal", (("align", self.align),), sympy.Le(S.j, S.i + off)),)

    def __repr__(self):
        return f"causal(align={self.align!r})"


def causal(align="top_left"):
    """Causal mask: j <= i ("top_left", as torch SDPA's is_causal) or j <= i + (M - N)
    ("bottom_right", for decoding against a KV cache)."""
    C.choice("align", align, ("top_left", "bottom_right"), what="causal: ")
    return Causal(align)


@dataclass(frozen=True, repr=False)
class SlidingWindow(Pattern):
    left: int
    right: int = 0

    def preds(self):
        e = sympy.And(S.j >= S.i - self.left, S.j <= S.i + self.right)
        return (Pred("sliding_window", (("left", self.left), ("right", self.right)), e),)

    def __repr__(self):
        return f"sliding_window(left={self.left}, right={self.right})"


def sliding_window(left, right=0):
    """1-D local attention: i - left <= j <= i + right (right=0 is causal sliding window)."""
    w = "sliding_window: "
    return SlidingWindow(C.integer("left", left, min=0, what=w), C.integer("right", right, min=0, what=w))


@dataclass(frozen=True, repr=False)
class Dilated(Pattern):
    rate: int
    left: int
    right: int = 0

    def preds(self):
        e = sympy.And(sympy.Eq(sympy.Mod(S.i - S.j, self.rate), 0),
                      S.j >= S.i - self.left, S.j <= S.i + self.right)
        return (Pred("dilated", (("rate", self.rate), ("left", self.left), ("right", self.right)), e),)

    def __repr__(self):
        return f"dilated(rate={self.rate}, left={self.left}, right={self.right})"


def dilated(rate, left, right=0):
    """Dilated 1-D window: (i - j) % rate == 0 and i - left <= j <= i + right (in tokens)."""
    w = "dilated: "
    return Dilated(C.integer("rate", rate, min=1, what=w), C.integer("left", left, min=0, what=w),
                   C.integer("right", right, min=0, what=w))


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


@dataclass(frozen=True, repr=False)
class BlockSparse(Pattern):
    layout: tuple          # nested tuples of bools, [nq, nk] or [H, nq, nk]
    block: tuple

    @property
    def array(self):
        return np.array(self.layout, dtype=bool)

    @property
    def table_name(self):
        return "__layout_" + hashlib.sha256(self.array.tobytes() + repr(self.array.shape).encode()
                                            ).hexdigest()[:12]

    def preds(self):
        bq, bk = self.block
        idx = (S.fdiv(S.i, bq), S.fdiv(S.j, bk))
        if self.array.ndim == 3:
            idx = (S.h,) + idx
        e = sympy.Ne(S.table(self.table_name)[idx], 0)
        return (Pred("block_sparse", (("block", self.block), ("table", self.table_name),
                                      ("shape", self.array.shape)), e),)

    def __repr__(self):
        a = self.array
        return f"block_sparse(layout=<{'x'.join(map(str, a.shape))} bool, {int(a.sum())} set>, block={self.block})"


@dataclass(frozen=True, repr=False)
class RuntimeBlockSparse(Pattern):
    """Block sparsity whose layout is a tensor passed with each call, by name."""
    name: str
    block: tuple

    @property
    def captured(self):
        return (self.name,)

    def preds(self):
        # the call's layout is always [H, N/bq, M/bk] by then (a 2-D one is broadcast over heads)
        bq, bk = self.block
        e = sympy.Ne(S.table(self.name)[S.h, S.fdiv(S.i, bq), S.fdiv(S.j, bk)], 0)
        return (Pred("block_sparse", (("block", self.block), ("table", self.name), ("runtime", True)), e),)

    def __repr__(self):
        return f"block_sparse({self.name!r}, block={self.block})"


def block_sparse(layout, block):
    """Block sparsity: layout[qb, kb] (or layout[h, qb, kb]) allows query block qb to attend
    to key block kb; blocks are `block = (bq, bk)` tokens. A layout given as an array is
    static (compiled in); a layout given as a name is a bool tensor passed with each call by
    that keyword (``kern(q, k, v, layout=...)``), [N/bq, M/bk] or [H, N/bq, M/bk], and the
    kernels' key-tile tables are built from it per call (no recompile)."""
    w = "block_sparse: "
    block = C.int_tuple("block", block, length=2, min=1, what=w)
    if isinstance(layout, str):
        C.identifier("layout name", layout, what=w)
        return RuntimeBlockSparse(layout, block)
    try:
        arr = np.asarray(layout)
    except ValueError as e:
        raise ValueError(f"block_sparse: the layout's rows have different lengths ({e}); give a rectangular "
                         "[N/bq, M/bk] or [H, N/bq, M/bk] layout") from None
    except Exception as e:
        raise TypeError(f"block_sparse: layout must be array-like of bools, got {type(layout).__name__}") from e
    if arr.dtype != bool:
        if arr.dtype.kind not in "iu":
            raise TypeError(f"block_sparse: layout must hold bools (or 0/1), got dtype {arr.dtype}")
        bad = sorted(set(np.unique(arr).tolist()) - {0, 1})
        if bad:
            raise ValueError(f"block_sparse: layout must hold bools (or 0/1), got the values {bad[:5]}")
        arr = arr.astype(bool)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ValueError(f"block_sparse: layout must be [N/bq, M/bk] or [H, N/bq, M/bk], got shape {arr.shape}")
    return BlockSparse(_nested(arr), block)


def _nested(arr):
    return tuple(_nested(x) for x in arr) if arr.ndim > 1 else tuple(bool(x) for x in arr)


@dataclass(frozen=True, repr=False)
class Mask(Pattern):
    expr: Any
    captured: tuple = ()
    fn: Any = field(default=None, compare=False, hash=False)

    def preds(self):
        return (Pred("mask", (("captured", self.captured),), self.expr),)

    def __repr__(self):
        return f"mask({self.expr})"


def mask(fn):
    """A user mask: ``fn(b, h, q, k[, tensors...]) -> bool expression``, traced with symbolic
    indices. Extra parameters name tensors passed to the kernel call by keyword."""
    captured = lambda_params(fn, ("b", "h", "q", "k"), "mask")
    for n in captured:
        C.identifier("captured tensor", n, what="mask: ")
    e = trace(fn, (S.b, S.h, S.i, S.j), captured, "mask")
    if not S.is_boolean(e):
        if isinstance(e, sympy.Indexed):
            e = sympy.Ne(e, 0)          # a captured bool tensor used directly
        else:
            raise TypeError(f"mask: the function must return a boolean expression (comparisons, & | ~), "
                            f"got {e}")
    return Mask(e, captured, fn)


@dataclass(frozen=True, repr=False)
class And(Pattern):
    parts: tuple

    def leaves(self):
        for p in self.parts:
            yield from p.leaves()

    def preds(self):
        return tuple(x for p in self.parts for x in p.preds())

    def __repr__(self):
        return "(" + " & ".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True, repr=False)
class Or(Pattern):
    parts: tuple

    def leaves(self):
        for p in self.parts:
            yield from p.leaves()

    def preds(self):
        for p in self.leaves():
            if isinstance(p, (Routing, PerHead)):
                raise ValueError(f"{type(p).__name__.lower()} cannot be combined with `|` (in {self!r}); "
                                 "combine it with `&`, or put the union inside each branch")
        e = sympy.Or(*(sympy.And(*(x.expr for x in p.preds())) for p in self.parts))
        return (Pred("or", (), e),)

    def __repr__(self):
        return "(" + " | ".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True, repr=False)
class PerHead(Pattern):
    branches: tuple        # ((heads...), pattern)

    def leaves(self):
        for _, p in self.branches:
            yield from p.leaves()

    def preds(self):
        raise ValueError("per_head patterns are split into head groups by canonicalize")

    def __repr__(self):
        return "per_head({" + ", ".join(f"{hs}: {p!r}" for hs, p in self.branches) + "})"


def per_head(mapping):
    """Different patterns for different heads: ``{(0, 1): pattern_a, (2, 3): pattern_b}``.
    Every head of the call must appear in exactly one key."""
    w = "per_head: "
    if not isinstance(mapping, dict) or not mapping:
        raise TypeError(f"per_head takes a non-empty dict {{(head, ...): pattern}}, got {mapping!r}")
    branches, seen = [], {}
    for heads, pat in mapping.items():
        heads = C.int_tuple("heads", heads if isinstance(heads, (tuple, list)) else (heads,), min=0, what=w)
        if not isinstance(pat, Pattern):
            raise TypeError(f"per_head: heads {heads} map to {type(pat).__name__} ({pat!r}), not a pattern")
        if isinstance(pat, PerHead) or any(isinstance(x, PerHead) for x in _subpatterns(pat)):
            raise ValueError(f"per_head: heads {heads} map to another per_head; flatten them into one dict")
        for hh in heads:
            if hh in seen:
                raise ValueError(f"per_head: head {hh} appears in both {seen[hh]} and {heads}; "
                                 "each head belongs to one group")
            seen[hh] = heads
        branches.append((tuple(sorted(heads)), pat))
    return PerHead(tuple(sorted(branches, key=lambda x: x[0])))


def _subpatterns(p):
    if isinstance(p, (And, Or)):
        for x in p.parts:
            yield x
            yield from _subpatterns(x)


def split_heads(pattern):
    """Distribute `&` over per_head: [(heads or None for all, pattern without per_head)]."""
    if isinstance(pattern, PerHead):
        return [(hs, p) for hs, p in pattern.branches]
    if isinstance(pattern, And):
        ph = [p for p in pattern.parts if isinstance(p, PerHead)]
        if len(ph) > 1:
            raise ValueError(f"only one per_head may appear in a pattern, got {len(ph)} in {pattern!r}")
        if ph:
            rest = [p for p in pattern.parts if not isinstance(p, PerHead)]
            return [(hs, And(_flat(And, p) + tuple(rest))) for hs, p in ph[0].branches]
    if any(isinstance(x, PerHead) for x in _subpatterns(pattern)):
        raise ValueError(f"per_head must be at the top of a pattern or combined with `&`: {pattern!r}")
    return [(None, pattern)]

