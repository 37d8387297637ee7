"""LITv2's HiLo attention (Pan et al., "Fast Vision Transformers with HiLo Attention"): a
fraction alpha of the heads (Lo-Fi) attends globally to keys and values average-pooled over
each window; the other heads (Hi-Fi) attend inside non-overlapping windows. Derived at module
level from window2d and full attention (PATTERNS.md, derived patterns)."""
import torch
import torch.nn.functional as F

import attncc as ac
from attncc.nn import Compiled

CATALOGUE = []      # derived: its kernels are the window and flash families'


class HiLo(Compiled, torch.nn.Module):
    """HiLo with LITv2's parameters and state_dict keys (h_qkv, h_proj, l_q, l_kv, l_proj):
    forward(x [B, H*W, C], H, W) -> [B, H*W, C], the Hi-Fi heads' output (projected by
    h_proj) then the Lo-Fi heads' (projected by l_proj) along the channels. window_size=1
    makes every head Lo-Fi with no pooling, as LITv2."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0,
                 window_size=2, alpha=0.5, *, backend="auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"HiLo: dim={dim} must be divisible by num_heads={num_heads}")
        if attn_drop:
            raise NotImplementedError(f"HiLo: attn_drop={attn_drop}; attncc kernels have no attention dropout, "
                                      "use attn_drop=0")
        head_dim = dim // num_heads
        self.dim, self.num_heads, self.ws = dim, num_heads, window_size
        self.l_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.h_heads = num_heads - self.l_heads
        self.l_dim, self.h_dim = self.l_heads * head_dim, self.h_heads * head_dim
        self.scale = qk_scale or head_dim ** -0.5
        if self.h_heads:
            self.h_qkv = torch.nn.Linear(dim, 3 * self.h_dim, bias=qkv_bias)
            self.h_proj = torch.nn.Linear(self.h_dim, self.h_dim)
        if self.l_heads:
            self.l_q = torch.nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = torch.nn.Linear(dim, 2 * self.l_dim, bias=qkv_bias)
            self.l_proj = torch.nn.Linear(self.l_dim, self.l_dim)
        self.proj_drop = torch.nn.Dropout(proj_drop)
        self._init_kernels(backend)

    def _spec(self, key):
        if key == "lo":
            return ac.Attention(ac.full(), scale=self.scale)
        H, W = (int(n) for n in key.split("_")[1:])
        return ac.Attention(ac.window2d((H, W), (self.ws, self.ws)), scale=self.scale)

    @staticmethod
    def _split(t, heads):                  # [B, N, heads * d] -> [B, heads, N, d]
        B, N, _ = t.shape
        return t.reshape(B, N, heads, -1).transpose(1, 2)

    @staticmethod
    def _merge(o):                          # [B, heads, N, d] -> [B, N, heads * d]
        return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)

    def forward(self, x, H, W):
        B, N, C = x.shape
        if N != H * W:
            raise ValueError(f"HiLo: x has {N} tokens but H * W = {H} * {W} = {H * W}; pass the map's H and W")
        outs = []
        if self.h_heads:
            if H % self.ws or W % self.ws:
                raise ValueError(f"HiLo: the map {H} x {W} must be divisible by window_size={self.ws} (as in "
                                 "LITv2); pad the map or pick a window size that divides it")
            q, k, v = (self._split(t, self.h_heads) for t in self.h_qkv(x).chunk(3, dim=-1))
            outs.append(self.h_proj(self._merge(self._attend(f"hi_{H}_{W}", q, k, v, {}))))
        if self.l_heads:
            pooled = x
            if self.ws > 1:
                pooled = F.avg_pool2d(x.transpose(1, 2).reshape(B, C, H, W), self.ws, self.ws)
                pooled = pooled.reshape(B, C, -1).transpose(1, 2)
            q = self._split(self.l_q(x), self.l_heads)
            k, v = (self._split(t, self.l_heads) for t in self.l_kv(pooled).chunk(2, dim=-1))
            outs.append(self.l_proj(self._merge(self._attend("lo", q, k, v, {}))))
        return self.proj_drop(torch.cat(outs, dim=-1))
