"""Linear attention with feature maps (elu1, relu, focused, identity)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry
from ._module import QKVAttention


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


class LinearAttention(QKVAttention):
    """Linear attention (Katharopoulos et al.; SLAB's relu; FLatten's focused map): x [B, N, C]
    -> [B, N, C], out_i = phi(q_i)^T S / (phi(q_i)^T z + eps) with S = sum_j phi(k_j) v_j^T and
    z = sum_j phi(k_j) over the keys i attends (all, or j <= i with causal=True). No score scale:
    phi takes the raw q and k. forward(x, grid=None): with window=(wr, wc), pass the token map's
    grid (R, C) for per-window linear attention."""

    def __init__(self, dim, num_heads, feature_map="elu1", causal=False, window=None, eps=1e-6, qkv_bias=True,
                 proj_drop=0.0, *, backend="auto"):
        super().__init__(dim, num_heads, qkv_bias, proj_drop, backend)
        ac.linear(feature_map, eps)                 # checks the feature map and eps now, not at the first call
        self.feature_map, self.causal, self.window, self.eps = feature_map, causal, window, eps

    def _spec(self, key):
        grid = tuple(int(n) for n in key.split("_")) if key else None
        spec = linear_spec(self.feature_map, self.causal, self.window, grid)
        return ac.Attention(spec.pattern, normalizer=ac.linear(self.feature_map, self.eps))

    def forward(self, x, grid=None):
        if x.dim() != 3:
            raise ValueError(f"LinearAttention takes x [B, N, C], got shape {tuple(x.shape)}")
        if (self.window is None) != (grid is None):
            raise ValueError(f"LinearAttention: window={self.window} needs forward(x, grid=(R, C)) and only then; "
                             f"got grid={grid}")
        return self._tokens("_".join(map(str, grid)) if grid else "", x)
