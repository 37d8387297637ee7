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


def layouts(spec, tensors, dims):
    """The call's tensors with every run-time block-sparse layout checked and made
    [H, N/bq, M/bk] int32 (a 2-D layout is broadcast over the heads)."""
    from ..dsl.patterns import RuntimeBlockSparse
    out = dict(tensors)
    for leaf in spec.pattern.leaves():
        if not isinstance(leaf, RuntimeBlockSparse):
            continue
        x, (bq, bk) = tensors[leaf.name], leaf.block
        want = (-(-dims.N // bq), -(-dims.M // bk))
        what = f"block_sparse layout {leaf.name!r}"
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{what} must hold bools (or 0/1 integers), got dtype {x.dtype}")
        if tuple(x.shape) not in (want, (dims.H,) + want):
            raise ValueError(f"{what} has shape {tuple(x.shape)} but N={dims.N}, M={dims.M}, H={dims.H} with block "
                             f"{leaf.block} need {want} or {(dims.H,) + want}; build the layout for the call's shapes")
        if x.dtype != torch.bool and ((x != 0) & (x != 1)).any():
            bad = sorted(set(x[(x != 0) & (x != 1)].unique().tolist()))[:5]
            raise ValueError(f"{what} must hold bools (or 0/1 integers), got the values {bad}")
        out[leaf.name] = _as_heads_int32(x, dims.H)
    return out


_LAYOUTS = []       # (the caller's tensor, its version, the converted layout): the last few


def _as_heads_int32(x, H):
    """x as a contiguous [H, nq, nk] int32 tensor: the same object again for the same
    unmodified tensor (the backends then reuse their tile tables), a new one otherwise. The
    entries hold their tensors, so an identity match is never a recycled address."""
    for got, version, conv in _LAYOUTS:
        if got is x and version == x._version:
            return conv
    conv = x.to(torch.int32)
    conv = (conv.expand(H, *x.shape) if x.dim() == 2 else conv).contiguous()
    _LAYOUTS.insert(0, (x, x._version, conv))
    del _LAYOUTS[8:]
    return conv
