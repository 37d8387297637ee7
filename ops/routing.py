"""BiFormer's bi-level routing attention (Zhu et al., "BiFormer: Vision Transformer with
Bi-Level Routing Attention", CVPR 2023): the spec, and the drop-in module with BiFormer's
parameters, state_dict keys and local context enhancement."""
import torch
import torch.nn.functional as F

import attncc as ac
from attncc.ir.program import Dims
from attncc.nn import Compiled

from ._catalogue import Entry


def biformer_spec(grid, regions, topk, scale=None):
    """Bi-level routing: top-k regions per query region by region-mean affinity (all heads);
    BiFormer's module passes scale=(H*d) ** -0.5."""
    return ac.Attention(ac.routing(grid, regions, topk), scale=scale)


CATALOGUE = [
    Entry("biformer_routing", "routing", biformer_spec((28, 28), (7, 7), 4), Dims(2, 4, 784, 784, 32, 32)),
]


class _QKV(torch.nn.Module):
    """One Linear to q, k, v (qk_dim, qk_dim, dim channels) under BiFormer's key `qkv.qkv`."""

    def __init__(self, dim, qk_dim, bias=True):
        super().__init__()
        self.qkv = torch.nn.Linear(dim, 2 * qk_dim + dim, bias=bias)


class BiLevelRoutingAttention(Compiled, torch.nn.Module):
    """BiFormer's BiLevelRoutingAttention in its published configuration (q, k, v from one
    Linear, no key/value downsampling, non-differentiable hard routing, output Linear `wo`):
    forward(x [B, H, W, C]) -> [B, H, W, C]. The routing (region means of q and k over all heads,
    their affinity, top-k regions per query region) and the attention over the routed regions
    are one attncc kernel; the local context enhancement `lepe` (a depthwise conv on v) is added
    before `wo`. Scores are scaled by qk_dim ** -0.5 (all heads' channels, as BiFormer).
    auto_pad=True zero-pads the map to a multiple of n_win and crops the output (BiFormer's
    option for dense prediction)."""

    def __init__(self, dim, num_heads=8, n_win=7, qk_dim=None, qk_scale=None, topk=4, side_dwconv=5,
                 auto_pad=False, *, backend="auto"):
        super().__init__()
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"BiLevelRoutingAttention: qk_dim={self.qk_dim} and dim={dim} must be divisible by "
                             f"num_heads={num_heads}")
        if self.qk_dim != dim:
            raise NotImplementedError(f"BiLevelRoutingAttention: qk_dim={self.qk_dim} != dim={dim} (q and k narrower "
                                      "than v) is not supported; leave qk_dim=None as BiFormer's models do")
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.auto_pad = auto_pad
        self.qkv = _QKV(dim, self.qk_dim)
        self.wo = torch.nn.Linear(dim, dim)
        self.lepe = (torch.nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
                     if side_dwconv > 0 else None)
        self._init_kernels(backend)

    def _spec(self, key):
        H, W = (int(n) for n in key.split("_"))
        return biformer_spec((H, W), (self.n_win, self.n_win), self.topk, self.scale)

    def forward(self, x):
        B, H_in, W_in, C = x.shape
        n = self.n_win
        if self.auto_pad:
            x = F.pad(x, (0, 0, 0, -W_in % n, 0, -H_in % n))
        elif H_in % n or W_in % n:
            raise ValueError(f"BiLevelRoutingAttention: the map {H_in} x {W_in} must be divisible by n_win={n}; pad it "
                             "or pass auto_pad=True")
        _, H, W, _ = x.shape
        q, k, v = self.qkv.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        heads = [t.reshape(B, H * W, self.num_heads, -1).transpose(1, 2) for t in (q, k, v)]
        out = self._attend(f"{H}_{W}", *heads, {}).transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = self.wo(out)
        return out[:, :H_in, :W_in].contiguous() if (H, W) != (H_in, W_in) else out
