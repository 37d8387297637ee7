"""Axial attention on N-D grids (images, video)."""
import attncc as ac
from attncc.ir.program import Dims

from ._catalogue import Entry


def axial_spec(grid, axis):
    """Attention along one grid axis (a query sees the tokens sharing its other coordinates)."""
    return ac.Attention(ac.axial(grid, axis))


CATALOGUE = [
    Entry("axial_row", "axial", axial_spec((32, 32), 1), Dims(2, 4, 1024, 1024, 32, 32)),
    Entry("axial_column", "axial", axial_spec((32, 32), 0), Dims(2, 4, 1024, 1024, 32, 32)),
    Entry("axial_video_time", "axial", axial_spec((8, 16, 16), 0), Dims(1, 4, 2048, 2048, 32, 32)),
]
