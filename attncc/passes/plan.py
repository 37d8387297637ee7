"""plan: a default TilePlan per head group for the program's target.

Tiles are whole multiples of the block classification's atoms (a group whose extent is
small is one tile); the key tile is halved, then the query tile, until the working set fits
the target's fast memory (FAST_MEMORY). The autotuner (later) only ever replaces plans.
"""
import numpy as np

from ..ir.plan import FAST_MEMORY, TilePlan, fits, softmax_lanes
from ..ir.program import EMPTY, FULL, PARTIAL
from .classify_blocks import atom

DEFAULT_TILE = 64


def _tile(extent, want):
    a = atom(extent)
    return a * max(1, min(want // a, -(-extent // a)))


# per-target defaults: query tile, key tile (a short key extent is one tile), the CPU
# micro-kernel's vector lanes and unrolled rows (measured on the 2-core Zen3 machines: 64 x 64
# tiles at N=4096, dense or banded (48-row tiles straddle a 64-key band edge: 15% slower on a
# sliding window); one tile for ViT's 197 queries and keys, 6 x 16 register tiles there)
# A softmax group whose key tiles of 256 are all FULL (full attention over long keys) takes
# 256-key tiles instead: fewer per-tile row reductions and accumulator rescales (Zen 4,
# AVX-512, 64-query tiles, d64, 64 -> 256 keys: B1 H8 N4096 1.10-1.11x, B4 H12 N1024 1.07x,
# B8 H12 N512 1.07x; sigmoid, which has no running max, gains nothing), when that pads the keys
# by at most 1/16 more than the 64-key tiles do. Where a quarter or more of the tiles are
# PARTIAL (banded masks), 4 unrolled rows at most (the masked sweep's registers; Zen 4, 64 x 64
# tiles, B1 H8 N4096 d64, u4 against u6: sliding window 64 1.07x, 256 1.09-1.10x, 1024 1.01x;
# causal, 3% PARTIAL, 1.00x). Both measured on Zen 4 only: on Zen 3 (AVX2) 64-row tiles
# unroll 4 rows anyway, and the shipped Zen 3 records keep their 64 x 64 plans at N=4096.
DEFAULTS = {"tvm": dict(block_m=64, block_n=64, whole_keys=256, whole_queries=256, vector=16, unroll=6,
                        partial_unroll=4, dense_block_n=256)}
# Triton on NVIDIA GPUs; the shared-memory model (ir/plan.py) prunes what does not fit.
# sm_80 (not measured yet): 128-query x 64-key tiles, K and V pipelined over 3 stages, 4 warps
# (8 for head dims over 64). sm_90, from bench/gpu_plans.py on an H100 (fp16, B8 H16 N4096 and
# 112x112 grids; bench/results/gpu_plans.md): 2 stages everywhere; 64 x 64 tiles and 4 warps
# for head dims <= 64 (12% faster than 128 x 64 x 3 stages dense, 36% on a sliding window),
# 128 x 64 and 4 warps above (19%); 8 warps for gathered sources with PARTIAL tiles (shifted
# windows: 4 warps spill in the masked sweep, 8 are 1.5x faster; without PARTIAL tiles, Swin's
# unshifted windows and axial lines, 8 warps are 1.1x and 1.5x slower)
DEFAULTS["sm_80"] = dict(block_m=128, block_n=64, num_warps=4, wide_warps=8, num_stages=3)
DEFAULTS["sm_90"] = dict(block_m=64, wide_block_m=128, block_n=64, num_warps=4, wide_warps=4, partial_warps=8,
                         num_stages=2)
# linear attention's key chunk when no chunk needs the quadratic form
LINEAR_WHOLE_KEYS = 256
# linear attention's chunk on CPU when each query's FULL keys are a growing prefix (causal)
# and there are tasks (batch x head x group) for more than one core: the TVM kernel then scans
# the chunks with one running state per task, so a chunk of one atom costs no state traffic
# and makes the diagonal's quadratic form 4x smaller than chunks of 64 (B1 H8 N4096 d64:
# 16: 6.4 ms, 32: 7.2, 64: 7.8). One task (B1 H1) runs the tiled schedule, chunks of 64
# (1.09 ms; the scan, one core: 1.62)
LINEAR_SCAN_CHUNK = {"tvm": 16}
SCAN_TASKS = 2
# bytes per element of the tiles a GPU kernel stages, by input dtype (CPU kernels work in fp32)
ELEM_BYTES = {"float16": 2, "bfloat16": 2}


def full_prefix(classes):
    """Whether the FULL blocks of every query row of `classes` [G, rows, cols] are its first n,
    n not decreasing along the rows (full attention, causal)."""
    full = classes == FULL
    n = full.sum(-1)
    return bool((full == (np.arange(full.shape[-1]) < n[..., None])).all() and (np.diff(n, axis=-1) >= 0).all())


def linear_scans(classes, tasks):
    """Whether a CPU linear-attention kernel of `tasks` (batch, head, group) tasks scans its
    chunks with a running state (tile classes `classes`)."""
    return tasks >= SCAN_TASKS and full_prefix(classes)


def _elem_bytes(prog):
    return ELEM_BYTES.get(prog.dtype, 4) if FAST_MEMORY[prog.target].kind == "smem" else 4


def _layout_tiles(grp, bm, bn):
    """Tiles that do not straddle a run-time block-sparse layout's blocks: the default tile
    when it divides the block, else the block (32 to 128 tokens a side, whole atoms), so that
    each call's layout makes whole tiles EMPTY or FULL (tiles.py), none half set."""
    if grp.gather.kind != "dense":
        return bm, bn

    def fit(tile, block, extent):
        return tile if block % tile == 0 or not (32 <= block <= 128 and block % atom(extent) == 0) else block
    for p in grp.preds:
        if p.kind == "block_sparse" and dict(p.params).get("runtime"):
            bq, bk = p.param("block")
            bm, bn = fit(bm, bq, grp.gather.Lq), fit(bn, bk, grp.gather.Lk)
    return bm, bn


def _dense_keys(grp, bm, bn, want):
    """The key tile of a softmax group: `want` ("dense_block_n") when every tile of bm x want is
    FULL and it pads the keys by at most 1/16 more than `bn`, else `bn`."""
    lk = grp.gather.Lk
    big = _tile(lk, want)
    def padded(t):
        return -(-lk // t) * t
    if big <= bn or padded(big) * 16 > padded(_tile(lk, bn)) * 17:
        return bn
    return big if (grp.blocks.coarsen(_tile(grp.gather.Lq, bm), big) == FULL).all() else bn


def default_plan(grp, dims, target, elem_bytes=4, linear=False, softmax=False):
    gat = grp.gather
    want = DEFAULTS.get(target, {})
    bn = want.get("block_n", DEFAULT_TILE)
    if gat.Lk <= want.get("whole_keys", 0) or gat.per_query:      # a query's own keys are one tile
        bn = -(-gat.Lk // atom(gat.Lk)) * atom(gat.Lk)
    wide = max(dims.d, dims.dv) > 64
    bm = want.get("wide_block_m" if wide else "block_m", want.get("block_m", DEFAULT_TILE))
    if gat.Lq <= want.get("whole_queries", 0):         # a short query extent is one tile (less padding)
        bm = -(-gat.Lq // atom(gat.Lq)) * atom(gat.Lq)
    if softmax and "dense_block_n" in want and not (gat.Lk <= want.get("whole_keys", 0) or gat.per_query):
        bn = _dense_keys(grp, bm, bn, want["dense_block_n"])
    bm, bn = _layout_tiles(grp, bm, bn)
    chunk = TilePlan().chunk
    if linear:
        # linear attention: query and key tiles are the chunks (a state per key chunk, the
        # quadratic form only on the chunks the mask cuts); with nothing to cut (full
        # attention, windows), key chunks of 256 keep the prefix of chunk states short
        cls = grp.blocks.classes
        if (cls == PARTIAL).any() and linear_scans(cls, dims.B * len(grp.heads) * gat.G):
            chunk = LINEAR_SCAN_CHUNK.get(target, chunk)
        bm = bn = chunk
        if not (cls == PARTIAL).any():
            bn = LINEAR_WHOLE_KEYS
    plan = TilePlan(block_m=_tile(gat.Lq, bm), block_n=_tile(gat.Lk, bn), chunk=chunk)
    if "vector" in want:
        cls = grp.blocks.coarsen(plan.block_m, plan.block_n)
        banded = (cls == PARTIAL).sum() * 4 >= (cls != EMPTY).sum()
        plan = plan.replace(vector=want["vector"] if softmax_lanes(plan.block_n) == 16 else 8,
                            unroll=_unroll(plan.block_m, want["partial_unroll" if banded else "unroll"]))
    if "num_warps" in want:
        plan = plan.replace(num_warps=want["wide_warps"] if wide else want["num_warps"], num_stages=want["num_stages"])
    aq, ak = atom(gat.Lq), atom(gat.Lk)
    while not fits(plan, dims.d, dims.dv, target, elem_bytes):
        if plan.block_n > ak:
            plan = plan.replace(block_n=max(ak, plan.block_n // 2 // ak * ak))
        elif plan.block_m > aq:
            plan = plan.replace(block_m=max(aq, plan.block_m // 2 // aq * aq))
        elif plan.num_stages > 1:
            plan = plan.replace(num_stages=plan.num_stages - 1)
        else:
            raise ValueError(f"no tile of head dims d={dims.d}, dv={dims.dv} fits {FAST_MEMORY[target].name} "
                             f"({FAST_MEMORY[target].bytes} bytes) for target {target!r}")
    if "partial_warps" in want and gat.kind != "dense":
        if (grp.blocks.coarsen(plan.block_m, plan.block_n) == PARTIAL).any():
            plan = plan.replace(num_warps=want["partial_warps"])
    return plan


def _unroll(bm, most=6):
    """The CPU micro-kernel's unrolled query rows for a query tile of `bm`: `most` (6) when that pads
    the tile by at most 1% (AVX2's 16 vector registers; on Zen3 208 -> 210 is 11% faster than
    4 rows, 64 -> 66 3% slower) or 5% (AVX-512's 32: 64 -> 66 9% faster than 4 rows, 128 -> 130
    7%), else 5 when that pads it by at most 2% (Swin's 49-token windows, 5 x 16 register tiles:
    8.4 ms against 9.6 by 6 rows and 10.5 by 4 x 8; N=50: 0.71 ms against 0.76 and 1.10), else 4."""
    from ..tune.device import cpu_flags
    room = 0.05 if "avx512f" in cpu_flags() else 0.01
    for mr, pad in ((most, room), (5, 0.02)):
        if -bm % mr <= bm * pad:
            return mr
    return 4


def plan(prog, plans=None):
    """Attach a TilePlan to every head group: `plans` (a TilePlan, or one per group) when
    given, else the target's default."""
    for k, grp in enumerate(prog.groups):
        if plans is None:
            p = default_plan(grp, prog.dims, prog.target, _elem_bytes(prog), prog.norm.kind == "linear",
                                 prog.norm.kind == "softmax")
        else:
            p = plans[k] if isinstance(plans, (tuple, list)) else plans
        aq, ak = grp.blocks.atom
        if p.block_m % aq or p.block_n % ak:
            raise ValueError(f"TilePlan block_m={p.block_m}, block_n={p.block_n} must be multiples of the block "
                             f"classification's atoms {grp.blocks.atom} for head group {k}")
        prog = prog.with_group(k, plan=p)
    return prog
