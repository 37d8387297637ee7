"""cost: FLOPs and bytes moved, as sympy expressions over the problem's sizes and the plan,
and their values for this program.

Symbols: B batch, Hg heads of a group, P useful (unmasked) pairs per (b, h), Pe pairs in the
tiles the plan visits, Tv tiles visited, Nq padded queries, bn key tile, d / dv head dims,
e element bytes. Softmax/sigmoid: 2 (d + dv) FLOPs per pair (QK^T and PV); the K/V tiles are
re-read once per visiting query tile. Linear: state and read-out cost 2 d dv per key and per
query, plus the quadratic form on partial tiles.
"""
import sympy

from ..ir import symbols as S
from ..ir.program import EMPTY, PARTIAL, Cost
from .classify_blocks import split_static

B, Hg, P, Pe, Tv, Nq, bn, e, Ppart, Mk = sympy.symbols("B Hg P Pe Tv Nq bn e Ppart Mk", integer=True,
                                                       nonnegative=True)
d, dv = S.D, S.DV

ELEM_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def _group_terms(prog, grp):
    gat, plan, bm_ = grp.gather, grp.plan, grp.plan.block_m
    tiles = grp.blocks.coarsen(plan.block_m, plan.block_n)
    visited = int((tiles != EMPTY).sum())
    vals = {Hg: len(grp.heads), P: int(grp.blocks.pairs.sum()), Tv: visited,
            Pe: visited * plan.block_m * plan.block_n, Nq: gat.G * (-(-gat.Lq // bm_)) * bm_,
            bn: plan.block_n, Ppart: int(grp.blocks.pairs[grp.blocks.classes == PARTIAL].sum()),
            Mk: gat.G * gat.Lk}
    if prog.norm.kind == "linear":
        flops = 2 * B * Hg * (Mk * d * dv + Nq * d * dv + Ppart * (d + dv))
        executed = flops
        moved = e * B * Hg * (Nq * (d + dv) + Mk * (d + dv))
    else:
        flops = 2 * B * Hg * P * (d + dv)
        executed = 2 * B * Hg * Pe * (d + dv)
        moved = e * B * Hg * (Nq * (d + dv) + Tv * bn * (d + dv))
    return flops, executed, moved, vals


def cost(prog):
    flops = executed = moved = sympy.Integer(0)
    values = {B: prog.dims.B, d: prog.dims.d, dv: prog.dims.dv, e: ELEM_BYTES.get(prog.dtype, 4)}
    pairs, exact = 0, True
    for k, grp in enumerate(prog.groups):
        f, x, m, vals = _group_terms(prog, grp)
        if len(prog.groups) > 1:            # one set of symbols per head group
            ren = {s: sympy.Symbol(f"{s}_{k}", integer=True, nonnegative=True) for s in vals}
            f, x, m = f.xreplace(ren), x.xreplace(ren), m.xreplace(ren)
            vals = {ren[s]: v for s, v in vals.items()}
        flops, executed, moved = flops + f, executed + x, moved + m
        values.update(vals)
        pairs += int(grp.blocks.pairs.sum()) * len(grp.heads)
        _, dynamic = split_static(grp.residual, prog)
        exact &= not dynamic
    pairs = pairs // max(1, prog.dims.H)      # per (b, h), averaged over heads
    return prog.replace(cost=Cost(flops, executed, moved, tuple(sorted(values.items(), key=lambda kv: str(kv[0]))),
                                  pairs, exact))
