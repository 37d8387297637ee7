"""The Triton backend's entry points: generate one kernel per head group from a lowered
Program, load it from a real module file (triton.jit reads a kernel's source from its file),
and launch it on torch tensors: compiled for a CUDA device, or run by Triton's interpreter on
CPU tensors (correctness only, slow).

The generated module defines an undecorated function; this module wraps it itself, in a
JITFunction for a GPU or in the interpreter's InterpretedFunction for CPU tensors. That
choice is made here, per call, instead of by TRITON_INTERPRET at the moment the module is
imported: the variable is read when a kernel is decorated, so setting it in a process that
already imported triton (or unsetting it for a GPU in the same process) would not work
reliably.
"""
import contextlib
import dataclasses
import hashlib
import importlib.util
import sys
import threading
import time
import warnings

import numpy as np
import torch

from ... import cachedir
from ...ir import symbols as S
from ...ir.program import FULL
from ...version import __version__
from ..backward import why_not
from ..captured import as_table, kinds, param
from ..tiles import RuntimeLayout, query_tile_tables, tile_tables
from ..routes import route_of, routed_tables
from .backward import backward_plan, generate_dkv, generate_dq, key_blocks, not_generated, table_slots_of
from .linear import ROWS, generate_linear, linear_tables, value_block
from .printer import PrintError
from .prologue import affinity_topk, region_sums
from .source import KERNEL, GroupShape, generate, group_shape, pow2


class Unsupported(NotImplementedError):
    """A spec the Triton backend cannot serve yet (the message says why and what to use)."""


def unsupported(prog):
    """Why the backend cannot serve a (canonical or lowered) Program, or None."""
    return route_of(prog, "triton")[1]


def check(prog):
    why = unsupported(prog)
    if why:
        raise Unsupported(why)
    for grp in prog.groups if not prog.prologues else ():
        assert not grp.gather.per_query, "the Triton target tiles a dense key source for per-query gathers"
        assert S.b not in S.free_index_symbols(grp.gather.k_token), "static key maps do not depend on the batch"


def sweep_tables(grp):
    """The tile tables in the order the kernel sweeps them: per (gather group, query tile),
    the FULL tiles that end inside the keys first (swept without masks), then the others.
    Returns (counts [G, NQ, 2]: all tiles and the FULL ones, list, class)."""
    cnt, lst, cls = tile_tables(grp)
    end = (lst + 1) * grp.plan.block_n <= grp.gather.Lk
    live = np.arange(lst.shape[-1]) < cnt[..., None]
    clean = (cls == FULL) & end & live
    order = np.argsort(~clean, axis=-1, kind="stable")        # clean tiles first, each part in key order
    lst = np.take_along_axis(lst, order, -1)
    cls = np.take_along_axis(cls, order, -1)
    return np.stack((cnt, clean.sum(-1, dtype=np.int32)), -1).astype(np.int32), lst, cls


def table_meta(prog, tensors):
    """IR table name -> (kernel parameter, shape, kind) for captured tensors and constants."""
    return {n: (param(n), shape, kind) for n, (shape, kind) in kinds(prog, tensors).items()}


def cache_dir():
    return cachedir.folder("triton")


_MODULES = {}


def write_source(path, source):
    """Make `path` hold exactly `source`: written when missing; a file that differs (truncated,
    overwritten) is rewritten, with a CacheWarning. Atomic: concurrent processes see a whole file."""
    want = source.encode()
    try:
        have = path.read_bytes()
    except FileNotFoundError:
        have = None
    if have == want:
        return
    if have is not None:
        warnings.warn(f"attncc: the cached Triton kernel source {path} does not match the generated source "
                      f"({len(have)} bytes, expected {len(want)}: truncated or overwritten); rewrote it",
                      cachedir.CacheWarning, stacklevel=4)
    cachedir.write_atomic(path, want)


def load_source(source):
    """The generated kernel function of `source`, imported from a file in the cache directory
    (named by the hash of the source and the attncc version)."""
    key = hashlib.sha256(f"{__version__}\n{source}".encode()).hexdigest()[:24]
    fn = _MODULES.get(key)
    if fn is None:
        path = cache_dir() / f"attncc_triton_{key}.py"
        write_source(path, source)
        name = f"attncc_triton_{key}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod             # inspect.getsource (used by triton) finds it
        spec.loader.exec_module(mod)
        from triton.runtime.jit import JITFunction
        for helper in mod.HELPERS:           # device functions the kernel calls are jitted
            setattr(mod, helper, JITFunction(getattr(mod, helper)))
        fn = _MODULES[key] = getattr(mod, KERNEL)
    return fn


_WRAPPED = {}
_STDLIB_LOCK = threading.Lock()


def _bf16_as_fp32(handle):
    """An interpreter tensor of bfloat16 (stored as uint16 bit patterns) as exact float32."""
    from triton.runtime.interpreter import TensorHandle
    import triton.language as tl
    data = (handle.data.astype(np.uint32) << 16).view(np.float32)
    return TensorHandle(data, tl.float32)


@contextlib.contextmanager
def interpreter_patches(*modules):
    """Make the interpreter run generated kernels whatever the import order, for the duration
    of an interpreted launch (then restore everything):

    - Triton's standard-library functions (tl.zeros, tl.max, tl.sum ...) are themselves jitted
      when triton is imported; without TRITON_INTERPRET=1 at that moment they cannot run under
      the interpreter, so interpreted versions of them are swapped in;
    - the interpreter's tl.dot multiplies bfloat16 operands as their uint16 bit patterns
      (triton 3.9); they are widened to float32 first, which is exact (the GPU's bf16 MMA also
      multiplies exactly and accumulates in fp32)."""
    import triton.experimental.gluon  # noqa: F401  (imported lazily by a launch; it checks the stdlib is jitted)
    import triton.language as tl
    from triton.language import standard
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction
    builder = interpreter.interpreter_builder
    with _STDLIB_LOCK:
        saved = []
        for mod in (tl, standard, *modules):
            for name, member in list(vars(mod).items()):
                if isinstance(member, JITFunction):
                    saved.append((mod, name, member))
                    setattr(mod, name, interpreter.InterpretedFunction(member.fn))
        dot = builder.create_dot

        def create_dot(a, b, d, *args):
            if a.dtype == tl.bfloat16:
                a = _bf16_as_fp32(a)
            if b.dtype == tl.bfloat16:
                b = _bf16_as_fp32(b)
            return dot(a, b, d, *args)
        builder.create_dot = create_dot
        try:
            yield
        finally:
            del builder.create_dot                # back to the class's method
            for mod, name, member in saved:
                setattr(mod, name, member)


def wrap(fn, interpret):
    """The launchable kernel: Triton's interpreter for CPU tensors, else a JITFunction."""
    key = (fn, interpret)
    got = _WRAPPED.get(key)
    if got is None:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction
            got = InterpretedFunction(fn)
        else:
            from triton.runtime.jit import JITFunction
            got = JITFunction(fn)
        _WRAPPED[key] = got
    return got


def routed_shape(prog, grp, route):
    """The static sizes of the routed kernel: query tiles of a region's tokens, one key tile
    per routed region."""
    d, n = prog.dims, route.tokens
    bm = min(grp.plan.block_m, n)
    nq = -(-n // bm)
    return GroupShape(B=d.B, H=d.H, N=d.N, M=d.M, D=d.d, DV=d.dv, HG=len(grp.heads), G=route.count, LQ=n,
                      LK=route.topk * n, BM=bm, BN=n, NQ=nq, KMAX=route.topk, AQ=bm, AK=n, NQA=nq, NKA=route.topk,
                      BMP=pow2(bm), BNP=pow2(n), DP=pow2(d.d), DVP=pow2(d.dv))


def group_tables(prog, grp, route):
    """(shape, [heads, counts, list, class, atom classes]) of a group kernel."""
    if route is not None:
        shape = routed_shape(prog, grp, route)
        cnt, lst, cls, acls = routed_tables(route, shape.BM)
        cnt = np.stack((cnt, cnt), -1)                  # every routed tile is FULL
    elif RuntimeLayout.of(prog, grp) is not None:     # the tables come with each call's layout
        nk = -(-grp.gather.Lk // grp.plan.block_n)
        heads = torch.tensor(grp.heads, dtype=torch.int32)
        return group_shape(prog, grp, nk, tg=len(grp.heads) * grp.gather.G), [heads]
    else:
        cnt, lst, cls = sweep_tables(grp)
        shape, acls = group_shape(prog, grp, lst.shape[-1]), grp.blocks.classes.astype(np.int32)
    return shape, [torch.tensor(grp.heads, dtype=torch.int32), *(torch.from_numpy(np.ascontiguousarray(x))
                                                                 for x in (cnt, lst, cls, acls))]


class GroupKernel:
    """One head group's generated kernel and the static tables it reads."""

    def __init__(self, prog, grp, meta, route=None):
        self.grp = grp
        self.shape, self.tables = group_tables(prog, grp, route)
        self.layout = RuntimeLayout.of(prog, grp) if route is None else None
        self.layout_at = list(meta).index(self.layout.name) if self.layout else None
        self._tables = []           # the last call's layout and its tables
        t0 = time.perf_counter()
        self.source = generate(prog, grp, self.shape, meta, route)
        self.fn = load_source(self.source)
        self.seconds = time.perf_counter() - t0
        self._on = {}

    def tables_on(self, device):
        key = str(device)
        if key not in self._on:
            self._on[key] = [t.to(device) for t in self.tables]
        return self._on[key]

    def launch(self, q, k, v, o, lse, tabs, stats, extra=()):
        plan = self.grp.plan
        tables = self.tables_on(q.device)
        if self.layout is not None:         # this call's layout decides the key tiles
            tables = [*tables, *self.layout.cached_tables(self._tables, self.grp, tabs[self.layout_at], True)]
        run(self.fn, (self.shape.programs,), q, k, v, o, lse, *tables, *extra, *tabs, STATS=stats,
            num_warps=plan.num_warps, num_stages=plan.num_stages)


def run(fn, grid, *args, **kw):
    """Launch a generated kernel: compiled for a GPU, under the interpreter for CPU tensors."""
    interpret = args[0].device.type == "cpu"
    with interpreter_patches(sys.modules[fn.__module__]) if interpret else contextlib.nullcontext():
        wrap(fn, interpret)[grid](*args, **kw)


class LinearGroup:
    """One linear-attention head group's three generated kernels (linear.py): tile states,
    their prefix sums, the application to the query tiles."""

    def __init__(self, prog, grp, meta):
        self.grp = grp
        cnt, lst, cls = linear_tables(grp)
        self.shape = sh = group_shape(prog, grp, lst.shape[-1])
        acls = grp.blocks.classes.astype(np.int32)
        self.tables = [torch.tensor(grp.heads, dtype=torch.int32),
                       *(torch.from_numpy(np.ascontiguousarray(x)) for x in (cnt, lst, cls, acls))]
        t0 = time.perf_counter()
        self.sources = generate_linear(prog, grp, sh, meta)
        self.states, self.prefix, self.apply = (load_source(x) for x in self.sources)
        self.seconds = time.perf_counter() - t0
        self.nk = -(-sh.LK // sh.BN)
        self._on = {}

    @property
    def source(self):
        return "\n".join(self.sources)

    tables_on = GroupKernel.tables_on

    def launch(self, q, k, v, o, lse, tabs, stats, extra=()):
        sh, plan = self.shape, self.grp.plan
        heads, cnt, lst, cls, acls = self.tables_on(q.device)
        items = sh.B * sh.HG * sh.G
        f32, f64 = (dict(dtype=dt, device=q.device) for dt in (torch.float32, torch.float64))
        st = torch.empty(items * self.nk, sh.DP, sh.DVP, **f32)
        zt = torch.empty(items * self.nk, sh.DP, **f64)
        pst = torch.empty(items * (self.nk + 1), sh.DP, sh.DVP, **f32)
        pzt = torch.empty(items * (self.nk + 1), sh.DP, **f64)
        kw = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
        nj = value_block(sh)[1]
        run(self.states, (items * self.nk * nj,), k, v, heads, st, zt, *tabs, **kw)
        run(self.prefix, (items * (sh.DP // min(ROWS, sh.DP)),), st, zt, pst, pzt, num_warps=4)
        run(self.apply, (sh.programs * nj,), q, k, v, o, heads, cnt, lst, cls, acls, st, zt, pst, pzt, *tabs, **kw)


class RoutingPrologue:
    """The two generated prologue kernels of bi-level routing (prologue.py)."""

    def __init__(self, prog, route):
        self.route, self.dims = route, prog.dims
        src, self.wp = region_sums(route, prog.dims)
        self.sources = (src, affinity_topk(route, self.wp))
        self.sums, self.topk = (load_source(x) for x in self.sources)

    def __call__(self, q, k):
        r, B = self.route, q.shape[0]
        qm = torch.empty(B * r.count, self.wp, dtype=torch.float32, device=q.device)
        km = torch.empty_like(qm)
        idx = torch.empty(B, r.count, r.topk, dtype=torch.int32, device=q.device)
        run(self.sums, (B * r.count,), q, k, qm, km)
        run(self.topk, (B * r.count,), qm, km, idx)
        return idx


class BackwardGroup:
    """One head group's generated backward kernels (backward.py: dq, then dkv) and the tables
    they read: static, or made from each call's block-sparse layout; `grads`: the captured
    tensors whose gradients the dq kernel adds."""

    def __init__(self, prog, grp, meta, lse_grad, grads):
        self.grp = grp = dataclasses.replace(grp, plan=backward_plan(prog, grp))     # the backward's own tiles
        self.layout = RuntimeLayout.of(prog, grp)
        self.layout_at = list(meta).index(self.layout.name) if self.layout else None
        heads = torch.tensor(grp.heads, dtype=torch.int32)
        if self.layout is not None:         # the tables come with each call's layout (launch)
            nk, nq = -(-grp.gather.Lk // grp.plan.block_n), -(-grp.gather.Lq // grp.plan.block_m)
            self.shape = sh = group_shape(prog, grp, nk, tg=len(grp.heads) * grp.gather.G)
            self.tables, qmax = ([heads], [heads]), nq
        else:
            cnt, lst, cls = tile_tables(grp)
            qcnt, qlst, qcls = query_tile_tables(grp)
            self.shape = sh = group_shape(prog, grp, lst.shape[-1])
            acls = torch.from_numpy(grp.blocks.classes.astype(np.int32))
            self.tables = ([heads, *(torch.from_numpy(np.ascontiguousarray(x)) for x in (cnt, lst, cls)), acls],
                           [heads, *(torch.from_numpy(np.ascontiguousarray(x)) for x in (qcnt, qlst, qcls)), acls])
            qmax = qlst.shape[-1]
        self.slots = table_slots_of(sh, meta, grads)
        t0 = time.perf_counter()
        self.sources = (generate_dq(prog, grp, sh, meta, lse_grad, grads),
                        generate_dkv(prog, grp, sh, meta, qmax, lse_grad))
        self.dq, self.dkv = (load_source(x) for x in self.sources)
        self.seconds = time.perf_counter() - t0
        self._on = {}

    def tables_on(self, device):
        key = str(device)
        if key not in self._on:
            self._on[key] = tuple([t.to(device) for t in tabs] for tabs in self.tables)
        return self._on[key]

    def launch(self, q, k, v, do, lse, dr, dq, dk, dv, parts, tabs):
        sh, plan = self.shape, self.grp.plan
        kw = dict(num_warps=plan.num_warps, num_stages=plan.num_stages)
        dq_tabs, dkv_tabs = self.tables_on(q.device)
        if self.layout is not None:         # this call's layout decides the tiles
            layout = tabs[self.layout_at]
            cnt, lst, cls, acls = self.layout.tables(self.grp, layout)
            dq_tabs = [*dq_tabs, cnt, lst, cls, acls]
            dkv_tabs = [*dkv_tabs, *self.layout.query_tables(self.grp, layout), acls]
        run(self.dq, (self.slots,), q, k, v, do, lse, dr, dq, *dq_tabs, *parts, *tabs, **kw)
        run(self.dkv, (sh.B * sh.HG * sh.G * key_blocks(sh),), q, k, v, do, lse, dr, dk, dv, *dkv_tabs, *tabs, **kw)


def ordered_sum(parts):
    """The sum over dim 0 of `parts`, pairwise in a fixed order: the same bits on any device
    and at any thread count (a reduction kernel may split the sum by the hardware)."""
    while len(parts) > 1:
        half = len(parts) // 2
        pairs = parts[:half] + parts[half:2 * half]
        parts = torch.cat((pairs, parts[2 * half:])) if len(parts) % 2 else pairs
    return parts[0]


class TritonProgram:
    """The generated kernels of a Program for one set of captured-tensor shapes."""

    def __init__(self, prog, tensors):
        check(prog)
        self.prog = prog
        self.meta = table_meta(prog, tensors)
        self.names = list(self.meta)
        self.consts = {c.name: torch.from_numpy(np.ascontiguousarray(c.array, dtype=np.int32))
                       for c in prog.constants}
        route, _ = route_of(prog, "triton")
        self.prologue = RoutingPrologue(prog, route) if route else None
        self.groups = [LinearGroup(prog, grp, self.meta) if prog.norm.kind == "linear"
                       else GroupKernel(prog, grp, self.meta, route) for grp in prog.groups]
        self.grads = {}

    @property
    def source(self):
        pro = list(self.prologue.sources) if self.prologue else []
        return "\n".join(pro + [g.source for g in self.groups])

    @property
    def seconds(self):
        return sum(g.seconds for g in self.groups)

    def __call__(self, q, k, v, tensors, return_lse=False):
        dt = q.dtype if q.dtype != torch.float64 else torch.float32   # fp64 runs in fp32 (fp32 accumulation)
        qc, kc, vc = (x.to(dt).contiguous() for x in (q, k, v))
        B, H, N, _ = q.shape
        o = torch.empty(B, H, N, v.shape[-1], dtype=dt, device=q.device)
        lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
        tabs = [as_table(tensors[n], q.device) if n in tensors else self.consts[n].to(q.device) for n in self.names]
        stats = bool(return_lse) or self.prog.norm.kind != "sigmoid"
        extra = []
        if self.prologue is not None:               # the routing table (return_routing reads it)
            self.route_idx = self.prologue(qc, kc)
            extra = [self.route_idx]
        for g in self.groups:
            g.launch(qc, kc, vc, o, lse, tabs, stats, extra)
        o = o.to(q.dtype)
        return (o, lse) if return_lse else o

    def backward_why_not(self, table_grads=()):
        """None when the generated backward kernels serve this program and the gradients of
        the captured tensors `table_grads` (they are generated here), else why not."""
        why = why_not(self.prog) or not_generated(self.prog)
        if why is None:
            try:
                self.backward_kernels(False, tuple(table_grads))
            except PrintError as e:
                why = f"the score modifier's derivative cannot be printed for Triton ({e})"
        return why

    def explain_backward(self):
        """The backward's part of explain(): the generated kernels' plans and sources once a
        backward generated them, else what a backward will run."""
        why = why_not(self.prog) or not_generated(self.prog)
        if why is not None:
            return [f"backward: recomputes through the eager reference ({why})"]
        if not self.grads:
            return ["backward: generated kernels (dQ; dK and dV), generated at the first backward"]
        out = []
        for (lse_grad, grads), groups in self.grads.items():
            for bg in groups:
                out.append(f"=== generated backward Triton source, heads {bg.grp.heads}: {bg.grp.plan}"
                           + (f"; gradients of {', '.join(grads)} in {bg.slots} slots" if grads else "")
                           + ("; with the lse's gradient" if lse_grad else ""))
                out += list(bg.sources)
        return out

    def backward_kernels(self, lse_grad, grads=()):
        """The BackwardGroup of every head group, for a sigmoid lse with a gradient or not
        (`lse_grad`) and the captured tensors `grads` that get gradients."""
        key = (lse_grad, grads)
        if key not in self.grads:
            self.grads[key] = [BackwardGroup(self.prog, grp, self.meta, lse_grad, grads) for grp in self.prog.groups]
        return self.grads[key]

    def backward(self, q, k, v, out, lse, dout, dlse, tensors, grads=(), route_idx=None):
        """(dq, dk, dv, {name: gradient of each captured tensor in `grads`}) of the loss whose
        gradients are dout (for out, or None) and dlse (for lse, or None), from the generated
        kernels, in the inputs' dtypes. Deterministic: each output row has one writer, and a
        captured tensor's gradient slots are summed in a fixed order. (`route_idx`: the
        autograd protocol's routing table; routed programs have no Triton backward yet.)"""
        dt = q.dtype if q.dtype != torch.float64 else torch.float32   # as the forward: fp64 runs in fp32
        qc, kc, vc = (x.to(dt).contiguous() for x in (q, k, v))
        do = (torch.zeros_like(out, dtype=dt) if dout is None else dout.to(dt)).contiguous()
        lse = lse.to(torch.float32).contiguous()
        softmax = self.prog.norm.kind == "softmax"
        dr = (do.float() * out.float()).sum(-1) if softmax else torch.zeros_like(lse)
        lse_grad = dlse is not None and not softmax
        if dlse is not None:
            dr = dr - dlse.to(torch.float32)
        dr = dr.contiguous()
        dq, dk, dv = (torch.zeros_like(x) for x in (qc, kc, vc))
        tabs = [as_table(tensors[n], q.device) if n in tensors else self.consts[n].to(q.device) for n in self.names]
        dtabs = {n: torch.zeros(tensors[n].shape, dtype=torch.float64, device=q.device) for n in grads}
        for bg in self.backward_kernels(lse_grad, tuple(grads)):
            parts = [torch.zeros(bg.slots, *tensors[n].shape, dtype=torch.float64, device=q.device) for n in grads]
            bg.launch(qc, kc, vc, do, lse, dr, dq, dk, dv, parts, tabs)
            for n, part in zip(grads, parts):
                dtabs[n] += ordered_sum(part)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                {n: dtabs[n].to(tensors[n].dtype) for n in grads})
