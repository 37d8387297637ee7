"""Sigmoid attention (FlashSigmoid): no normalization over keys, bias -log n by default."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry
from ._module import QKVAttention


def sigmoid_spec(causal=False, bias=None):
    return ac.Attention(ac.causal() if causal else ac.full(), normalizer=ac.sigmoid(bias))



class SigmoidAttention(QKVAttention):
    """Sigmoid attention (Ramapuram et al., FlashSigmoid): x [B, N, C] -> [B, N, C],
    weights sigmoid(q.k * scale + bias) with no normalization over keys; bias defaults to
    -log(N) (pass a float for anything else); causal for decoders."""

    def __init__(self, dim, num_heads, bias=None, causal=False, qkv_bias=True, proj_drop=0.0, *, backend="auto"):
        super().__init__(dim, num_heads, qkv_bias, proj_drop, backend)
        self.bias, self.causal = bias, causal

    def _spec(self, key):
        return sigmoid_spec(self.causal, self.bias)

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError(f"SigmoidAttention takes x [B, N, C], got shape {tuple(x.shape)}")
        return self._tokens("", x)

CATALOGUE = [
    Entry("sigmoid", "sigmoid", sigmoid_spec(), Dims(2, 12, 197, 197, 64, 64)),
    Entry("sigmoid_causal", "sigmoid", sigmoid_spec(True), Dims(1, 4, 512, 512, 64, 64)),
]
