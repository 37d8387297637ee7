"""``ac.Attention``: a whole attention spec (pattern, score modifiers, normalizer, post
modifiers, scale), immutable, hashable and validated when built."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..ir import symbols as S
from . import patterns as P
from .algebra import subpatterns
from .modifiers import PostMod, ScoreMod
from .normalizers import Linear, Normalizer, Softmax

RESERVED = ("q", "k", "v", "return_lse")


@dataclass(frozen=True)
class Context:
    """What modifiers need to know about the pattern they are used with."""
    grid: tuple | None
    window2d: P.Window2d | None


def _tuple_of(value, cls, what):
    if isinstance(value, cls):
        return (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"Attention: {what} must be a {cls.__name__} or a tuple of them, got "
                        f"{type(value).__name__} ({value!r})")
    for x in value:
        if not isinstance(x, cls):
            raise TypeError(f"Attention: {what} must hold {cls.__name__} values (ac.{'alibi()' if cls is ScoreMod else 'clipped(...)'} ...), "
                            f"got {type(x).__name__} ({x!r})")
    return tuple(value)


@dataclass(frozen=True, init=False, repr=False)
class Attention:
    """An attention spec: ``Attention(pattern=ac.full(), normalizer=ac.softmax(),
    score_mods=(), post_mods=(), scale=None)``. scale=None means d ** -0.5 (linear attention
    takes no scale). Compile it with ``ac.compile`` or run it eagerly with ``ac.reference``."""
    pattern: P.Pattern
    normalizer: Normalizer
    score_mods: tuple
    post_mods: tuple
    scale: float | None

    def __init__(self, pattern=None, normalizer=None, score_mods=(), post_mods=(), scale=None):
        pattern = P.full() if pattern is None else pattern
        normalizer = Softmax() if normalizer is None else normalizer
        if not isinstance(pattern, P.Pattern):
            raise TypeError(f"Attention: pattern must be an attncc pattern (ac.full(), ac.window2d(...) ...), "
                            f"got {type(pattern).__name__} ({pattern!r})")
        if not isinstance(normalizer, Normalizer):
            raise TypeError(f"Attention: normalizer must be ac.softmax(), ac.sigmoid(...) or ac.linear(...), "
                            f"got {type(normalizer).__name__} ({normalizer!r})")
        score_mods = _tuple_of(score_mods, ScoreMod, "score_mods")
        post_mods = _tuple_of(post_mods, PostMod, "post_mods")
        if scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
                raise TypeError(f"Attention: scale must be a number or None (d ** -0.5), got "
                                f"{type(scale).__name__} ({scale!r})")
            if not scale > 0:
                raise ValueError(f"Attention: scale must be a positive number or None (d ** -0.5), got {scale!r}")
            scale = float(scale)
        for k, v in (("pattern", pattern), ("normalizer", normalizer), ("score_mods", score_mods),
                     ("post_mods", post_mods), ("scale", scale)):
            object.__setattr__(self, k, v)
        self._validate()

    def _validate(self):
        ctx = self.context()                      # raises on inconsistent grids
        routes = sorted({repr(p) for p in self.pattern.leaves() if isinstance(p, P.Routing)})
        if len(routes) > 1:
            raise ValueError(f"Attention: one spec may route only one way, got {', '.join(routes)}; keep one "
                             "routing pattern")
        for hs, pat in P.split_heads(self.pattern):
            pat.preds()                           # raises on invalid compositions
        if isinstance(self.normalizer, Linear):
            bad = [p for p in self.pattern.leaves() if not isinstance(p, (P.Full, P.Causal, P.Window2d))]
            if bad or any(isinstance(p, (P.Or, P.PerHead)) for p in [self.pattern, *subpatterns(self.pattern)]):
                raise ValueError(f"linear attention composes only with full, causal and window2d (joined by &), "
                                 f"got {self.pattern!r}: its state sums over the keys a pattern selects, which "
                                 "only those patterns keep cheap; use softmax or sigmoid for other patterns")
            if self.score_mods or self.post_mods:
                raise ValueError(f"linear attention has no scores or weights to modify; remove score_mods "
                                 f"{self.score_mods} and post_mods {self.post_mods}")
            if self.scale is not None:
                raise ValueError(f"linear attention applies its feature map to the raw q and k and takes no "
                                 f"scale; got scale={self.scale}")
        for m in self.score_mods:
            m.expr(S.score, ctx)                     # raises when a modifier does not fit the pattern
        for m in self.post_mods:
            m.expr(ctx)
        clash = [n for n in self.captured() if n in RESERVED]
        if clash:
            raise ValueError(f"Attention: captured tensor names {clash} clash with the kernel's own "
                             f"arguments {RESERVED}; rename them")

    def context(self):
        wins = {p for p in self.pattern.leaves() if isinstance(p, P.Window2d)}
        return Context(self.pattern.grid, wins.pop() if len(wins) == 1 else None)

    def captured(self):
        """Names of the tensors a call must pass by keyword, in a stable order."""
        names = []
        for p in self.pattern.leaves():
            names += list(getattr(p, "captured", ()))
        for m in self.score_mods + self.post_mods:
            names += list(m.captured)
        return tuple(dict.fromkeys(names))

    def __repr__(self):
        parts = [f"pattern={self.pattern!r}", f"normalizer={self.normalizer!r}"]
        if self.score_mods:
            parts.append(f"score_mods={self.score_mods!r}")
        if self.post_mods:
            parts.append(f"post_mods={self.post_mods!r}")
        if self.scale is not None:
            parts.append(f"scale={self.scale}")
        return "Attention(" + ", ".join(parts) + ")"
