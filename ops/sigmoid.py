"""Sigmoid attention (FlashSigmoid): no normalization over keys, bias -log n by default."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry


def sigmoid_spec(causal=False, bias=None):
    return ac.Attention(ac.causal() if causal else ac.full(), normalizer=ac.sigmoid(bias))


CATALOGUE = [
    Entry("sigmoid", "sigmoid", sigmoid_spec(), Dims(2, 12, 197, 197, 64, 64)),
    Entry("sigmoid_causal", "sigmoid", sigmoid_spec(True), Dims(1, 4, 512, 512, 64, 64)),
]
