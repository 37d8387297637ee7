"""Attention patterns: which (query, key) pairs may attend. Compose with ``&`` and ``|``.
This module holds the 1-D patterns, block sparsity and user masks, and exports the grid
patterns (grid_patterns.py) and the algebra (algebra.py) under the same names.

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

from ..ir import symbols as S
from ..ir.program import Pred
from . import _check as C
from .algebra import And, Or, Pattern, PerHead, per_head, split_heads  # noqa: F401 (the DSL's names)
from .grid_patterns import (ROUTE_IDX, ROUTE_MASK, Axial, Neighborhood2d, Routing,  # noqa: F401
                            Stripes, Window2d, axial, neighborhood2d, routing, stripes, window2d)
from .trace import lambda_params, trace


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
