"""NATTEN's neighborhood attention (with dilation)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry


def natten_spec(grid, kernel=(7, 7), dilation=(1, 1)):
    """NATTEN NA2D: each query attends to its kernel-sized neighbourhood, clamped at borders."""
    return ac.Attention(ac.neighborhood2d(grid, kernel, dilation))


CATALOGUE = [
    Entry("neighborhood", "neighborhood", natten_spec((28, 28)), Dims(2, 3, 784, 784, 32, 32)),
    Entry("neighborhood_dilated", "neighborhood", natten_spec((28, 28), dilation=(2, 2)), Dims(2, 3, 784, 784, 32, 32)),
]
