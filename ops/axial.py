"""Axial attention on N-D grids (images, video)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry
from ._module import QKVAttention


def axial_spec(grid, axis):
    """Attention along one grid axis (a query sees the tokens sharing its other coordinates)."""
    return ac.Attention(ac.axial(grid, axis))



class AxialAttention(QKVAttention):
    """Axial attention: x [B, *grid, C] (any number of grid axes) -> same shape; each token
    attends to the tokens that share all its grid coordinates but `axis` (0 = the first grid
    axis)."""

    def __init__(self, dim, num_heads, axis, qkv_bias=True, proj_drop=0.0, *, backend="auto"):
        super().__init__(dim, num_heads, qkv_bias, proj_drop, backend)
        self.axis = axis

    def _spec(self, key):
        grid = tuple(int(n) for n in key.split("x"))
        return axial_spec(grid, self.axis % len(grid))

    def forward(self, x):
        grid = tuple(x.shape[1:-1])
        if not -len(grid) <= self.axis < len(grid):
            raise ValueError(f"AxialAttention: axis={self.axis} but x of shape {tuple(x.shape)} has "
                             f"{len(grid)} grid axes; x is [B, *grid, C]")
        return self._map("x".join(map(str, grid)), x)

CATALOGUE = [
    Entry("axial_row", "axial", axial_spec((32, 32), 1), Dims(2, 4, 1024, 1024, 32, 32)),
    Entry("axial_column", "axial", axial_spec((32, 32), 0), Dims(2, 4, 1024, 1024, 32, 32)),
    Entry("axial_video_time", "axial", axial_spec((8, 16, 16), 0), Dims(1, 4, 2048, 2048, 32, 32)),
]
