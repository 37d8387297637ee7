"""The IR: a Program is what every pass reads and returns (frozen; passes build new ones).

A Program holds the bound dimensions, one HeadGroup per set of heads sharing a pattern, the
score expression, the normalizer, the post-normalization modifiers, and what the passes add:
the gathered key source (index maps), the block classification, the residual mask, the tile
plan and the cost. Expressions are sympy, over the symbols of ``attncc.ir.symbols``.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy

from . import symbols as S


@dataclass(frozen=True)
class Dims:
    """Bound problem sizes: q [B, H, N, d], k [B, H, M, d], v [B, H, M, dv]."""
    B: int
    H: int
    N: int
    M: int
    d: int
    dv: int

    def subs(self):
        return {S.B: self.B, S.H: self.H, S.N: self.N, S.M: self.M, S.D: self.d, S.DV: self.dv}


@dataclass(frozen=True)
class Pred:
    """One conjunct of a head group's mask: a boolean expression over (b, h, i, j).

    `kind` and `params` keep the structure the pattern came from (a window, an axis ...), so
    the gather pass can turn it into index maps; `expr` is its exact meaning.
    """
    kind: str
    params: tuple = ()
    expr: Any = sympy.true

    def param(self, key):
        return dict(self.params)[key]

    def __str__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.kind}({args}): {self.expr}"


@dataclass(frozen=True)
class Gather:
    """Index maps that make a structured pattern dense: group g, local query t, local key u.

    Query (g, t) is token q_token when q_valid; its keys are u in [0, Lk) with token k_token
    when k_valid. Groups share keys across their queries unless `per_query` (k_token uses t).
    """
    kind: str
    G: int
    Lq: int
    Lk: int
    q_token: Any
    q_valid: Any
    k_token: Any
    k_valid: Any
    per_query: bool = False

    def __str__(self):
        return (f"gather {self.kind}: G={self.G} Lq={self.Lq} Lk={self.Lk}"
                f"{' (keys per query)' if self.per_query else ''}\n"
                f"    query(g, t) = {self.q_token}  valid: {self.q_valid}\n"
                f"    key(g, {'t, ' if self.per_query else ''}u) = {self.k_token}  valid: {self.k_valid}")


EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True, eq=False)
class BlockMap:
    """Tile classes of a head group: classes[g, qa, ka] in {EMPTY, PARTIAL, FULL} for
    query atoms of `atom[0]` local queries and key atoms of `atom[1]` local keys; pairs[g, qa, ka]
    counts the tile's unmasked pairs (an upper bound where the mask reads run-time tensors).
    `static`: where the mask reads run-time tensors, the classes by its static conjuncts alone
    (FULL there is not FULL in `classes`); None otherwise."""
    atom: tuple
    classes: np.ndarray
    pairs: np.ndarray
    static: np.ndarray | None = None

    def __post_init__(self):
        self.classes.setflags(write=False)
        self.pairs.setflags(write=False)
        if self.static is not None:
            self.static.setflags(write=False)

    @property
    def digest(self):
        return hashlib.sha256(repr(self.atom).encode() + self.classes.tobytes()
                              + repr(self.classes.shape).encode()).hexdigest()[:16]

    def __eq__(self, other):
        return isinstance(other, BlockMap) and self.digest == other.digest

    def __hash__(self):
        return hash(self.digest)

    def coarsen(self, bq, bk):
        """Classes for tiles of bq x bk local indices (multiples of the atom)."""
        aq, ak = self.atom
        assert bq % aq == 0 and bk % ak == 0, (bq, bk, self.atom)
        fq, fk = bq // aq, bk // ak
        G, nq, nk = self.classes.shape
        pq, pk = -nq % fq, -nk % fk
        c = np.pad(self.classes, ((0, 0), (0, pq), (0, pk)), constant_values=EMPTY)
        c = c.reshape(G, (nq + pq) // fq, fq, (nk + pk) // fk, fk)
        anyset = (c != EMPTY).any(axis=(2, 4))
        # padding atoms beyond the extent are empty; a tile is full when its real atoms are full
        real = np.pad(np.ones_like(self.classes, dtype=bool), ((0, 0), (0, pq), (0, pk)))
        real = real.reshape(c.shape)
        allfull = ((c == FULL) | ~real).all(axis=(2, 4))
        return np.where(allfull & anyset, FULL, np.where(anyset, PARTIAL, EMPTY)).astype(np.int8)

    def counts(self):
        return {name: int((self.classes == v).sum()) for name, v in
                (("empty", EMPTY), ("partial", PARTIAL), ("full", FULL))}

    def __str__(self):
        c = self.counts()
        return (f"blocks atom={self.atom} grid={tuple(self.classes.shape)}: "
                f"{c['full']} full, {c['partial']} partial, {c['empty']} empty")


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes moved as sympy expressions, and the values they take for the plan."""
    flops: Any              # useful FLOPs (matmul work on unmasked pairs)
    flops_executed: Any     # FLOPs of the tiles the plan visits
    bytes: Any              # bytes moved between slow and fast memory
    values: tuple           # ((symbol, value), ...)
    useful_pairs: int
    exact: bool             # False when a mask reads run-time tensors (pairs is an upper bound)

    def value(self, expr):
        return int(sympy.sympify(expr).xreplace(dict(self.values)))

    def __str__(self):
        vals = ", ".join(f"{k}={v}" for k, v in self.values)
        return (f"flops    = {self.flops} = {self.value(self.flops):.4g}\n"
                f"executed = {self.flops_executed} = {self.value(self.flops_executed):.4g}\n"
                f"bytes    = {self.bytes} = {self.value(self.bytes):.4g}\n"
                f"  where {vals}; useful pairs {'' if self.exact else '<= '}{self.useful_pairs}")


@dataclass(frozen=True, eq=False)
class ConstTable:
    """A compile-time constant tensor read by an expression (a static block-sparse layout)."""
    name: str
    array: np.ndarray

    def __post_init__(self):
        self.array.setflags(write=False)

    @property
    def digest(self):
        return hashlib.sha256(self.array.tobytes() + repr(self.array.shape).encode()).hexdigest()[:16]

    def __eq__(self, other):
        return isinstance(other, ConstTable) and (self.name, self.digest) == (other.name, other.digest)

    def __hash__(self):
        return hash((self.name, self.digest))


@dataclass(frozen=True)
class Prologue:
    """A content-dependent step run before the main loop, producing runtime tables."""
    kind: str
    params: tuple
    outputs: tuple

    def param(self, key):
        return dict(self.params)[key]


@dataclass(frozen=True)
class Read:
    """One read of a captured tensor by a head group (the reads pass): `source` is the read
    as written over (b, h, i, j), `index` its indices over the group's local symbols
    (b, h, g, t, u); `use` says what its values do: "value" (a term of the score or the
    weights), "compare" (a mask or a comparison), "index" (an index of another tensor);
    `bounds` the interval bounds (lo, hi) of every index over the group's domain, None where
    they depend on a captured tensor's values."""
    name: str
    group: int
    source: Any
    index: tuple
    use: str
    bounds: tuple

    def __str__(self):
        spans = ", ".join("?" if b is None else f"{b[0]}..{b[1]}" for b in self.bounds)
        return f"read {self.source} ({self.use}) by group {self.group}: indices span [{spans}]"


@dataclass(frozen=True)
class HeadGroup:
    """The heads that share one pattern, its mask and (after the passes) its key source."""
    heads: tuple
    preds: tuple
    gather: Gather | None = None
    blocks: BlockMap | None = None
    residual: Any = None          # mask over (b, h, g, t, u) evaluated on partial tiles only
    plan: Any = None              # TilePlan after the plan pass

    @property
    def mask(self):
        return sympy.And(*(p.expr for p in self.preds))


@dataclass(frozen=True)
class Norm:
    """The normalizer: softmax | sigmoid (with bias) | linear (feature map, eps)."""
    kind: str
    bias: Any = None
    feature_map: str | None = None
    eps: float | None = None

    def __str__(self):
        if self.kind == "sigmoid":
            return f"sigmoid(score + {self.bias})"
        if self.kind == "linear":
            return f"linear(feature_map={self.feature_map!r}, eps={self.eps})"
        return "softmax"


@dataclass(frozen=True)
class Program:
    """One attention problem as the compiler sees it."""
    dims: Dims
    groups: tuple
    score: Any = S.score
    norm: Norm = Norm("softmax")
    post: tuple = ()
    scale: float = 1.0
    grid: tuple | None = None
    captured: tuple = ()          # names of tensors passed by keyword at call time
    constants: tuple = ()         # ConstTable
    prologues: tuple = ()         # Prologue
    reads: tuple = ()             # Read of every captured tensor, after the reads pass
    cost: Any = None              # Cost after the cost pass
    dtype: str = "float32"
    target: str = "reference"

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def with_group(self, k, **kw):
        groups = list(self.groups)
        groups[k] = dataclasses.replace(groups[k], **kw)
        return self.replace(groups=tuple(groups))

    def constant(self, name):
        for c in self.constants:
            if c.name == name:
                return c.array
        raise KeyError(name)

    def digest(self):
        """A stable hash of everything that decides the generated code."""
        parts = [repr(self.dims), sympy.srepr(self.score), repr(self.norm), repr(self.scale),
                 repr(self.grid), repr(self.captured), self.dtype, self.target]
        parts += [sympy.srepr(p) for p in self.post]
        parts += [f"{c.name}:{c.digest}" for c in self.constants]
        parts += [repr(p) for p in self.prologues]
        for grp in self.groups:
            parts += [repr(grp.heads)] + [sympy.srepr(p.expr) for p in grp.preds]
            if grp.gather is not None:
                parts.append(repr(grp.gather))
            if grp.blocks is not None:
                parts.append(grp.blocks.digest)
            if grp.residual is not None:
                parts.append(sympy.srepr(grp.residual))
            if grp.plan is not None:
                parts.append(grp.plan.to_json())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
