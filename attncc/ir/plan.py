"""TilePlan: the schedule as data (frozen, JSON in and out), and the fast-memory model that
prunes plans whose working set cannot fit a target."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class TilePlan:
    """How a head group's work is tiled. Tile sizes count local indices of the gathered key
    source (tokens, for a dense source).

    block_m / block_n: query / key tile; num_warps / num_stages: Triton; vector / unroll:
    CPU micro-kernel; key_split: split-K over keys (decoding); chunk: linear attention's
    causal chunk.
    """
    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    vector: int = 8
    unroll: int = 4
    key_split: int = 1
    chunk: int = 64

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TilePlan.{f.name} must be a positive int, got {type(v).__name__} ({v!r})")
            if v < 1:
                raise ValueError(f"TilePlan.{f.name} must be a positive int, got {v!r}")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"TilePlan JSON must be an object of knobs, got {text[:80]!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"TilePlan JSON has unknown keys {sorted(extra)}; known: {sorted(known)}")
        return cls(**data)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class FastMemory:
    """The fast memory a tile's working set must fit: L2 per core on a CPU, shared memory per
    SM on a GPU (bytes). kind "cache" is judged by working_set, "smem" by shared_memory."""
    name: str
    bytes: int
    kind: str = "cache"


FAST_MEMORY = {
    "reference": FastMemory("reference (L2 per core)", 1 << 20),
    "cpu": FastMemory("cpu L2 per core", 1 << 20),
    "tvm": FastMemory("cpu L2 per core", 1 << 20),
    "sm_80": FastMemory("sm_80 shared memory per SM", 163 * 1024, "smem"),
    "sm_90": FastMemory("sm_90 shared memory per SM", 227 * 1024, "smem"),
}


def softmax_lanes(bn):
    """The vector lanes of a CPU kernel's softmax / sigmoid loops over a key tile of `bn`
    columns, which is padded to a multiple of them (padding columns are masked): 16 (two
    independent 8-lane exp chains on AVX2, one 512-bit or two 256-bit ones on AVX-512) unless
    that pads the tile by more than 1/7 over 8 lanes. Measured on a 2-core Xeon (AVX-512), 16
    lanes against 8: ViT-B's attention (B8 H12 N197 d64) 8.41 -> 7.38 ms, N=50 (tile 64
    against 56) 1.13 -> 0.95, Swin-T's windows 11.7 -> 10.5, N=4096 248 -> 207, BiFormer's
    8x8-token regions 5.7 -> 4.8; its 2x2-token regions (tile 16 against 8) 8.2 -> 10.3, hence
    the padding rule; 32 lanes: slower again (7.74 ms at ViT-B)."""
    def up(m):
        return -(-bn // m) * m
    return 16 if up(16) * 7 <= up(8) * 8 else 8


def working_set(plan, d, dv, elem_bytes=4):
    """Bytes of one tile's working set: q tile, k tile, v tile, scores, accumulator."""
    m, n = plan.block_m, plan.block_n
    return elem_bytes * (m * d + n * d + n * dv + m * n + m * dv)


def _pow2(n, least=16):
    return max(least, 1 << (max(1, n) - 1).bit_length())


def shared_memory(plan, d, dv, elem_bytes=2):
    """Bytes of shared memory a generated Triton kernel of this plan stages: the query tile
    once, and num_stages buffers of a key tile and a value tile (software pipelining); tiles
    and head dims are padded to powers of two of at least 16, as the kernel pads them."""
    m, n, dp, dvp = (_pow2(x) for x in (plan.block_m, plan.block_n, d, dv))
    return elem_bytes * (m * dp + plan.num_stages * n * (dp + dvp))


def fits(plan, d, dv, target, elem_bytes=4):
    mem = FAST_MEMORY[target]
    need = shared_memory(plan, d, dv, elem_bytes) if mem.kind == "smem" else working_set(plan, d, dv, elem_bytes)
    return need <= mem.bytes
