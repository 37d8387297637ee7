"""``ac.swap(model)``: replace, in place, every attention module attncc knows by its attncc
drop-in, copying the weights, and report what was replaced with which spec."""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch

from . import nn as acnn


@dataclass(frozen=True)
class Swapped:
    """One replacement: the module's qualified name, what it was, and the spec it runs."""
    name: str
    was: str
    spec: object


class SwapReport(tuple):
    """The replacements made by ac.swap, one Swapped per module."""

    def __str__(self):
        if not self:
            return "ac.swap: no attention module replaced"
        return "\n".join(f"{s.name or '<root>'}: {s.was} -> attncc ({s.spec!r})" for s in self)


def _is_timm(module, name):
    return type(module).__name__ == name and type(module).__module__.startswith("timm.")


def _swin_block_attn(self, x):
    """SwinTransformerBlock._attn once swapped: the attncc WindowAttention reads the map
    [B, H, W, C] itself (its pattern does the block's roll, padding, partition and mask)."""
    return self.attn(x)


def _swap_timm_swin(parent, child_name, child, name, backend, done):
    from attncc.ops.window import WindowAttention
    if _is_timm(parent, "SwinTransformerBlock") and child_name == "attn":
        new = WindowAttention.from_timm(child, shift_size=parent.shift_size, backend=backend)
        parent._attn = types.MethodType(_swin_block_attn, parent)
        spec = new.map_spec(*parent.input_resolution)
        was = "timm SwinTransformerBlock.attn (WindowAttention, roll, partition, mask)"
    else:                                   # a bare WindowAttention: timm's windows layout
        new = WindowAttention.from_timm(child, backend=backend)
        spec = new._spec(f"win_{new.window_size[0]}_{new.window_size[1]}_0_0_0")
        was = "timm WindowAttention"
    setattr(parent, child_name, new)
    done.append(Swapped(name, was, spec))


def swap(model, spec=None, backend="auto"):
    """Replace, in place, every attention module attncc knows in `model` by its attncc drop-in
    with the same weights, on `backend`, and return a SwapReport:

    - torch.nn.MultiheadAttention (also inside nn.TransformerEncoder / TransformerDecoder) by
      ac.nn.MultiheadAttention running `spec` (default: full softmax);
    - timm's Swin WindowAttention by attncc.ops.window.WindowAttention; inside a timm
      SwinTransformerBlock the block's roll, padding, window partition and shifted-window mask
      become the window2d pattern (with the relative position bias) read on the unpartitioned
      map. `spec` does not apply to these (their pattern is the model's)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"swap takes a torch.nn.Module, got {type(model).__name__}")
    done = []
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.MultiheadAttention:
                new = acnn.MultiheadAttention.from_torch(child, spec=spec, backend=backend)
                setattr(parent, child_name, new)
                done.append(Swapped(f"{name}.{child_name}".lstrip("."), "torch.nn.MultiheadAttention", new.spec))
            elif _is_timm(child, "WindowAttention"):
                _swap_timm_swin(parent, child_name, child, f"{name}.{child_name}".lstrip("."), backend, done)
        if isinstance(parent, torch.nn.TransformerEncoder):
            parent.use_nested_tensor = False        # nested tensors would bypass the swapped modules
    if isinstance(model, torch.nn.MultiheadAttention) and type(model) is torch.nn.MultiheadAttention:
        raise TypeError("swap replaces modules inside a model; for a bare MultiheadAttention use "
                        "ac.nn.MultiheadAttention.from_torch(mha)")
    return SwapReport(done)
