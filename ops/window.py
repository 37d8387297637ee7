"""Swin's (shifted) window attention with its relative position bias, and the RMT decay.

``WindowAttention`` is a drop-in for timm's Swin WindowAttention (same constructor arguments
and state_dict keys). It takes either timm's layout, windows already partitioned
[num_windows * B, wr * wc, C] with an optional additive mask [num_windows, N, N], or the map
itself [B, H, W, C] (what SwinTransformerBlock feeds its roll + partition): then the kernel
reads the unpartitioned map through the shifted window2d pattern (no roll, no partition copy).
"""
import torch
import torch.nn.functional as F

import attncc as ac
from attncc.ir.program import Dims
from attncc.nn import Compiled

from ._catalogue import Entry


def swin_spec(grid, window=(7, 7), shift=(0, 0), bias=True):
    """Swin-T/S/B window attention: window2d with shift, plus the relative position bias table
    'relative_position_bias_table' [(2*wr-1)*(2*wc-1), H] (timm's name) when `bias`."""
    mods = (ac.rel_pos_bias("relative_position_bias_table", window),) if bias else ()
    return ac.Attention(ac.window2d(grid, window, shift), score_mods=mods)


def rmt_spec(grid):
    """RMT's Manhattan self-attention: full softmax, weights decayed by gamma[h] ** distance."""
    return ac.Attention(ac.full(), post_mods=ac.decay2d(grid, "gamma"))


def _rpb(window):
    def make(dims, gen):
        n = (2 * window[0] - 1) * (2 * window[1] - 1)
        return {"relative_position_bias_table": 0.02 * torch.randn(n, dims.H, generator=gen)}
    return make


def _gamma(dims, gen):
    return {"gamma": 1 - 2.0 ** (-5 - torch.arange(dims.H, dtype=torch.float32))}


CATALOGUE = [
    Entry("swin_window", "window", swin_spec((28, 28)), Dims(2, 3, 784, 784, 32, 32), _rpb((7, 7))),
    Entry("swin_shifted", "window", swin_spec((28, 28), shift=(3, 3)), Dims(2, 3, 784, 784, 32, 32), _rpb((7, 7))),
    Entry("window_partial_edge", "window", swin_spec((30, 30), bias=False), Dims(2, 3, 900, 900, 32, 32)),
    Entry("rmt_decay", "window", rmt_spec((14, 14)), Dims(2, 4, 196, 196, 32, 32), _gamma),
]


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class WindowAttention(Compiled, torch.nn.Module):
    """Swin window attention with relative position bias, timm-state-dict compatible
    (relative_position_bias_table, qkv, proj).

    forward(x [nW*B, wr*wc, C], mask=None): timm's WindowAttention (mask: additive
    [nW, N, N], e.g. the block's -100/0 shifted-window mask).
    forward(x [B, H, W, C]): what timm's SwinTransformerBlock._attn computes around it with
    shift `shift_size`: the map rolled by -shift, zero-padded at the bottom and right to a
    multiple of the window (padded tokens are keys equal to the qkv bias, not masked, as in
    Swin), attention inside the windows with the shifted-window regions, the output cropped
    and rolled back. attn_drop must be 0 (attncc kernels have no attention dropout).
    """

    def __init__(self, dim, num_heads, head_dim=None, window_size=7, qkv_bias=True, attn_drop=0.0,
                 proj_drop=0.0, device=None, dtype=None, *, shift_size=0, backend="auto"):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim, self.num_heads = dim, num_heads
        self.window_size = _pair(window_size)
        self.shift_size = _pair(shift_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        head_dim = head_dim or dim // num_heads
        self.scale = head_dim ** -0.5
        wr, wc = self.window_size
        self.relative_position_bias_table = torch.nn.Parameter(torch.zeros((2 * wr - 1) * (2 * wc - 1), num_heads, **dd))
        torch.nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = torch.nn.Linear(dim, 3 * head_dim * num_heads, bias=qkv_bias, **dd)
        self.attn_drop = torch.nn.Dropout(attn_drop)
        self.proj = torch.nn.Linear(head_dim * num_heads, dim, **dd)
        self.proj_drop = torch.nn.Dropout(proj_drop)
        self._init_kernels(backend)

    @classmethod
    def from_timm(cls, attn, shift_size=0, backend="auto"):
        """A copy of timm's WindowAttention (weights included) running on attncc."""
        new = cls(attn.dim, attn.num_heads, attn.qkv.out_features // (3 * attn.num_heads), attn.window_size,
                  qkv_bias=attn.qkv.bias is not None, attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p,
                  shift_size=shift_size, backend=backend)
        new.load_state_dict(attn.state_dict())
        p = attn.qkv.weight
        new.to(device=p.device, dtype=p.dtype)
        new.train(attn.training)
        return new

    def _spec(self, key):
        kind, *nums = key.split("_")
        R, C, sr, sc, extra = (int(n) for n in nums)
        pattern = ac.window2d((R, C), self.window_size, (sr, sc))
        mods = [ac.rel_pos_bias("relative_position_bias_table", self.window_size)]
        if kind == "win" and extra:           # timm's additive mask, one per window of the batch
            mods.append(ac.score_mod(lambda s, b, h, q, k, mask: s + mask[b % extra, q, k]))
        if kind == "map" and extra:           # timm rolls, then pads: regions of the padded map
            pattern = pattern & ac.mask(lambda b, h, q, k, region: region[q] == region[k])
        return ac.Attention(pattern, score_mods=tuple(mods), scale=self.scale)

    def _heads(self, x):                      # [B, N, C] -> q, k, v [B, heads, N, d]
        B, N, _ = x.shape
        return self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def _out(self, o):                        # [B, heads, N, d] -> [B, N, C]
        B, _, N, _ = o.shape
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, -1)))

    def forward(self, x, mask=None):
        if self.training and self.attn_drop.p > 0:
            raise NotImplementedError(f"WindowAttention: attn_drop={self.attn_drop.p} in training; attncc kernels "
                                      "have no attention dropout: set attn_drop=0 or call .eval()")
        table = self.relative_position_bias_table
        if x.dim() == 3:
            if x.shape[1] != self.window_area:
                raise ValueError(f"WindowAttention: windows of {x.shape[1]} tokens, expected wr * wc = "
                                 f"{self.window_area} for window {self.window_size}; pass [num_windows * B, "
                                 f"{self.window_area}, C] or the map [B, H, W, C]")
            nw = 0 if mask is None else mask.shape[0]
            tensors = {"relative_position_bias_table": table}
            if mask is not None:
                tensors["mask"] = mask.to(x.dtype)
            q, k, v = self._heads(x)
            key = f"win_{self.window_size[0]}_{self.window_size[1]}_0_0_{nw}"
            return self._out(self._attend(key, q, k, v, tensors))
        if x.dim() != 4 or mask is not None:
            raise ValueError(f"WindowAttention takes windows [num_windows * B, N, C] (with an optional mask) or "
                             f"the map [B, H, W, C] (no mask: the shift comes from shift_size); got shape "
                             f"{tuple(x.shape)}{' and a mask' if mask is not None else ''}")
        return self._map(x)

    def _map_key(self, H, W):
        (wr, wc), (sr, sc) = self.window_size, self.shift_size
        if wr > H or wc > W:
            raise ValueError(f"WindowAttention: window {self.window_size} is larger than the map {(H, W)}; "
                             "use a window no larger than the map (timm's block shrinks it)")
        Hp, Wp = -(-H // wr) * wr, -(-W // wc) * wc
        if (sr or sc) and (Hp, Wp) != (H, W):      # rolled explicitly, regions as a mask
            return f"map_{Hp}_{Wp}_0_0_1", Hp, Wp
        return f"map_{Hp}_{Wp}_{sr}_{sc}_0", Hp, Wp

    def map_spec(self, H, W):
        """The ac.Attention this module runs on an H x W map."""
        return self._spec(self._map_key(H, W)[0])

    def _map(self, x):
        B, H, W, C = x.shape
        (wr, wc), (sr, sc) = self.window_size, self.shift_size
        key, Hp, Wp = self._map_key(H, W)
        padded = (Hp, Wp) != (H, W)
        shifted = bool(sr or sc)
        tensors = {"relative_position_bias_table": self.relative_position_bias_table}
        if shifted and padded:     # timm's order: roll the H x W map, then pad; regions on the padded map
            x = torch.roll(x, shifts=(-sr, -sc), dims=(1, 2))
            reg = lambda n, w, s: (torch.arange(n, device=x.device) >= n - w).long() + (
                torch.arange(n, device=x.device) >= n - s).long()
            tensors["region"] = (3 * reg(Hp, wr, sr)[:, None] + reg(Wp, wc, sc)[None, :]).reshape(-1)
        if padded:
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        q, k, v = self._heads(x.reshape(B, Hp * Wp, C))
        o = self._attend(key, q, k, v, tensors)                       # [B, heads, Hp*Wp, d]
        o = o.reshape(B, self.num_heads, Hp, Wp, -1)[:, :, :H, :W]
        o = self._out(o.reshape(B, self.num_heads, H * W, -1)).reshape(B, H, W, C)
        if shifted and padded:
            o = torch.roll(o, shifts=(sr, sc), dims=(1, 2))
        return o
