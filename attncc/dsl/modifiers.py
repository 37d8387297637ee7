"""Score modifiers (applied to s_ij before the normalizer) and post-normalization modifiers
(applied to the weights of unmasked pairs after it). Each builds its IR expression from a
context holding the spec's grid and window."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from ..ir import grid as G
from ..ir import symbols as S
from . import _check as C
from .trace import lambda_params, trace


class ScoreMod:
    """Base class of score modifiers: ``expr(score_expr, ctx)`` returns the modified score."""
    captured = ()


class PostMod:
    """Base class of post-normalization modifiers: ``expr(ctx)`` is an expression of weight."""
    captured = ()


@dataclass(frozen=True)
class RelPosBias(ScoreMod):
    name: str
    window: tuple

    @property
    def captured(self):
        return (self.name,)

    def expr(self, s, ctx):
        win = ctx.window2d
        if win is None or win.window != self.window:
            raise ValueError(f"rel_pos_bias(window={self.window}) needs a window2d pattern with the same "
                             f"window in the spec, found {win!r}")
        (R, Cc), (wr, wc), (sr, sc) = win._grid, win.window, win.shift
        ci, cj = G.coords(S.i, win._grid), G.coords(S.j, win._grid)
        loc = [[sympy.Mod(sympy.Mod(c[a] - sh, size) , w) for a, (size, w, sh) in
                enumerate(((R, wr, sr), (Cc, wc, sc)))] for c in (ci, cj)]
        idx = (loc[0][0] - loc[1][0] + wr - 1) * (2 * wc - 1) + (loc[0][1] - loc[1][1] + wc - 1)
        return s + S.table(self.name)[idx, S.h]

    def __repr__(self):
        return f"rel_pos_bias({self.name!r}, window={self.window})"


def rel_pos_bias(name, window):
    """Swin's relative position bias: a table [(2*wr-1)*(2*wc-1), H] passed by keyword `name`,
    indexed by the pair's offset in local window coordinates (the window2d's shifted frame)."""
    w = "rel_pos_bias: "
    return RelPosBias(C.identifier("name", name, what=w), C.int_tuple("window", window, length=2, min=1, what=w))


@dataclass(frozen=True)
class Alibi(ScoreMod):
    def expr(self, s, ctx):
        slope = sympy.Integer(2) ** (-8 * (S.h + 1) / S.H)
        return s - slope * sympy.Abs(S.i - S.j)

    def __repr__(self):
        return "alibi()"


def alibi():
    """ALiBi: adds -slope_h * |i - j| with slope_h = 2 ** (-8 (h + 1) / H)."""
    return Alibi()


@dataclass(frozen=True)
class Softcap(ScoreMod):
    cap: float

    def expr(self, s, ctx):
        return self.cap * sympy.tanh(s / self.cap)

    def __repr__(self):
        return f"softcap({self.cap})"


def softcap(c):
    """Soft-capping: s = c * tanh(s / c), c > 0."""
    c = C.number("c", c, what="softcap: ")
    if not c > 0:
        raise ValueError(f"softcap: c must be > 0, got {c}")
    return Softcap(c)


@dataclass(frozen=True)
class UserScoreMod(ScoreMod):
    body: Any                         # expression over S.score, b, h, i, j and captured tensors
    captured: tuple = ()
    fn: Any = field(default=None, compare=False, hash=False)

    def expr(self, s, ctx):
        return self.body.subs(S.score, s)

    def __repr__(self):
        return f"score_mod({self.body})"


def score_mod(fn):
    """A user score modifier, FlexAttention's argument order:
    ``fn(score, b, h, q, k[, tensors...]) -> new score``; extra parameters name tensors passed
    to the kernel call by keyword (e.g. ``lambda s, b, h, q, k, bias: s + bias[h, q, k]``)."""
    captured = lambda_params(fn, ("score", "b", "h", "q", "k"), "score_mod")
    for n in captured:
        C.identifier("captured tensor", n, what="score_mod: ")
    e = trace(fn, (S.score, S.b, S.h, S.i, S.j), captured, "score_mod")
    if S.is_boolean(e):
        raise TypeError(f"score_mod: the function must return a number, got the boolean {e}; "
                        "use ac.mask for masks")
    return UserScoreMod(e, captured, fn)


@dataclass(frozen=True)
class Decay2d(PostMod):
    grid: tuple
    gamma: str = "gamma"

    @property
    def captured(self):
        return (self.gamma,)

    def expr(self, ctx):
        if ctx.grid is not None and ctx.grid != self.grid:
            raise ValueError(f"decay2d(grid={self.grid}) does not match the pattern's grid {ctx.grid}")
        ci, cj = G.coords(S.i, self.grid), G.coords(S.j, self.grid)
        dist = sum(sympy.Abs(a - c) for a, c in zip(ci, cj))
        return S.weight * S.table(self.gamma)[S.h] ** dist

    def __repr__(self):
        return f"decay2d(grid={self.grid}, gamma={self.gamma!r})"


def decay2d(grid, gamma="gamma"):
    """RMT's Manhattan decay: w_ij *= gamma[h] ** (|r_i - r_j| + |c_i - c_j|); `gamma` names a
    tensor [H] passed by keyword."""
    w = "decay2d: "
    return Decay2d(C.int_tuple("grid", grid, length=2, min=1, what=w), C.identifier("gamma", gamma, what=w))


@dataclass(frozen=True)
class Clipped(PostMod):
    zeta: float
    gamma: float

    def expr(self, ctx):
        return sympy.Min(sympy.Max((self.zeta - self.gamma) * S.weight + self.gamma, 0), 1)

    def __repr__(self):
        return f"clipped(zeta={self.zeta}, gamma={self.gamma})"


def clipped(zeta, gamma):
    """Clipped softmax: w = clip((zeta - gamma) * w + gamma, 0, 1), with zeta > gamma
    (typically zeta >= 1, gamma <= 0)."""
    w = "clipped: "
    zeta, gamma = C.number("zeta", zeta, what=w), C.number("gamma", gamma, what=w)
    if not zeta > gamma:
        raise ValueError(f"clipped: zeta ({zeta}) must be greater than gamma ({gamma})")
    return Clipped(zeta, gamma)
