"""CSWin's cross-shaped windows: half the heads in horizontal stripes, half in vertical."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry


def cswin_spec(grid, width, heads):
    """CSWin: heads [0, heads/2) use horizontal stripes of `width` rows, the rest vertical
    stripes of `width` columns (CSWin's own code numbers its branches the other way round)."""
    half = heads // 2
    return ac.Attention(ac.per_head({tuple(range(half)): ac.stripes(grid, width, axis=0),
                                     tuple(range(half, heads)): ac.stripes(grid, width, axis=1)}))


CATALOGUE = [
    Entry("cswin_stripes", "stripes", cswin_spec((28, 28), 7, 4), Dims(2, 4, 784, 784, 32, 32)),
]
