"""canonicalize: Attention spec + bound shapes -> Program.

Splits per_head patterns into head groups, turns each pattern into predicates over
(b, h, i, j), applies the score modifiers in order, resolves defaults (scale d ** -0.5,
sigmoid bias -log M) and records the tensors a call must pass.
"""
import math

import numpy as np
import sympy

from ..dsl import patterns as P
from ..dsl.normalizers import Linear, Sigmoid
from ..ir import symbols as S
from ..ir.program import ConstTable, Norm, HeadGroup, Program, Prologue


def canonicalize(spec, dims, dtype="float32", target="reference"):
    pat = spec.pattern
    grid = pat.grid
    if grid is not None and not (dims.N == dims.M == math.prod(grid)):
        raise ValueError(f"the pattern lives on grid {grid} ({math.prod(grid)} tokens) but q has N={dims.N} "
                         f"and k has M={dims.M} tokens; pass q and k with N = M = {math.prod(grid)}")
    subs = dims.subs()
    groups, constants, prologues = [], {}, []
    branches = P.split_heads(pat)
    covered = [hh for hs, _ in branches if hs is not None for hh in hs]
    if branches[0][0] is not None:
        bad = sorted(hh for hh in covered if hh >= dims.H)
        missing = sorted(set(range(dims.H)) - set(covered))
        if bad or missing:
            raise ValueError(f"per_head covers heads {sorted(covered)} but the call has H={dims.H} heads "
                             f"(missing {missing}, out of range {bad}); map every head 0..{dims.H - 1} once")
    for hs, p in branches:
        preds = []
        for pr in p.preds():
            preds.append(pr.__class__(pr.kind, pr.params, sympy.sympify(pr.expr).subs(subs)))
        for leaf in p.leaves():
            if isinstance(leaf, P.BlockSparse):
                constants[leaf.table_name] = ConstTable(leaf.table_name, _layout(leaf, dims))
            if isinstance(leaf, P.Routing):
                pro = Prologue("routing", (("grid", leaf._grid), ("regions", leaf.regions), ("topk", leaf.topk)),
                               (P.ROUTE_MASK, P.ROUTE_IDX))
                if prologues and prologues[0] != pro:
                    raise ValueError(f"one spec may route only one way, got {prologues[0]} and {pro}")
                if not prologues:
                    prologues.append(pro)
        heads = tuple(range(dims.H)) if hs is None else hs
        groups.append(HeadGroup(heads=heads, preds=tuple(preds)))

    ctx = spec.context()
    score = S.score
    for m in spec.score_mods:
        score = m.expr(score, ctx)
    score = score.subs(subs)
    post = tuple(sympy.sympify(m.expr(ctx)).subs(subs) for m in spec.post_mods)

    nz = spec.normalizer
    if isinstance(nz, Sigmoid):
        norm = Norm("sigmoid", bias=nz.bias if nz.bias is not None else -math.log(dims.M))
    elif isinstance(nz, Linear):
        norm = Norm("linear", feature_map=nz.feature_map, eps=nz.eps)
    else:
        norm = Norm("softmax")
    scale = 1.0 if norm.kind == "linear" else (spec.scale if spec.scale is not None else dims.d ** -0.5)
    return Program(dims=dims, groups=tuple(groups), score=score, norm=norm, post=post, scale=scale,
                   grid=grid, captured=spec.captured(), constants=tuple(constants.values()),
                   prologues=tuple(prologues), dtype=dtype, target=target)


def _layout(leaf, dims):
    arr = leaf.array
    bq, bk = leaf.block
    want = (-(-dims.N // bq), -(-dims.M // bk))
    if arr.shape[-2:] != want or (arr.ndim == 3 and arr.shape[0] != dims.H):
        full = ((dims.H,) if arr.ndim == 3 else ()) + want
        raise ValueError(f"block_sparse layout has shape {arr.shape} but N={dims.N}, M={dims.M}, H={dims.H} with "
                         f"block {leaf.block} need {full}; build the layout for the call's shapes")
    return np.ascontiguousarray(arr)
