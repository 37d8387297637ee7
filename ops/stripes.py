"""CSWin's cross-shaped windows (Dong et al., "CSWin Transformer", CVPR 2022): half the heads in
horizontal stripes, half in vertical, and the drop-in for the attention part of CSWin's block."""
import torch

import attncc as ac
from attncc.ir.program import Dims
from attncc.nn import Compiled

from ._catalogue import Entry


def cswin_spec(grid, width, heads):
    """CSWin: heads [0, heads/2) use horizontal stripes of `width` rows, the rest vertical
    stripes of `width` columns (CSWin's own code numbers its branches the other way round)."""
    half = heads // 2
    return ac.Attention(ac.per_head({tuple(range(half)): ac.stripes(grid, width, axis=0),
                                     tuple(range(half, heads)): ac.stripes(grid, width, axis=1)}))


CATALOGUE = [
    Entry("cswin_stripes", "stripes", cswin_spec((28, 28), 7, 4), Dims(2, 4, 784, 784, 32, 32)),
]


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class _LePE(torch.nn.Module):
    """One branch's locally-enhanced positional encoding, under CSWin's key `attns.{i}.get_v`: a
    depthwise 3x3 conv of v inside each stripe (zero padding at the stripe's borders)."""

    def __init__(self, channels):
        super().__init__()
        self.get_v = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels)


class CSWinAttention(Compiled, torch.nn.Module):
    """The attention of CSWin's CSWinBlock (qkv, the branches' LePE convs, proj; its state_dict
    keys qkv.*, attns.{i}.get_v.*, proj.*): forward(x [B, R*C, dim]) -> [B, R*C, dim], what the
    block adds to its residual before the MLP.

    Heads [0, num_heads/2) attend inside vertical stripes `split_size` columns wide, the others
    inside horizontal stripes `split_size` rows high (CSWin's branches 0 and 1); in the last
    stage (`last_stage`, or a map no larger than the stripe) every head attends to the whole map.
    One attncc kernel runs both branches (a per-head stripes pattern, the tokens read in place);
    each branch adds its LePE, a depthwise conv of v inside each stripe, as CSWin does.
    `resolution` is the map (R, C) (an int for CSWin's square maps)."""

    def __init__(self, dim, resolution, num_heads, split_size=7, qkv_bias=False, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, last_stage=False, *, backend="auto"):
        super().__init__()
        self.dim, self.num_heads, self.split_size = dim, num_heads, split_size
        self.resolution = _pair(resolution)
        self.last_stage = last_stage or max(self.resolution) == split_size
        branches = 1 if self.last_stage else 2
        if num_heads % branches or dim % num_heads:
            raise ValueError(f"CSWinAttention: dim={dim} must split into num_heads={num_heads} heads and num_heads into "
                             f"{branches} branches; pick an even head count that divides dim")
        if not self.last_stage and any(n % split_size for n in self.resolution):
            raise ValueError(f"CSWinAttention: the map {self.resolution} must be divisible by split_size={split_size} "
                             "(CSWin's stripes tile the map)")
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attns = torch.nn.ModuleList(_LePE(dim // branches) for _ in range(branches))
        self.attn_drop = torch.nn.Dropout(attn_drop)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(proj_drop)
        self._init_kernels(backend)

    def _spec(self, key):
        grid, h = self.resolution, self.num_heads
        if self.last_stage:
            return ac.Attention(ac.full(), scale=self.scale)
        w = self.split_size
        return ac.Attention(ac.per_head({tuple(range(h // 2)): ac.stripes(grid, w, axis=1),
                                         tuple(range(h // 2, h)): ac.stripes(grid, w, axis=0)}), scale=self.scale)

    def _stripes(self, branch):
        """(rows, cols) of one branch's stripe."""
        (R, C), w = self.resolution, self.split_size
        return (R, C) if self.last_stage else ((R, w) if branch == 0 else (w, C))

    def _lepe(self, branch, v):
        """The branch's conv of v [B, R, C, c] inside each stripe -> [B, R, C, c]."""
        B, R, C, c = v.shape
        sr, sc = self._stripes(branch)
        win = v.reshape(B, R // sr, sr, C // sc, sc, c).permute(0, 1, 3, 5, 2, 4).reshape(-1, c, sr, sc)
        out = self.attns[branch].get_v(win).reshape(B, R // sr, C // sc, c, sr, sc)
        return out.permute(0, 1, 4, 2, 5, 3).reshape(B, R, C, c)

    def forward(self, x):
        if self.training and self.attn_drop.p > 0:
            raise NotImplementedError(f"CSWinAttention: attn_drop={self.attn_drop.p} in training; attncc kernels have "
                                      "no attention dropout: set attn_drop=0 or call .eval()")
        B, L, E = x.shape
        R, C = self.resolution
        if L != R * C or E != self.dim:
            raise ValueError(f"CSWinAttention: x of shape {tuple(x.shape)}, expected [B, {R * C}, {self.dim}] "
                             f"(the {R} x {C} map's tokens, row-major)")
        qkv = self.qkv(x).reshape(B, L, 3, E)
        q, k, v = qkv.reshape(B, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        o = self._attend("map", q, k, v, {})                                # [B, heads, L, d]
        o = o.transpose(1, 2).reshape(B, R, C, E)
        parts = qkv[:, :, 2].reshape(B, R, C, E).chunk(len(self.attns), dim=-1)   # v's map, a view
        lepe = torch.cat([self._lepe(i, p) for i, p in enumerate(parts)], dim=-1)
        return self.proj_drop(self.proj((o + lepe).reshape(B, L, E)))
