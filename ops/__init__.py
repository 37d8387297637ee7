"""Ready-made attention families built on the DSL, one module per family of PATTERNS.md,
each with its spec constructors and its drop-in nn.Modules: window.WindowAttention (timm's
Swin), neighborhood.NeighborhoodAttention2D (NATTEN), axial.AxialAttention,
sigmoid.SigmoidAttention, linear.LinearAttention, hilo.HiLo (LITv2; derived from window2d and full attention),
routing.BiLevelRoutingAttention (BiFormer), stripes.CSWinAttention (CSWin), and for the flash family
flash.MultiheadAttention (attncc.nn.MultiheadAttention, torch's drop-in).

``CATALOGUE`` lists one Entry per pattern; ``attncc demo`` and ``attncc check`` walk it.
"""
from . import axial, flash, hilo, linear, neighborhood, routing, sigmoid, stripes, window  # noqa: F401
from ._catalogue import Entry  # noqa: F401  (the entry type, for users of CATALOGUE)

FAMILIES = (flash, window, neighborhood, axial, stripes, routing, sigmoid, linear)
CATALOGUE = tuple(e for fam in FAMILIES for e in fam.CATALOGUE)


def entry(name):
    """The catalogue entry called `name`."""
    for e in CATALOGUE:
        if e.name == name:
            return e
    raise KeyError(f"no catalogue entry {name!r}; known: {', '.join(e.name for e in CATALOGUE)}")
