"""``ac.swap(model)``: replace, in place, every attention module attncc knows by its attncc
drop-in, copying the weights, and report what was replaced with which spec."""
from __future__ import annotations

import functools
import types
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import nn as acnn


@dataclass(frozen=True)
class Swapped:
    """One replacement: the module's qualified name, what it was, and the spec it runs (a
    description when the spec is decided by each input's grid)."""
    name: str
    was: str
    spec: object


class SwapReport(tuple):
    """The replacements made by ac.swap, one Swapped per module."""

    def __str__(self):
        if not self:
            return "ac.swap: no attention module replaced"
        return "\n".join(f"{s.name or '<root>'}: {s.was} -> attncc "
                         f"({s.spec if isinstance(s.spec, str) else repr(s.spec)})" for s in self)


def _is_from(module, name, package):
    return type(module).__name__ == name and type(module).__module__.startswith(package + ".")


def _swin_block_attn(self, x):
    """SwinTransformerBlock._attn once swapped: the attncc WindowAttention reads the map
    [B, H, W, C] itself (its pattern does the block's roll, padding, partition and mask)."""
    return self.attn(x)


def _swap_timm_swin(parent, child_name, child, name, backend, done):
    from attncc.ops.window import WindowAttention
    if _is_from(parent, "SwinTransformerBlock", "timm") and child_name == "attn":
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


def _inplace_activation(act):
    """The in-place form of a Transformer layer's activation (relu, gelu exact or tanh), else None."""
    if act is F.relu or isinstance(act, torch.nn.ReLU):
        return torch.relu_
    if act is F.gelu or isinstance(act, torch.nn.GELU):
        return functools.partial(torch.ops.aten.gelu_, approximate=getattr(act, "approximate", "none"))
    return None


def _ff_block(self, x):
    """nn.TransformerEncoderLayer / TransformerDecoderLayer._ff_block once swapped: when autograd
    does not track the hidden layer, its activation runs in place on linear1's output, as in
    torch's fused fast path, which the swapped attention leaves (one [tokens, dim_feedforward]
    tensor fewer per call); otherwise torch's own _ff_block."""
    act = _inplace_activation(self.activation)
    y = self.linear1(x)
    if act is None or y.requires_grad:
        y = self.activation(y)
    else:
        act(y)
    return getattr(self, "dropout3", self.dropout2)(self.linear2(self.dropout(y)))


def _swap_natten(parent, child_name, child, name, backend, done):
    from attncc.ops.neighborhood import NeighborhoodAttention2D
    why = NeighborhoodAttention2D.unsupported(child)
    if why:
        warnings.warn(f"ac.swap: {name} (natten NeighborhoodAttention2D) is left as it is: {why}", stacklevel=3)
        return
    new = NeighborhoodAttention2D.from_natten(child, backend=backend)
    setattr(parent, child_name, new)
    done.append(Swapped(name, "natten NeighborhoodAttention2D",
                        f"neighborhood2d(kernel={new.kernel_size}, dilation={new.dilation}) on the input's grid"))


def swap(model, spec=None, backend="auto"):
    """Replace, in place, every attention module attncc knows in `model` by its attncc drop-in
    with the same weights, on `backend`, and return a SwapReport:

    - torch.nn.MultiheadAttention (also inside nn.TransformerEncoder / TransformerDecoder) by
      ac.nn.MultiheadAttention running `spec` (default: full softmax); the layers holding one
      leave torch's fused fast path, so their feed-forward runs its activation in place when
      autograd does not track it, as that path does;
    - timm's Swin WindowAttention by attncc.ops.window.WindowAttention; inside a timm
      SwinTransformerBlock the block's roll, padding, window partition and shifted-window mask
      become the window2d pattern (with the relative position bias) read on the unpartitioned
      map;
    - NATTEN's NeighborhoodAttention2D (stride 1, not causal; others are left, with a warning
      saying why) by attncc.ops.neighborhood.NeighborhoodAttention2D.
    `spec` applies to torch's modules only (the others' pattern is the model's)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"swap takes a torch.nn.Module, got {type(model).__name__}")
    done = []
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.MultiheadAttention:
                new = acnn.MultiheadAttention.from_torch(child, spec=spec, backend=backend)
                setattr(parent, child_name, new)
                if isinstance(parent, (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)):
                    parent._ff_block = types.MethodType(_ff_block, parent)
                done.append(Swapped(f"{name}.{child_name}".lstrip("."), "torch.nn.MultiheadAttention", new.spec))
            elif _is_from(child, "WindowAttention", "timm"):
                _swap_timm_swin(parent, child_name, child, f"{name}.{child_name}".lstrip("."), backend, done)
            elif _is_from(child, "NeighborhoodAttention2D", "natten"):
                _swap_natten(parent, child_name, child, f"{name}.{child_name}".lstrip("."), backend, done)
        if isinstance(parent, torch.nn.TransformerEncoder):
            parent.use_nested_tensor = False        # nested tensors would bypass the swapped modules
    if isinstance(model, torch.nn.MultiheadAttention) and type(model) is torch.nn.MultiheadAttention:
        raise TypeError("swap replaces modules inside a model; for a bare MultiheadAttention use "
                        "ac.nn.MultiheadAttention.from_torch(mha)")
    return SwapReport(done)
