"""Linear attention with feature maps (elu1, relu, focused, identity)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry


def linear_spec(feature_map="elu1", causal=False, window=None, grid=None):
    """Linear attention, optionally causal or per window (window2d on `grid`)."""
    pat = ac.window2d(grid, window) if window else ac.full()
    if causal:
        pat = pat & ac.causal()
    return ac.Attention(pat, normalizer=ac.linear(feature_map))


CATALOGUE = [
    Entry("linear_elu1", "linear", linear_spec(), Dims(1, 4, 1024, 1024, 64, 64)),
    Entry("linear_focused", "linear", linear_spec("focused"), Dims(1, 4, 1024, 1024, 64, 64)),
    Entry("linear_causal", "linear", linear_spec(causal=True), Dims(1, 4, 1024, 1024, 64, 64)),
    Entry("linear_window", "linear", linear_spec("relu", window=(7, 7), grid=(28, 28)), Dims(2, 4, 784, 784, 32, 32)),
]
