"""The TVM backend's entry points: compile a lowered Program (one kernel per head group) and
run it on torch tensors."""
import numpy as np
import torch

from ...ir import symbols as S
from .build import compile_source
from .linear import generate_linear
from .per_query import generate_per_query
from ..tiles import tile_tables
from .source import generate, group_shape


class Unsupported(NotImplementedError):
    """A spec the TVM backend cannot serve yet (the message says why and what to use)."""


def check(prog):
    if prog.prologues:
        raise Unsupported("backend='tvm' does not generate content-dependent routing yet (it arrives with the "
                          "routing issue); use backend='reference'")
    for grp in prog.groups:
        assert S.b not in S.free_index_symbols(grp.gather.k_token), "static key maps do not depend on the batch"
        assert not grp.gather.per_query or grp.plan.block_n >= grp.gather.Lk, "per-query keys are one tile"


def _table_meta(prog, tensors):
    meta = {}
    for name, x in tensors.items():
        kind = "float" if x.is_floating_point() else "int"
        meta[name] = (tuple(x.shape), kind, "float32" if kind == "float" else "int32")
    for c in prog.constants:
        meta[c.name] = (tuple(c.array.shape), "int", "int32")
    return meta


def as_table(x):
    return (x.to(torch.float32) if x.is_floating_point() else x.to(torch.int32)).contiguous()


class TVMProgram:
    """The compiled kernels of a Program for one set of captured-tensor shapes."""

    def __init__(self, prog, tensors, skip=()):
        check(prog)
        self.prog, self.skip = prog, skip
        self.meta = _table_meta(prog, tensors)
        self.consts = {c.name: torch.from_numpy(np.ascontiguousarray(c.array, dtype=np.int32)) for c in prog.constants}
        self.variants = {}
        self.names = list(self.meta)
        self.groups = self.kernels(True)

    def kernels(self, stats):
        """The compiled group kernels; stats=False is the sigmoid variant without the row
        statistics (compiled on first use, when return_lse is not asked)."""
        stats = stats or self.prog.norm.kind != "sigmoid"
        if stats not in self.variants:
            groups = []
            for grp in self.prog.groups:
                cnt, lst, cls = tile_tables(grp)
                shape = group_shape(self.prog, grp, lst.shape[-1])
                if self.prog.norm.kind == "linear":
                    src = generate_linear(self.prog, grp, shape, self.meta)
                elif grp.gather.per_query:
                    src = generate_per_query(self.prog, grp, shape, self.meta)
                else:
                    src = generate(self.prog, grp, shape, self.meta, self.skip, stats)
                comp = compile_source(src, [])          # the source decides the binary
                args = [torch.tensor(grp.heads, dtype=torch.int32), torch.from_numpy(cnt), torch.from_numpy(lst),
                        torch.from_numpy(cls), torch.from_numpy(grp.blocks.classes.astype(np.int32))]
                groups.append((comp, args))
            self.variants[stats] = groups
        return self.variants[stats]

    @property
    def source(self):
        return "\n".join(c.source for c, _ in self.groups)

    @property
    def seconds(self):
        return sum(c.seconds for c, _ in self.groups)

    def __call__(self, q, k, v, tensors, return_lse=False):
        qf, kf, vf = (x.to(torch.float32).contiguous() for x in (q, k, v))
        B, H, N, _ = q.shape
        o = torch.empty(B, H, N, v.shape[-1], dtype=torch.float32)
        lse = torch.empty(B, H, N, dtype=torch.float32)
        tabs = [as_table(tensors[n]) if n in tensors else self.consts[n] for n in self.names]
        for comp, args in self.kernels(return_lse):
            comp.fn(qf, kf, vf, o, lse, *args, *tabs)
        o = o.to(q.dtype)
        return (o, lse) if return_lse else o
