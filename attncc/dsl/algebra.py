"""The pattern algebra: the Pattern base class, its ``&`` / ``|`` compositions and per-head
patterns (``per_head``, ``split_heads``). The patterns themselves live in patterns.py (1-D,
block-sparse, masks) and grid_patterns.py (2-D and N-D grid geometry)."""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.program import Pred
from . import _check as C


class Pattern:
    """Base class of attention patterns."""

    in_union = True         # may be an operand of `|` (routing and per_head may not)

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
            if not p.in_union:
                raise ValueError(f"{type(p).__name__.lower()} cannot be combined with `|` (in {self!r}); "
                                 "combine it with `&`, or put the union inside each branch")
        e = sympy.Or(*(sympy.And(*(x.expr for x in p.preds())) for p in self.parts))
        return (Pred("or", (), e),)

    def __repr__(self):
        return "(" + " | ".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True, repr=False)
class PerHead(Pattern):
    branches: tuple        # ((heads...), pattern)
    in_union = False

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
        if isinstance(pat, PerHead) or any(isinstance(x, PerHead) for x in subpatterns(pat)):
            raise ValueError(f"per_head: heads {heads} map to another per_head; flatten them into one dict")
        for hh in heads:
            if hh in seen:
                raise ValueError(f"per_head: head {hh} appears in both {seen[hh]} and {heads}; "
                                 "each head belongs to one group")
            seen[hh] = heads
        branches.append((tuple(sorted(heads)), pat))
    return PerHead(tuple(sorted(branches, key=lambda x: x[0])))


def subpatterns(p):
    """Every pattern nested in an & or | composition (depth first)."""
    if isinstance(p, (And, Or)):
        for x in p.parts:
            yield x
            yield from subpatterns(x)


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
    if any(isinstance(x, PerHead) for x in subpatterns(pattern)):
        raise ValueError(f"per_head must be at the top of a pattern or combined with `&`: {pattern!r}")
    return [(None, pattern)]
