"""Judging a candidate kernel's output against the dense fp64 oracle, relative to the error the
textbook formula makes in the input dtype (STYLE.md: err <= K * err(same dtype) + floor)."""
import torch

from ..reference.dense import dense_attention

K = 3.0
EPS = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float64: 2.0 ** -52}
# the oracle is O(B H N M) in fp64 memory: past this many scores it judges batch 0 only
MAX_SCORES = 1 << 26


class Oracle:
    """The fp64 answer and the error bound for one set of inputs."""

    def __init__(self, canon, q, k, v, tensors=None):
        tensors = tensors or {}
        B, H, N, _ = q.shape
        self.nb = B if B * H * N * k.shape[2] <= MAX_SCORES else 1
        ins = [x[:self.nb] for x in (q, k, v)]
        self.gold = dense_attention(canon, *ins, tensors)
        same = dense_attention(canon, *ins, tensors, dtype=torch.float32).to(q.dtype)
        self.yard = (same.double() - self.gold).abs().max().item()
        self.floor = 8 * EPS[q.dtype] * (1.0 + self.gold.abs().max().item())
        self.limit = K * self.yard + self.floor

    def error(self, out):
        """Max abs error of a kernel's output (NaN counts as infinitely wrong)."""
        diff = (out[:self.nb].double() - self.gold).abs()
        return float("inf") if torch.isnan(diff).any() else diff.max().item()

    def check(self, out):
        """(ok, error) of a kernel's output."""
        if tuple(out[:self.nb].shape) != tuple(self.gold.shape):
            return False, float("inf")
        err = self.error(out)
        return err <= self.limit, err
