"""Judging a candidate kernel's output against the dense fp64 oracle, relative to the error the
textbook formula makes in the input dtype (STYLE.md: err <= K * err(same dtype) + floor). The
oracle runs on the CPU; a candidate's output on a GPU is brought back to be judged."""
import dataclasses

import torch

from ..reference.dense import dense_attention

K = 3.0
EPS = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float64: 2.0 ** -52}
# the oracle is O(B H N M) in fp64 memory: past this many scores it judges batch 0 only
MAX_SCORES = 1 << 26
# and past this many scores in batch 0 (the GPU bench shapes: 16 heads of 4096 or 12544 tokens)
# the first heads of every head group only, as many as fit (at least one each)
MAX_HEAD_SCORES = 1 << 27


def _some_heads(canon, N, M):
    """The canonical program with each head group cut to its first heads, and those heads."""
    keep = max(1, MAX_HEAD_SCORES // (N * M * len(canon.groups)))
    canon = canon.replace(groups=tuple(dataclasses.replace(g, heads=tuple(g.heads[:keep])) for g in canon.groups))
    return canon, sorted(h for g in canon.groups for h in g.heads)


class Oracle:
    """The fp64 answer and the error bound for one set of inputs (CPU tensors)."""

    def __init__(self, canon, q, k, v, tensors=None):
        tensors = tensors or {}
        B, H, N, _ = q.shape
        M = k.shape[2]
        self.nb = B if B * H * N * M <= MAX_SCORES else 1
        self.heads = None                       # None: every head is judged
        if H * N * M > MAX_HEAD_SCORES:
            canon, self.heads = _some_heads(canon, N, M)
        ins = [x[:self.nb] for x in (q, k, v)]
        self.shape = (self.nb, H, N, v.shape[-1])     # of the judged batches of an output
        self.gold = self._pick(dense_attention(canon, *ins, tensors))
        same = self._pick(dense_attention(canon, *ins, tensors, dtype=torch.float32).to(q.dtype))
        self.yard = (same.double() - self.gold).abs().max().item()
        self.floor = 8 * EPS[q.dtype] * (1.0 + self.gold.abs().max().item())
        self.limit = K * self.yard + self.floor

    def _pick(self, out):
        """The judged part of an output: the first nb batches and the judged heads, on the CPU."""
        out = out[:self.nb] if self.heads is None else out[:self.nb, self.heads]
        return out.to("cpu")

    def error(self, out):
        """Max abs error of a kernel's output (NaN counts as infinitely wrong)."""
        diff = (self._pick(out).double() - self.gold).abs()
        return float("inf") if torch.isnan(diff).any() else diff.max().item()

    def check(self, out):
        """(ok, error) of a kernel's output."""
        if tuple(out[:self.nb].shape) != self.shape:
            return False, float("inf")
        err = self.error(out)
        return err <= self.limit, err
