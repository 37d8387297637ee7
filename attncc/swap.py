"""``ac.swap(model)``: replace, in place, every attention module attncc knows by its attncc
drop-in, copying the weights, and report what was replaced with which spec."""
from __future__ import annotations

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


def swap(model, spec=None, backend="auto"):
    """Replace every torch.nn.MultiheadAttention in `model` (also inside nn.TransformerEncoder
    and nn.TransformerDecoder) by ac.nn.MultiheadAttention with the same weights, running
    `spec` (default: full softmax) on `backend`. Returns a SwapReport."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"swap takes a torch.nn.Module, got {type(model).__name__}")
    done = []
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is torch.nn.MultiheadAttention:
                new = acnn.MultiheadAttention.from_torch(child, spec=spec, backend=backend)
                setattr(parent, child_name, new)
                done.append(Swapped(f"{name}.{child_name}".lstrip("."), "torch.nn.MultiheadAttention", new.spec))
        if isinstance(parent, torch.nn.TransformerEncoder):
            parent.use_nested_tensor = False        # nested tensors would bypass the swapped modules
    if isinstance(model, torch.nn.MultiheadAttention) and type(model) is torch.nn.MultiheadAttention:
        raise TypeError("swap replaces modules inside a model; for a bare MultiheadAttention use "
                        "ac.nn.MultiheadAttention.from_torch(mha)")
    return SwapReport(done)
