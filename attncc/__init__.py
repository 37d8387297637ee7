"""attncc: an attention compiler.

Describe an attention pattern with the DSL (patterns composed with & and |, score
modifiers, a normalizer, post-normalization modifiers), then ``ac.compile`` it; the pattern
is lowered through one IR and its passes to a backend. See README.md and DESIGN.md.
"""
from .dsl.modifiers import alibi, clipped, decay2d, rel_pos_bias, score_mod, softcap
from .dsl.normalizers import linear, sigmoid, softmax
from .dsl.patterns import (axial, block_sparse, causal, dilated, full, mask, neighborhood2d, per_head,
                           routing, sliding_window, stripes, window2d)
from .dsl.spec import Attention
from .ir.plan import TilePlan
from .runtime.kernel import Kernel, compile, reference
from . import nn
from .swap import swap
from .version import __version__

__all__ = [
    "Attention", "Kernel", "TilePlan", "alibi", "axial", "block_sparse", "causal", "clipped", "compile",
    "decay2d", "dilated", "full", "linear", "mask", "neighborhood2d", "per_head", "reference",
    "rel_pos_bias", "routing", "score_mod", "sigmoid", "sliding_window", "softcap", "softmax", "stripes",
    "window2d", "nn", "swap", "__version__",
]
