"""Validation of a kernel call's tensors at the public boundary."""
import torch

from ..ir.program import Dims

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_call(spec, q, k, v, tensors, return_lse):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, tokens, head_dim], got shape {tuple(x.shape)}; "
                             "reshape [B, N, H*d] inputs to [B, H, N, d] first")
        if x.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; attncc takes float16, bfloat16, float32 or float64")
        if 0 in x.shape:
            raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, N, d = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H):
        raise ValueError(f"q, k, v must share batch and heads: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[3] != d:
        raise ValueError(f"q and k must share the head dim: q has d={d}, k has {k.shape[3]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"k and v must have the same number of tokens: k has M={k.shape[2]}, v has {v.shape[2]}")
    want = spec.captured()
    missing = [n for n in want if n not in tensors]
    extra = [n for n in tensors if n not in want]
    if missing:
        raise TypeError(f"the spec reads tensors {missing} passed by keyword; call kern(q, k, v, "
                        + ", ".join(f"{n}=..." for n in missing) + ")")
    if extra:
        raise TypeError(f"unexpected keyword tensors {extra}; this spec reads {list(want) or 'none'}")
    for n, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"captured tensor {n!r} must be a torch.Tensor, got {type(x).__name__}")
        if x.device != q.device:
            raise ValueError(f"captured tensor {n!r} is on {x.device} but q is on {q.device}")
    if return_lse and spec.normalizer.__class__.__name__ == "Linear":
        raise ValueError("return_lse=True: linear attention has no log-sum-exp (it never forms scores); "
                         "drop return_lse or use softmax/sigmoid")
    return Dims(B, H, N, k.shape[2], d, v.shape[3]), str(q.dtype).replace("torch.", "")
