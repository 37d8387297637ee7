"""Validation of a kernel call's tensors at the public boundary."""
import sympy
import torch

from ..ir.program import Dims

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_call(spec, q, k, v, tensors, return_lse):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided:
            raise TypeError(f"{name} is a {x.layout} tensor; attncc reads dense (strided) tensors: pass {name}.to_dense()")
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
        if x.layout != torch.strided:
            raise TypeError(f"captured tensor {n!r} is a {x.layout} tensor; attncc reads dense (strided) tensors: "
                            f"pass {n}.to_dense()")
        if x.is_complex():
            raise TypeError(f"captured tensor {n!r} has the complex dtype {x.dtype}; attncc reads real tensors")
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


INT32 = (-(1 << 31), (1 << 31) - 1)
NEEDS = {"index": ("an integer", lambda x: not x.is_floating_point() and x.dtype != torch.bool,
                   "its values index another tensor; cast it with .long()"),
         "value": ("a floating-point", torch.Tensor.is_floating_point,
                   "its values are added to the scores or weights; cast it with .float() (an integer table "
                   "here is often an index, e.g. Swin's relative_position_index, passed for the bias table)")}


def _owners(spec, name):
    parts = [*spec.pattern.leaves(), *spec.score_mods, *spec.post_mods]
    got = [repr(p) for p in parts if name in getattr(p, "captured", ())]
    return " and ".join(got) or "the spec"


def check_tables(spec, prog, tensors, checked):
    """Check the captured tensors against what the lowered program reads (the reads pass):
    dtype for each use, dims, and the extent every index reaches over the pairs the pattern
    computes, so that no backend clamps a read silently. `checked`: a set of call keys
    already found valid whose reads do not depend on the tensors' values."""
    key = (prog.dims, prog.target, tuple((n, tuple(x.shape), x.dtype) for n, x in sorted(tensors.items())))
    if key in checked:
        return
    values = _check_kinds(spec, prog, tensors)
    data_dependent = False
    for r in prog.reads:            # tensors whose values index others come first
        data_dependent |= any(b is None for b in r.bounds)
        _check_extent(spec, prog, r, tensors, values)
    if not data_dependent:
        checked.add(key)


def _check_kinds(spec, prog, tensors):
    """Dtype per use and dims of every read; the value range of every integer tensor read
    (name -> (lo, hi)), which must fit int32."""
    values = {}
    for r in prog.reads:
        x = tensors[r.name]
        if r.use in NEEDS and not NEEDS[r.use][1](x):
            what, _, fix = NEEDS[r.use]
            raise TypeError(f"captured tensor {r.name!r} must have {what} dtype, got {x.dtype}: {fix} "
                            f"(read as {r.source} by {_owners(spec, r.name)})")
        if x.dim() != len(r.index):
            raise ValueError(f"captured tensor {r.name!r} has {x.dim()} dims {tuple(x.shape)} but "
                             f"{_owners(spec, r.name)} reads it with {len(r.index)} indices: {r.source}")
        if not x.is_floating_point() and r.name not in values and x.numel():
            lo, hi = (int(v) for v in torch.aminmax(x.to(torch.int32) if x.dtype == torch.bool else x))
            if lo < INT32[0] or hi > INT32[1]:
                raise ValueError(f"captured tensor {r.name!r} holds values {lo}..{hi}, beyond int32, which the "
                                 f"kernels read integer tensors as; remap its values into int32")
            values[r.name] = (lo, hi)
    return values


def _check_extent(spec, prog, r, tensors, values):
    """Every index of read `r` inside its tensor: the interval bounds when they prove it (with
    the call's value ranges where the indices read other tensors), else the exact ranges over
    the pairs the pattern computes."""
    from ..ir.intervals import bound
    from ..passes.reads import domain, exact_ranges
    x = tensors[r.name]
    spans = r.bounds
    if any(b is None for b in spans):
        box = domain(prog, prog.groups[r.group], values)
        spans = tuple(bound(ix, box) for ix in r.index)
    if all(s is not None and 0 <= s[0] and s[1] < n for s, n in zip(spans, x.shape)):
        return
    inner = _index_tables(r)
    if inner <= set(tensors) | {c.name for c in prog.constants}:     # else: routing tables, the bound stands
        spans = exact_ranges(prog, r, {n: tensors[n].detach().cpu().numpy() for n in inner & set(tensors)})
    need, why = list(x.shape), []
    for dim, (s, n) in enumerate(zip(spans, x.shape)):
        if s is not None and s[0] < 0:
            raise ValueError(f"captured tensor {r.name!r} is read at negative indices: its index on dim {dim} "
                             f"spans {s[0]}..{s[1]} over the pairs the pattern computes (read as {r.source} by "
                             f"{_owners(spec, r.name)}); tensors are indexed from 0: shift the index expression")
        if s is not None and s[1] >= n:
            need[dim] = s[1] + 1
            why.append(f"dim {dim} needs at least {s[1] + 1} entries (its index spans {s[0]}..{s[1]}, read as "
                       f"{r.source})")
    if why:
        d = prog.dims
        raise ValueError(f"captured tensor {r.name!r} of shape {tuple(x.shape)} is too small for "
                         f"{_owners(spec, r.name)} at B={d.B}, H={d.H}, N={d.N}, M={d.M}: {'; '.join(why)}; pass a "
                         f"tensor of shape at least {tuple(need)} (a larger one is fine)")


def _index_tables(read):
    """The tensors that a read's indices themselves read."""
    return {str(x.base.label) for ix in read.index for x in sympy.sympify(ix).atoms(sympy.Indexed)}
