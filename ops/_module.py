"""The shared shape of the ops/ drop-in modules: a qkv projection, an attncc kernel over
[B, heads, tokens, head_dim], an output projection. A family's module only picks the spec
(PATTERNS.md item 11: modules hold parameters and pick a spec; the maths lives below)."""
import torch

from attncc.nn import Compiled


class QKVAttention(Compiled, torch.nn.Module):
    """Multi-head self-attention with one fused qkv Linear (state_dict keys qkv.*, proj.*, as
    timm's and NATTEN's modules). Subclasses implement _spec(key) and call _tokens(key, x)."""

    def __init__(self, dim, num_heads, qkv_bias=True, proj_drop=0.0, backend="auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}; pick a head count that "
                             f"divides it (e.g. {[h for h in range(1, 9) if dim % h == 0][-1]})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(proj_drop)
        self._init_kernels(backend)

    def _tokens(self, key, x, tensors=None):
        """x [B, N, C] -> the attention output projected, [B, N, C]."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        o = self._attend(key, q, k, v, tensors or {})
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))

    def _map(self, key, x, tensors=None):
        """x [B, *grid, C] -> [B, *grid, C]."""
        return self._tokens(key, x.reshape(x.shape[0], -1, x.shape[-1]), tensors).reshape(x.shape)
