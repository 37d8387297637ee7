"""The catalogue entry type: a named spec with the shapes and tensors to run it at."""
from dataclasses import dataclass, field
from typing import Callable

import torch

from attncc.ir.program import Dims


@dataclass(frozen=True)
class Entry:
    """One pattern of the catalogue: `spec` at `dims`; `tensors(dims, generator)` makes the
    tensors it captures by name."""
    name: str
    family: str
    spec: object
    dims: Dims
    tensors: Callable = field(default=lambda dims, gen: {})

    def inputs(self, dtype=torch.float32, seed=0):
        gen = torch.Generator().manual_seed(seed)
        d = self.dims
        q = torch.randn(d.B, d.H, d.N, d.d, generator=gen, dtype=dtype)
        k = torch.randn(d.B, d.H, d.M, d.d, generator=gen, dtype=dtype)
        v = torch.randn(d.B, d.H, d.M, d.dv, generator=gen, dtype=dtype)
        return q, k, v, self.tensors(d, gen)
