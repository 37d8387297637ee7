"""BiFormer's bi-level routing attention."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry


def biformer_spec(grid, regions, topk, scale=None):
    """Bi-level routing: top-k regions per query region by region-mean affinity (all heads);
    BiFormer's module passes scale=(H*d) ** -0.5."""
    return ac.Attention(ac.routing(grid, regions, topk), scale=scale)


CATALOGUE = [
    Entry("biformer_routing", "routing", biformer_spec((28, 28), (7, 7), 4), Dims(2, 4, 784, 784, 32, 32)),
]
