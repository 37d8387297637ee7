"""NATTEN's neighborhood attention (with dilation)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry
from ._module import QKVAttention


def natten_spec(grid, kernel=(7, 7), dilation=(1, 1)):
    """NATTEN NA2D: each query attends to its kernel-sized neighbourhood, clamped at borders."""
    return ac.Attention(ac.neighborhood2d(grid, kernel, dilation))



def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class NeighborhoodAttention2D(QKVAttention):
    """NATTEN's NeighborhoodAttention2D: x [B, H, W, C] -> [B, H, W, C]; each token attends to
    its kernel_size neighbourhood (clamped at the borders; dilation as NATTEN's)."""

    def __init__(self, dim, num_heads, kernel_size, dilation=1, qkv_bias=True, proj_drop=0.0, *, backend="auto"):
        super().__init__(dim, num_heads, qkv_bias, proj_drop, backend)
        self.kernel_size, self.dilation = _pair(kernel_size), _pair(dilation)

    def _spec(self, key):
        return natten_spec(tuple(int(n) for n in key.split("x")), self.kernel_size, self.dilation)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"NeighborhoodAttention2D takes x [B, H, W, C], got shape {tuple(x.shape)}")
        return self._map(f"{x.shape[1]}x{x.shape[2]}", x)

CATALOGUE = [
    Entry("neighborhood", "neighborhood", natten_spec((28, 28)), Dims(2, 3, 784, 784, 32, 32)),
    Entry("neighborhood_dilated", "neighborhood", natten_spec((28, 28), dilation=(2, 2)), Dims(2, 3, 784, 784, 32, 32)),
]
