"""The dense oracle: a second, independent implementation of the semantics, in float64.

It reads only what canonicalize produced (the token-space mask predicates, the score
expression, normalizer and post modifiers), builds the whole [N, M] mask and score matrix,
and computes attention by the textbook formulas. It shares nothing with the gather,
classification or tiling machinery, so it checks them. For tests and the demo only: it is
O(N * M) in memory.
"""
import torch

from ..ir import symbols as S
from ..ir.evaluate import evaluate
from .features import feature_map
from .torch_ops import TorchOps, like


def _routing_mask(pro, q, k, scale):
    (R, C), (Sr, Sc), topk = pro.param("grid"), pro.param("regions"), pro.param("topk")
    B, H, N, d = q.shape
    hr, hc = R // Sr, C // Sc
    # region of every token, then mean per region by scatter-add (a different route from the
    # reference's reshape)
    tok = torch.arange(N)
    reg = (tok // C // hr) * Sc + (tok % C) // hc
    onehot = torch.nn.functional.one_hot(reg, Sr * Sc).to(q.dtype)          # [N, S^2]
    wide = lambda x: x.permute(0, 2, 1, 3).reshape(B, N, H * d)
    qr = onehot.T @ wide(q) / (hr * hc)
    kr = onehot.T @ wide(k) / (hr * hc)
    aff = scale * qr @ kr.transpose(-1, -2)
    kth = aff.sort(dim=-1, descending=True).values[..., topk - 1:topk]
    return aff >= kth                                                       # [B, S^2, S^2]


def _env(prog, q, k, captured, dtype):
    env = {n: (x.to(dtype) if x.is_floating_point() else x) for n, x in (captured or {}).items()}
    env.update({c.name: torch.as_tensor(c.array.copy()) for c in prog.constants})
    for pro in prog.prologues:
        env[pro.outputs[0]] = _routing_mask(pro, q.to(dtype), k.to(dtype), prog.scale)
    return env


def _group_masks(prog, env, ops, B, N, M):
    """(group, its heads, index grids, [B, heads, N, M] bool mask) per head group."""
    for grp in prog.groups:
        hs = torch.tensor(grp.heads)
        idx = {S.b: torch.arange(B).view(-1, 1, 1, 1), S.h: hs.view(1, -1, 1, 1),
               S.i: torch.arange(N).view(1, 1, -1, 1), S.j: torch.arange(M).view(1, 1, 1, -1)}
        yield grp, hs, idx, torch.as_tensor(evaluate(grp.mask, {**idx, **env}, ops)).expand(B, len(hs), N, M)


def dense_mask(prog, q, k, captured=None):
    """[B, H, N, M] bool: the pairs that attend, as the oracle evaluates them (for peers that
    take a dense mask, such as torch SDPA in the demo)."""
    B, H, N, _ = q.shape
    M = k.shape[2]
    mask = torch.zeros(B, H, N, M, dtype=torch.bool)
    for _, hs, _, m in _group_masks(prog, _env(prog, q, k, captured, torch.float64), TorchOps(q.device), B, N, M):
        mask[:, hs] = m
    return mask


def dense_attention(prog, q, k, v, captured=None, return_lse=False, dtype=torch.float64):
    """Textbook attention for a canonicalized Program; returns out (and lse) in `dtype`."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    B, H, N, _ = q.shape
    M = k.shape[2]
    ops = TorchOps(q.device)
    env = _env(prog, q, k, captured, dtype)
    out = torch.zeros(B, H, N, v.shape[-1], dtype=dtype)
    lse = torch.full((B, H, N), -float("inf"), dtype=dtype)
    for grp, hs, idx, m in _group_masks(prog, env, ops, B, N, M):
        qh, kh, vh = q[:, hs], k[:, hs], v[:, hs]
        if prog.norm.kind == "linear":
            a = feature_map(prog.norm.feature_map, qh) @ feature_map(prog.norm.feature_map, kh).transpose(-1, -2)
            a = a * m
            out[:, hs] = (a @ vh) / (a.sum(-1, keepdim=True) + prog.norm.eps)
            continue
        s = prog.scale * qh @ kh.transpose(-1, -2)
        if prog.score != S.score:
            s = like(evaluate(prog.score, {**idx, **env, S.score: s}, ops, valid=m), s)
        sm = s.masked_fill(~m, -float("inf"))
        l = torch.logsumexp(sm, dim=-1)                                      # -inf on empty rows
        if prog.norm.kind == "softmax":
            w = torch.where(m, torch.exp(sm - torch.where(torch.isinf(l), 0, l)[..., None]), 0)
        else:
            w = torch.where(m, torch.sigmoid(s + prog.norm.bias), 0)
        for post in prog.post:
            w = torch.where(m, like(evaluate(post, {**idx, **env, S.weight: w}, ops, valid=m), w), 0)
        out[:, hs] = w @ vh
        lse[:, hs] = l
    return (out, lse) if return_lse else out
