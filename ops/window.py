"""Swin's (shifted) window attention with its relative position bias, and the RMT decay."""
import torch

import attncc as ac
from attncc.ir.program import Dims

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
