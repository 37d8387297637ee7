"""The TVM backend's entry points: compile a lowered Program (one kernel per head group) and
run it on torch tensors."""
import dataclasses

import numpy as np
import torch

from ...ir import symbols as S
from ...ir.plan import softmax_lanes
from .build import compile_source
from .linear import generate_linear
from .per_query import generate_per_query
from ..tiles import RuntimeLayout, tile_tables
from ..captured import as_table, kinds
from ..routes import route_of, routed_tables
from .printer import PrintError
from .source import GroupShape, generate, group_shape
from .backward import fuses, generate_dkv, generate_dq, table_slots_of
from .grad_pairs import pair_grads
from ..backward import scatter_pair, why_not
from ..tiles import query_tile_tables


def routed_shape(prog, grp, route):
    """The static sizes of the routed kernel: query tiles of a region's tokens (at most the
    plan's block_m), one key tile per routed region."""
    d, plan = prog.dims, grp.plan
    n = route.tokens
    bm = min(plan.block_m, n)
    nq = -(-n // bm)
    MR, VW = plan.unroll, (plan.vector if n >= 64 else 8)
    SL = softmax_lanes(n)
    return GroupShape(B=d.B, H=d.H, N=d.N, M=d.M, D=d.d, DV=d.dv, HG=len(grp.heads), G=route.count, LQ=n,
                      LK=route.topk * n, BM=bm, BN=n, NQ=nq, NK=route.topk, KMAX=route.topk, AQ=bm, AK=n, NQA=nq,
                      NKA=route.topk, MR=MR, VW=VW, BMP=-(-bm // MR) * MR, BNP=-(-n // max(VW, SL)) * max(VW, SL),
                      DVP=-(-d.dv // 8) * 8, SL=SL)


class Unsupported(NotImplementedError):
    """A spec the TVM backend cannot serve yet (the message says why and what to use)."""


def check(prog):
    route, why = route_of(prog, "tvm")
    if why:
        raise Unsupported(why)
    if route is not None and prog.norm.kind == "linear":
        raise Unsupported("backend='tvm' does not generate linear attention over routed regions; use "
                          "backend='reference'")
    for grp in prog.groups if route is None else ():
        assert S.b not in S.free_index_symbols(grp.gather.k_token), "static key maps do not depend on the batch"
        assert not grp.gather.per_query or grp.plan.block_n >= grp.gather.Lk, "per-query keys are one tile"


def _table_meta(prog, tensors):
    """name -> (shape, kind, TIR dtype) of the tables the kernels read."""
    return {n: (shape, kind, f"{kind}32") for n, (shape, kind) in kinds(prog, tensors).items()}


def operand(x):
    """q, k or v as fp32, read in place whatever its strides when its last dim is dense (a
    view of a packed qkv projection, say): the kernel is specialised on the strides."""
    x = x.to(torch.float32)
    if x.stride(-1) != 1 or any(s <= 0 and n > 1 for s, n in zip(x.stride(), x.shape)):
        x = x.contiguous()
    return x


def output_like(q, dv):
    """The output [B, H, N, dv] in q's memory order: token-major ([B, N, H, dv] in memory, a
    free transpose for the output projection) when q is, else compact."""
    B, H, N, _ = q.shape
    if H > 1 and N > 1 and q.stride(1) < q.stride(2):
        return torch.empty(B, N, H, dv, dtype=torch.float32).transpose(1, 2)
    return torch.empty(B, H, N, dv, dtype=torch.float32)


def inverse_routes(route_idx):
    """The routing table inverted, per batch: for each key region, how many query regions
    routed to it (icnt [B, S^2]), which (ilist [B, S^2, S^2], in region order) and at which
    of their top-k slots (islot): the backward's dK and dV tasks own the key regions."""
    B, S2, K = route_idx.shape
    flat = route_idx.reshape(B, S2 * K).long()
    entry = torch.arange(S2 * K).expand(B, -1)
    order = torch.argsort(flat * (S2 * K) + entry, dim=1)          # by key region, then query region
    kr = flat.gather(1, order)
    icnt = torch.zeros(B, S2, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    start = torch.cumsum(icnt, 1) - icnt
    pos = torch.arange(S2 * K).expand(B, -1) - start.gather(1, kr)
    ilist = torch.zeros(B, S2, S2, dtype=torch.int32)
    islot = torch.zeros(B, S2, S2, dtype=torch.int32)
    bidx = torch.arange(B)[:, None].expand(-1, S2 * K)
    ilist[bidx, kr, pos] = (order // K).to(torch.int32)
    islot[bidx, kr, pos] = (order % K).to(torch.int32)
    return icnt.to(torch.int32), ilist, islot


class TVMProgram:
    """The compiled kernels of a Program for one set of captured-tensor shapes."""

    def __init__(self, prog, tensors, skip=(), relower=None):
        check(prog)
        self.relower = relower      # () -> the program without per-query gathers (backward_program)
        self.prog, self.skip = prog, skip
        self.meta = _table_meta(prog, tensors)
        self.consts = {c.name: torch.from_numpy(np.ascontiguousarray(c.array, dtype=np.int32)) for c in prog.constants}
        self.variants = {}
        self.names = list(self.meta)
        self.route = route_of(prog, "tvm")[0]
        self.groups = self.kernels(True)
        self.grads = {}

    def kernels(self, stats, strides=()):
        """The compiled group kernels; stats=False is the sigmoid variant without the row
        statistics, `strides` (of q, k, v, o; () when compact) a variant reading and writing
        them in place (each compiled on first use)."""
        stats = stats or self.prog.norm.kind != "sigmoid"
        if (stats, strides) not in self.variants:
            groups = []
            route = self.route
            for grp in self.prog.groups:
                if route is not None:
                    shape = dataclasses.replace(routed_shape(self.prog, grp, route), ST=strides)
                    cnt, lst, cls, acls = routed_tables(route, shape.BM)
                    src = generate(self.prog, grp, shape, self.meta, self.skip, stats, route=route)
                    comp = compile_source(src, [])
                    args = [torch.tensor(grp.heads, dtype=torch.int32), *(torch.from_numpy(x) for x in (cnt, lst, cls, acls))]
                    groups.append((comp, args))
                    continue
                layout = RuntimeLayout.of(self.prog, grp)
                if layout is not None:      # the tables come with each call's layout (__call__)
                    nk = -(-grp.gather.Lk // grp.plan.block_n)
                    shape = dataclasses.replace(group_shape(self.prog, grp, nk, tg=len(grp.heads) * grp.gather.G),
                                                ST=strides)
                    comp = compile_source(generate(self.prog, grp, shape, self.meta, self.skip, stats), [])
                    heads = torch.tensor(grp.heads, dtype=torch.int32)
                    groups.append((comp, [heads, [], layout]))      # [] caches the last layout's tables
                    continue
                cnt, lst, cls = tile_tables(grp)
                shape = dataclasses.replace(group_shape(self.prog, grp, lst.shape[-1]), ST=strides)
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
            self.variants[stats, strides] = groups
        return self.variants[stats, strides]

    @property
    def source(self):
        return "\n".join(c.source for c, _ in self.groups)

    @property
    def seconds(self):
        return sum(c.seconds for c, _ in self.groups)

    def __call__(self, q, k, v, tensors, return_lse=False):
        qf, kf, vf = (operand(x) for x in (q, k, v))
        B, H, N, _ = q.shape
        o = output_like(qf, v.shape[-1])
        strides = tuple(x.stride() for x in (qf, kf, vf, o))
        strides = () if all(x.is_contiguous() for x in (qf, kf, vf, o)) else strides
        lse = torch.empty(B, H, N, dtype=torch.float32)
        tabs = [as_table(tensors[n]) if n in tensors else self.consts[n] for n in self.names]
        route, extra = self.route, []
        if route is not None:           # the kernel's routing prologue writes it (return_routing)
            self.route_idx = torch.empty(B, route.count, route.topk, dtype=torch.int32)
            extra = [self.route_idx]
        self.groups = self.kernels(return_lse, strides)
        for (comp, args), grp in zip(self.groups, self.prog.groups):
            if isinstance(args[-1], RuntimeLayout):         # this call's layout decides the key tiles
                layout = args[-1]
                args = [args[0], *layout.cached_tables(args[-2], grp, tabs[self.names.index(layout.name)])]
            comp.fn(qf, kf, vf, o, lse, *args, *extra, *tabs)
        o = o.to(q.dtype)
        return (o, lse) if return_lse else o

    def explain_backward(self):
        """The backward's part of explain(): the generated kernels' plans and sources once a
        backward compiled them, else what a backward will run."""
        why = why_not(self.backward_program)
        if why is not None:
            return [f"backward: recomputes through the eager reference ({why})"]
        if not self.grads:
            return ["backward: generated kernels (dQ; dK and dV), compiled at the first backward"]
        out = []
        for (lse_grad, grads), groups in self.grads.items():
            for grp, _, dq, dkv, _, slots, _ in groups:
                out.append(f"=== generated backward TVMScript, heads {grp.heads}: {grp.plan}"
                           + (f"; gradients of {', '.join(grads)} in {slots} slots" if grads else "")
                           + ("; with the lse's gradient" if lse_grad else ""))
                out += [k.source for k in (dq, dkv) if k is not None]
        return out

    @property
    def backward_program(self):
        """The program the backward kernels are generated from: the forward's, or where it
        gathers keys per query (neighborhoods: overlapping key slots) the same spec lowered
        without such gathers (the dense source, tiles classified by the mask)."""
        if self.relower is not None and any(g.gather.per_query for g in self.prog.groups):
            return self.relower()
        return self.prog

    def backward_why_not(self, table_grads=()):
        """None when the generated backward kernels serve this program and the gradients of
        the captured tensors `table_grads` (they compile here), else why not."""
        why = why_not(self.backward_program)
        if why is None:
            try:
                self.backward_kernels(False, tuple(table_grads))
            except PrintError as e:
                why = f"the score modifier's derivative cannot be printed for the CPU ({e})"
        return why

    def backward_kernels(self, lse_grad, grads=()):
        """Per group: (group, heads, dq kernel, dkv kernel, their tables or the RuntimeLayout
        that makes them per call, gradient slots), backward.py; `grads`: the captured tensors
        that get gradients."""
        key = (lse_grad, grads)
        if key not in self.grads:
            out, prog = [], self.backward_program
            for grp in prog.groups:
                heads = torch.tensor(grp.heads, dtype=torch.int32)
                layout = RuntimeLayout.of(prog, grp)
                if self.route is not None:      # routed regions: the forward's routing table, per call
                    sh = routed_shape(prog, grp, self.route)
                    cnt, lst, cls, acls = routed_tables(self.route, sh.BM)
                    dq = compile_source(generate_dq(prog, grp, sh, self.meta, lse_grad, grads, self.route), [])
                    dkv = compile_source(generate_dkv(prog, grp, sh, self.meta, 0, lse_grad, self.route), [])
                    fixed = ([torch.from_numpy(x) for x in (cnt, lst, cls, acls)], "routed")
                    out.append((grp, heads, dq, dkv, fixed, table_slots_of(sh, self.meta, grads), (sh, [])))
                    continue
                if layout is not None:          # the tables come with each call's layout (backward)
                    nk, nq = -(-grp.gather.Lk // grp.plan.block_n), -(-grp.gather.Lq // grp.plan.block_m)
                    sh = group_shape(prog, grp, nk, tg=len(grp.heads) * grp.gather.G)
                    fixed, qmax = layout, nq
                else:
                    cnt, lst, cls = tile_tables(grp)
                    qcnt, qlst, qcls = query_tile_tables(grp)
                    sh, qmax = group_shape(prog, grp, lst.shape[-1]), qlst.shape[-1]
                    acls = torch.from_numpy(grp.blocks.classes.astype(np.int32))
                    fixed = ([torch.from_numpy(x) for x in (cnt, lst, cls)] + [acls],
                             [torch.from_numpy(x) for x in (qcnt, qlst, qcls)] + [acls])
                dq = None if fuses(prog, sh) else compile_source(generate_dq(prog, grp, sh, self.meta, lse_grad, grads), [])
                dkv = compile_source(generate_dkv(prog, grp, sh, self.meta, qmax, lse_grad, grads=grads), [])
                hoisted = pair_grads(prog, grp, sh, self.meta, grads)
                out.append((grp, heads, dq, dkv, fixed, table_slots_of(sh, self.meta, grads, len(hoisted)),
                            (sh, hoisted)))
            self.grads[key] = out
        return self.grads[key]

    def backward(self, q, k, v, out, lse, dout, dlse, tensors, grads=(), route_idx=None):
        """(dq, dk, dv, {name: gradient of each captured tensor in `grads`}) of the loss whose
        gradients are dout (for out, or None) and dlse (for lse, or None), from the generated
        kernels, in the inputs' dtypes. Deterministic: each output row has one writer, and a
        captured tensor's gradient slots are summed in order. `route_idx`: the routing table
        of the forward call (routed attention; recomputed by the forward kernel if None)."""
        if self.route is not None and route_idx is None:
            self(q, k, v, tensors, return_lse=True)
            route_idx = self.route_idx
        qf, kf, vf = (x.to(torch.float32).contiguous() for x in (q, k, v))
        do = (torch.zeros_like(out, dtype=torch.float32) if dout is None else dout.to(torch.float32)).contiguous()
        lse = lse.to(torch.float32).contiguous()
        softmax = self.prog.norm.kind == "softmax"
        # softmax: D = rowsum(dO * out); through post modifiers the dq kernel adds it up itself
        dr = (do * out.to(torch.float32)).sum(-1) if softmax and not self.prog.post else torch.zeros_like(lse)
        lse_grad = dlse is not None and not softmax
        if dlse is not None:
            dr = dr - dlse.to(torch.float32)
        dr = dr.contiguous()
        dq, dk, dv = (torch.zeros_like(x) for x in (qf, kf, vf))
        tabs = [as_table(tensors[n]) if n in tensors else self.consts[n] for n in self.names]
        dtabs = {n: torch.zeros(tensors[n].shape, dtype=torch.float64) for n in grads}
        for grp, heads, cq, ckv, fixed, slots, (sh, hoisted) in self.backward_kernels(lse_grad, tuple(grads)):
            if isinstance(fixed, RuntimeLayout):         # this call's layout decides the tiles
                lay = tabs[self.names.index(fixed.name)]
                cnt, lst, cls, acls = fixed.tables(grp, lay)
                fixed = ([cnt, lst, cls, acls], [*fixed.query_tables(grp, lay), acls])
            elif fixed[1] == "routed":                  # the query regions routed to each region
                fixed = (fixed[0], list(inverse_routes(route_idx)))
            parts = [torch.zeros(slots, *tensors[n].shape, dtype=torch.float64) for n in grads]
            tiles = [torch.zeros(slots, sh.HG, sh.BMP, sh.BNP, dtype=torch.float64) for _ in hoisted]
            routes = [route_idx] if self.route is not None else []
            if cq is None:                      # one kernel: dQ too (backward.fuses)
                ckv.fn(qf, kf, vf, do, lse, dr, dk, dv, heads, dq, *fixed[1], *parts, *tiles, *tabs)
            else:
                cq.fn(qf, kf, vf, do, lse, dr, dq, heads, *fixed[0], *parts, *tiles, *routes, *tabs)
                ckv.fn(qf, kf, vf, do, lse, dr, dk, dv, heads, *fixed[1], *tabs)
            for n, part in zip(grads, parts):
                for p in part:                  # in slot order: the same bits at any thread count
                    dtabs[n] += p
            for (n, read), tile in zip(hoisted, tiles):
                total = tile[0].clone()
                for p in tile[1:]:              # in slot order, then into the tensor's entries
                    total += p
                scatter_pair(read, grp.gather, grp.heads, total.numpy(), dtabs[n].numpy())
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                {n: dtabs[n].to(tensors[n].dtype) for n in grads})
