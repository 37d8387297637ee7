"""The real peer packages of the CPU bench: timm's Swin (window_partition, window_reverse,
its WindowAttention's relative position bias and its SwinTransformerBlock's shifted-window
mask) and natten's na2d. Each runs in its own layout, prepared outside the timing.

torchvision (which timm imports) matches torch 2.13 only as a CUDA build whose C extension
cannot load beside the CPU torch: tests/timm_helper.py's import_timm handles that (ENVIRONMENT.md,
way (a)); no torchvision op ever runs here.
"""
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from timm_helper import import_timm  # noqa: E402  (one copy of the torchvision workaround)


def import_timm_swin():
    """timm.models.swin_transformer, or None (with the reason printed) when timm is missing."""
    if importlib.util.find_spec("timm") is None:
        print("(timm is not installed: pip install -e '.[bench]')")
        return None
    import_timm()                       # tests/timm_helper.py: torchvision beside the CPU torch
    import timm.models.swin_transformer as swin
    return swin


def timm_swin_block(swin, heads, d, grid, win, shift):
    """A timm SwinTransformerBlock; its attention holds the relative position bias table
    (random, as after training) and the block holds the shifted-window mask."""
    torch.manual_seed(0)
    blk = swin.SwinTransformerBlock(heads * d, grid, num_heads=heads, window_size=win, shift_size=shift)
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 0.02)
    return blk.eval()


def timm_swin_core(swin, blk, q, k, v):
    """The attention core of timm's SwinTransformerBlock._attn and WindowAttention.forward
    (fused path), from q, k, v in timm's channels-last [B, R, C, heads * d] to the output in
    the same layout: roll, window_partition, SDPA with the relative position bias (+ the
    shifted-window mask), window_reverse, roll back. Only the qkv and output projections are
    left out (they are not attention)."""
    B, R, C, HD = q.shape
    ws, heads = blk.window_size, blk.attn.num_heads
    x = torch.cat((q, k, v))                                             # [3B, R, C, HD]
    if any(blk.shift_size):
        x = torch.roll(x, shifts=(-blk.shift_size[0], -blk.shift_size[1]), dims=(1, 2))
    xw = swin.window_partition(x, ws).view(3, -1, ws[0] * ws[1], heads, HD // heads).permute(0, 1, 3, 2, 4)
    bias = blk.attn._get_rel_pos_bias()
    if blk.attn_mask is not None:
        nw = blk.attn_mask.shape[0]
        n = ws[0] * ws[1]
        mask = blk.attn_mask.view(1, nw, 1, n, n).expand(B, -1, heads, -1, -1).reshape(-1, heads, n, n)
        bias = bias + mask
    o = F.scaled_dot_product_attention(xw[0], xw[1], xw[2], attn_mask=bias)
    o = o.transpose(1, 2).reshape(-1, ws[0], ws[1], HD)
    o = swin.window_reverse(o, ws, R, C)
    if any(blk.shift_size):
        o = torch.roll(o, shifts=blk.shift_size, dims=(1, 2))
    return o


def import_natten():
    if importlib.util.find_spec("natten") is None:
        print("(natten is not installed: pip install -e '.[bench]')")
        return None
    import natten
    return natten


def to_channels_last(x, grid):
    """[B, H, N, d] -> timm's [B, R, C, H * d]."""
    B, H, N, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, *grid, H * d).contiguous()


def from_channels_last(x, heads):
    B, R, C, HD = x.shape
    return x.reshape(B, R * C, heads, HD // heads).permute(0, 2, 1, 3)


def to_natten(x, grid):
    """[B, H, N, d] -> natten's [B, R, C, H, d]."""
    B, H, N, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, *grid, H, d).contiguous()


def from_natten(x):
    B, R, C, H, d = x.shape
    return x.reshape(B, R * C, H, d).permute(0, 2, 1, 3)


def import_fla_naive():
    """flash-linear-attention's naive chunked causal linear attention (its CPU reference;
    takes features already mapped, [B, T, H, d]), or None when fla-core is missing."""
    if importlib.util.find_spec("fla") is None:
        print("(fla-core is not installed: pip install -e '.[bench]')")
        return None
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # "Triton is not supported on current platform"
        from fla.ops.linear_attn.naive import naive_chunk_linear_attn
    return naive_chunk_linear_attn
