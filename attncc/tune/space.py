"""The search space: candidate plans per backend, built from the TilePlan knobs that matter on
that backend, snapped to each head group's block atoms and pruned by the fast-memory model
(ir/plan.py fits: L2 per core for "tvm", shared memory per SM for the Triton targets "sm_80"
and "sm_90", at the dtype's element size) before anything compiles.

A candidate is a tuple of plans, one per head group: one knob setting applied to every group
(block sizes snapped to that group's atoms and extents). The default plans come first, then
the others by distance from the default, so a search cut short by its budget has tried the
nearest neighbours of the default.
"""
import itertools
import math
from dataclasses import dataclass

from ..ir.plan import FAST_MEMORY, fits
from ..passes.classify_blocks import atom
from ..passes.plan import ELEM_BYTES

# the knobs of the TVM CPU backend: query tile, key tile, unrolled rows, vector lanes
TVM_SPACE = {
    "full": dict(block_m=(16, 32, 48, 64, 96, 128, 192, 256), block_n=(16, 32, 64, 128, 256, "whole"),
                 unroll=(4, 5, 6), vector=(8, 16)),
    "fast": dict(block_m=("half", "default", "double"), block_n=("half", "default", "double", "whole"),
                 unroll=(4, 5, 6), vector=("default",)),
}
# the knobs of the Triton GPU backend: query tile, key tile, warps, software-pipeline stages
# ("less" / "more": the default's stages minus / plus one)
TRITON_SPACE = {
    "full": dict(block_m=(16, 32, 64, 128), block_n=(16, 32, 64, 128), num_warps=(4, 8), num_stages=(2, 3, 4)),
    "fast": dict(block_m=("half", "default", "double"), block_n=("half", "default", "double"), num_warps=(4, 8),
                 num_stages=("less", "default", "more")),
}
SPACES = {"tvm": TVM_SPACE, "sm_80": TRITON_SPACE, "sm_90": TRITON_SPACE}
STEP = {"less": -1, "more": 1}
MODES = ("fast", "full")


class Untunable(NotImplementedError):
    """A program the tuner has no search space for (the message says why)."""


@dataclass(frozen=True)
class Space:
    """The candidates (default first) and the ones the fast-memory model pruned."""
    candidates: tuple
    pruned: tuple

    def __len__(self):
        return len(self.candidates)


def _snap(want, extent, default):
    a = atom(extent)
    whole = -(-extent // a) * a
    if want == "whole":
        return whole
    if want in ("half", "double", "default"):
        want = {"half": default // 2, "double": default * 2, "default": default}[want]
    return a * max(1, min(round(want / a), whole // a))


def _setting(grp, p0, knobs, gpu=False):
    """Apply one knob setting to a group's default plan."""
    gat = grp.gather
    kw = {}
    # per-query key lists are one tile; linear attention's tiles are its chunks; the Triton
    # routed kernel's key tile is one routed region whatever block_n says
    if not gat.per_query and not (gpu and gat.kind == "routing") and "block_n" in knobs:
        kw["block_n"] = _snap(knobs["block_n"], gat.Lk, p0.block_n)
    if "block_m" in knobs:
        kw["block_m"] = _snap(knobs["block_m"], gat.Lq, p0.block_m)
    for k in ("unroll", "vector", "num_warps", "num_stages"):
        if k in knobs:
            want, base = knobs[k], getattr(p0, k)
            kw[k] = base if want == "default" else max(1, base + STEP[want]) if want in STEP else want
    return p0.replace(**kw)


def _distance(cand, default):
    d = 0.0
    for p, q in zip(cand, default):
        for k in ("block_m", "block_n", "unroll", "vector", "num_warps", "num_stages"):
            a, b = getattr(p, k), getattr(q, k)
            d += abs(math.log2(a / b))
    return d


def search_space(prog, mode="fast", space=None):
    """The candidates for a planned Program (the default plans in its groups)."""
    if mode not in MODES:
        raise ValueError(f"tuning mode must be one of {MODES}, got {mode!r}")
    if prog.norm.kind == "linear":
        raise Untunable("tuning linear attention is not supported yet (its chunk plan is fixed); "
                                  "use tune=False")
    table = space or SPACES.get(prog.target)
    if table is None:
        raise Untunable(f"no tuning search space for target {prog.target!r}; tunable targets: "
                                  f"{', '.join(SPACES)}")
    knobs = table[mode] if mode in table else table
    gpu = FAST_MEMORY[prog.target].kind == "smem"
    elem = ELEM_BYTES.get(prog.dtype, 4) if gpu else 4      # GPU tiles are staged in the input dtype
    default = tuple(g.plan for g in prog.groups)
    names = list(knobs)
    seen, cands, pruned = {default}, [default], []
    for values in itertools.product(*(knobs[n] for n in names)):
        setting = dict(zip(names, values))
        cand = tuple(_setting(g, p0, setting, gpu) for g, p0 in zip(prog.groups, default))
        if cand in seen:
            continue
        seen.add(cand)
        if all(fits(p, prog.dims.d, prog.dims.dv, prog.target, elem) for p in cand):
            cands.append(cand)
        else:
            pruned.append(cand)
    cands[1:] = sorted(cands[1:], key=lambda c: _distance(c, default))
    return Space(tuple(cands), tuple(pruned))
