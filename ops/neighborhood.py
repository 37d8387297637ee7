"""NATTEN's neighborhood attention (with dilation)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry
from ._module import QKVAttention


def natten_spec(grid, kernel=(7, 7), dilation=(1, 1), scale=None):
    """NATTEN NA2D: each query attends to its kernel-sized neighbourhood, clamped at borders."""
    return ac.Attention(ac.neighborhood2d(grid, kernel, dilation), scale=scale)



def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class NeighborhoodAttention2D(QKVAttention):
    """NATTEN's NeighborhoodAttention2D: x [B, H, W, C] -> [B, H, W, C]; each token attends to
    its kernel_size neighbourhood (clamped at the borders; dilation as NATTEN's; scores scaled
    by qk_scale, default head_dim ** -0.5). Its state_dict keys are NATTEN's (qkv.*, proj.*)."""

    def __init__(self, dim, num_heads, kernel_size, dilation=1, qkv_bias=True, qk_scale=None, proj_drop=0.0, *,
                 backend="auto"):
        super().__init__(dim, num_heads, qkv_bias, proj_drop, backend)
        self.kernel_size, self.dilation = _pair(kernel_size), _pair(dilation)
        self.scale = qk_scale or self.head_dim ** -0.5

    @classmethod
    def unsupported(cls, na):
        """Why NATTEN's module `na` has no attncc drop-in ('' when it has one)."""
        if tuple(na.stride) != (1, 1):
            return f"stride={tuple(na.stride)} (attncc's neighborhood2d has every query attend: stride 1)"
        if any(na.is_causal):
            return f"is_causal={tuple(na.is_causal)} (attncc's neighborhood2d is not causal)"
        return ""

    @classmethod
    def from_natten(cls, na, backend="auto"):
        """A copy of NATTEN's NeighborhoodAttention2D (weights included) running on attncc."""
        why = cls.unsupported(na)
        if why:
            raise NotImplementedError(f"NeighborhoodAttention2D.from_natten: {why}")
        new = cls(na.embed_dim, na.num_heads, na.kernel_size, na.dilation, qkv_bias=na.qkv.bias is not None,
                  qk_scale=na.scale, proj_drop=na.proj_drop.p, backend=backend)
        new.load_state_dict(na.state_dict())
        p = na.qkv.weight
        new.to(device=p.device, dtype=p.dtype)
        new.train(na.training)
        return new

    def _spec(self, key):
        return natten_spec(tuple(int(n) for n in key.split("x")), self.kernel_size, self.dilation, self.scale)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"NeighborhoodAttention2D takes x [B, H, W, C], got shape {tuple(x.shape)}")
        return self._map(f"{x.shape[1]}x{x.shape[2]}", x)

CATALOGUE = [
    Entry("neighborhood", "neighborhood", natten_spec((28, 28)), Dims(2, 3, 784, 784, 32, 32)),
    Entry("neighborhood_dilated", "neighborhood", natten_spec((28, 28), dilation=(2, 2)), Dims(2, 3, 784, 784, 32, 32)),
]
