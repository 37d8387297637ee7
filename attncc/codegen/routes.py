"""The routed gather of bi-level routing (BiFormer), shared by the TVM and Triton backends:
query regions as gather groups, each group's keys the tokens of its topk routed regions, and
the static tile tables of that gather (every query tile visits its topk regions, all FULL)."""
from dataclasses import dataclass

import numpy as np
import sympy

from ..ir import symbols as S
from ..ir.program import FULL, Gather

# a region and a local token index, the free symbols of Route.token (printed per backend)
REG, COL = sympy.Symbol("reg", integer=True, nonnegative=True), sympy.Symbol("c", integer=True, nonnegative=True)


@dataclass(frozen=True)
class Route:
    """The routing prologue's static parameters."""
    grid: tuple
    regions: tuple
    topk: int

    @property
    def count(self):
        return self.regions[0] * self.regions[1]

    @property
    def tokens(self):
        """Tokens per region."""
        return (self.grid[0] // self.regions[0]) * (self.grid[1] // self.regions[1])

    def token(self, reg, c):
        """The token of local index c of region reg (row-major inside the region)."""
        (R, C), (Sr, Sc) = self.grid, self.regions
        rh, rw = R // Sr, C // Sc
        return (S.fdiv(reg, Sc) * rh + S.fdiv(c, rw)) * C + sympy.Mod(reg, Sc) * rw + sympy.Mod(c, rw)

    def gather(self):
        """The attention's gather: one group per query region, its routed regions as keys."""
        return Gather(kind="routed", G=self.count, Lq=self.tokens, Lk=self.topk * self.tokens,
                      q_token=self.token(S.g, S.t), q_valid=sympy.true, k_token=S.u, k_valid=sympy.true)


def route_of(prog, backend):
    """The Route of a Program whose single head group is routing alone, else None with the
    reason (routing composed with other patterns runs on the reference)."""
    if not prog.prologues:
        return None, None
    pro = prog.prologues[0]
    if len(prog.groups) != 1 or [p.kind for p in prog.groups[0].preds] != ["routing"]:
        return None, (f"backend='{backend}' generates routing alone (with any score or post modifiers), not routing "
                      "composed with other patterns or per head; use backend='reference' for that composition")
    return Route(pro.param("grid"), pro.param("regions"), pro.param("topk")), None


def routed_tables(route, block_m):
    """Tile tables of the routed gather: every query tile visits its topk regions (FULL)."""
    nq = -(-route.tokens // block_m)
    cnt = np.full((route.count, nq), route.topk, np.int32)
    lst = np.broadcast_to(np.arange(route.topk, dtype=np.int32), (route.count, nq, route.topk)).copy()
    cls = np.full((route.count, nq, route.topk), FULL, np.int32)
    acls = np.full((route.count, nq, route.topk), FULL, np.int32)
    return cnt, lst, cls, acls
