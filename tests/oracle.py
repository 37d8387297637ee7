"""Judging a kernel against the dense fp64 oracle, relative to the error that the same maths
makes in the same dtype (STYLE.md: err(kernel) <= k * err(same-dtype) + floor)."""
import os

import torch

import attncc as ac
from attncc.reference.dense import dense_attention
from attncc.runtime.inputs import check_call, layouts

K = 3.0
# ATTNCC_TEST_DEVICE=cuda runs the kernels under test on that device (the Triton suite on a lent
# GPU); inputs are drawn and the oracles computed on the CPU, so the judgement is the same
DEVICE = os.environ.get("ATTNCC_TEST_DEVICE", "cpu")
EPS = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float64: 2.0 ** -52}


def make_inputs(dims, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(dims.B, dims.H, dims.N, dims.d, generator=gen).to(dtype)
    k = torch.randn(dims.B, dims.H, dims.M, dims.d, generator=gen).to(dtype)
    v = torch.randn(dims.B, dims.H, dims.M, dims.dv, generator=gen).to(dtype)
    return q, k, v


def canonical(spec, q, k, v, tensors):
    kern = ac.reference(spec)
    return kern, kern.lower(*check_call(spec, q, k, v, tensors, False)).stages[0][1]


def check_against_oracle(spec, q, k, v, tensors=None, lse=True, backend="reference"):
    """Run a backend (the reference by default) and the oracles; assert its output is as
    close to fp64 as the textbook formula computed in the input dtype (fp32 accumulation)."""
    tensors = tensors or {}
    lse = lse and not isinstance(spec.normalizer, type(ac.linear()))
    _, canon = canonical(spec, q, k, v, tensors)
    kern = ac.compile(spec, backend=backend)
    if DEVICE != "cpu" and backend != "reference":
        on = {n: x.to(DEVICE) for n, x in tensors.items()}
        got = kern(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), return_lse=lse, **on)
        got = tuple(x.cpu() for x in got) if lse else got.cpu()
    else:
        got = kern(q, k, v, return_lse=lse, **tensors)
    dense = layouts(spec, tensors, canon.dims)         # a 2-D run-time layout is broadcast over the heads
    gold = dense_attention(canon, q, k, v, dense, return_lse=lse)
    same = dense_attention(canon, q, k, v, dense, return_lse=lse, dtype=torch.float32)
    if lse:
        (got, got_lse), (gold, gold_lse), (same, same_lse) = got, gold, same
    assert got.dtype == q.dtype and got.shape == (*q.shape[:3], v.shape[-1])
    same = same.to(q.dtype)
    scale = 1.0 + gold.abs().max().item()
    floor = 8 * EPS[q.dtype] * scale
    err = (got.double() - gold).abs().max().item()
    yard = (same.double() - gold).abs().max().item()
    assert err <= K * yard + floor, f"{backend} error {err:.3e} > {K} x same-dtype error {yard:.3e} + {floor:.1e}"
    if lse:
        assert got_lse.shape == q.shape[:3]
        assert torch.equal(torch.isneginf(got_lse), torch.isneginf(gold_lse)), "lse -inf rows differ"
        fin = ~torch.isneginf(gold_lse)
        if fin.any():
            e = (got_lse.double()[fin] - gold_lse[fin]).abs().max().item()
            y = (same_lse.double()[fin] - gold_lse[fin]).abs().max().item()
            lf = 8 * EPS[torch.float32] * (1 + gold_lse[fin].abs().max().item())
            assert e <= K * y + lf, f"lse error {e:.3e} > {K} x {y:.3e} + {lf:.1e}"
    return got, gold
