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


def dense_grads(canon, q, k, v, tensors, gout, glse, dtype):
    """Gradients of sum(out * gout) + sum(lse * glse) (finite lse only) through the textbook
    dense formula in `dtype`, for q, k, v and the float captured tensors (by name)."""
    xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    tabs = {n: (x.detach().to(dtype).requires_grad_() if x.is_floating_point() else x) for n, x in tensors.items()}
    out, lse = dense_attention(canon, *xs, tabs, return_lse=True, dtype=dtype)
    loss = (out * gout.to(dtype)).sum()
    if glse is not None:
        loss = loss + torch.where(torch.isfinite(lse), lse * glse.to(dtype), 0).sum()
    wrt = xs + [x for x in tabs.values() if x.is_floating_point()]
    return torch.autograd.grad(loss, wrt, allow_unused=True)


def check_grads_against_oracle(spec, q, k, v, tensors=None, backend="tvm", lse=True, table_grads=False, seed=1):
    """The backend's gradients of q, k, v (and of the float captured tensors when
    `table_grads`) for a random loss on out (and lse), judged like the forward: error to the
    fp64 dense oracle's autograd <= K x the same formula's error in q's dtype + 8 eps."""
    tensors = tensors or {}
    lse = lse and not isinstance(spec.normalizer, type(ac.linear()))
    gen = torch.Generator().manual_seed(seed)
    _, canon = canonical(spec, q, k, v, tensors)
    kern = ac.compile(spec, backend=backend)
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    tabs = {n: (x.detach().clone().requires_grad_(table_grads) if x.is_floating_point() else x)
            for n, x in tensors.items()}
    got = kern(*xs, return_lse=lse, **tabs)
    out, got_lse = got if lse else (got, None)
    gout = torch.randn(out.shape, generator=gen).to(out.dtype)
    glse = torch.randn(got_lse.shape, generator=gen) if lse else None
    loss = (out * gout).sum()
    if lse:
        loss = loss + torch.where(torch.isfinite(got_lse), got_lse * glse, 0).sum()
    wrt = xs + [x for x in tabs.values() if table_grads and x.is_floating_point()]
    mine = torch.autograd.grad(loss, wrt, allow_unused=True)
    dense = layouts(spec, tensors, canon.dims)
    gold = dense_grads(canon, q, k, v, dense, gout, glse, torch.float64)
    same = dense_grads(canon, q.float(), k.float(), v.float(), dense, gout.float(), glse, torch.float32)
    names = ["q", "k", "v"] + [n for n, x in tabs.items() if table_grads and x.is_floating_point()]
    for name, x, a, g, s in zip(names, wrt, mine, gold, same):
        g = torch.zeros_like(a, dtype=torch.float64) if g is None else g
        s = torch.zeros_like(a, dtype=torch.float32) if s is None else s
        # each gradient in its input's dtype (a float32 bias table of a bf16 call: float32), judged
        # against the same maths computed in the call's dtype
        assert a is not None and a.dtype == x.dtype, f"d{name}: no gradient or wrong dtype"
        assert torch.isfinite(a).all(), f"d{name} is not finite"
        floor = 8 * EPS[q.dtype] * (1.0 + g.abs().max().item())
        err = (a.double() - g).abs().max().item()
        yard = (s.to(q.dtype).double() - g).abs().max().item()
        assert err <= K * yard + floor, f"{backend} d{name} error {err:.3e} > {K} x same-dtype error {yard:.3e} + {floor:.1e}"
    return mine
