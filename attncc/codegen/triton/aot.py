"""Ahead-of-time compiles of generated Triton kernels for NVIDIA GPUs, without a GPU:
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 80 | 90, 32))`` builds PTX and a
cubin (ptxas runs on this machine), and reports the shared memory the kernel needs; ptxas's
log gives registers and spills. A routed program's two prologue kernels are compiled too
(their seconds count in its row). `compile_backward` builds the generated backward kernels
(dq and dkv, a row each) of a program the generated backward serves."""
import contextlib
import io
import re
import time
from dataclasses import dataclass

from ...ir.plan import FAST_MEMORY, shared_memory
from ..backward import grad_param, why_not
from ..routes import route_of
from .backend import BackwardGroup, LinearGroup, RoutingPrologue, check, group_tables, load_source, table_meta
from .backward import dkv_params, dq_params, not_generated
from .source import generate

ARCHS = {"sm_80": 80, "sm_90": 90}
POINTER = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}


@dataclass(frozen=True)
class AotResult:
    """One group kernel compiled for one arch."""
    arch: str
    heads: tuple
    plan: object
    shared: int             # bytes, as Triton's compiled metadata reports them
    model: int | None       # bytes, as the plan's shared-memory model predicted them (forward kernels)
    seconds: float
    registers: int | None
    spills: int | None
    kernel: str = "forward"     # or the backward's "dq" and "dkv"

    @property
    def limit(self):
        return FAST_MEMORY[self.arch].bytes

    @property
    def fits(self):
        return self.shared <= self.limit


def signature(prog, meta, routed=False):
    elem = POINTER[prog.dtype]
    sig = {n: elem for n in ("q", "k", "v", "o")}
    sig["lse"] = "*fp32"
    sig.update({n: "*i32" for n in ("heads", "tcnt", "tlist", "tcls", "acls", *(["route_idx"] if routed else []))})
    for param, _, kind in meta.values():
        sig[param] = "*fp32" if kind == "float" else "*i32"
    sig["STATS"] = "constexpr"
    return sig


def _ptxas_counts(log):
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return (int(regs[-1]) if regs else None), (int(spills[-1]) if spills else None)


def _build(fn, sig, constexprs, target, options):
    """triton.compile one generated kernel; (compiled kernel, registers, spill bytes) from ptxas's log."""
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    log = io.StringIO()
    knobs = triton.knobs.nvidia
    old = knobs.dump_ptxas_log
    knobs.dump_ptxas_log = True           # ptxas -v's log (registers, spills) goes to stdout
    try:
        with contextlib.redirect_stdout(log):
            kern = triton.compile(ASTSource(fn=JITFunction(fn), signature=sig, constexprs=constexprs), target=target,
                                  options=options)
    finally:
        knobs.dump_ptxas_log = old
    return (kern, *_ptxas_counts(log.getvalue()))


def backward_signatures(prog, meta, grads):
    """The dq and dkv kernels' signatures (backward.dq_params, dkv_params): q, k, v, dO and the
    gradients of q, k, v in the input dtype, lse and Dr fp32, tables int32, the captured
    tensors' gradient slots fp64."""
    elem = POINTER[prog.dtype]
    kinds = {**{n: elem for n in ("q", "k", "v", "do", "dq", "dk", "dv")}, "lse": "*fp32", "dr": "*fp32",
             **{grad_param(n): "*fp64" for n in grads},
             **{p: ("*fp32" if kind == "float" else "*i32") for p, _, kind in meta.values()}}
    return ({n: kinds.get(n, "*i32") for n in dq_params(meta, grads)},
            {n: kinds.get(n, "*i32") for n in dkv_params(meta)})


def _target(prog):
    """The GPUTarget of a Program lowered for an arch of ARCHS, in a dtype a GPU kernel takes."""
    from triton.backends.compiler import GPUTarget
    if prog.target not in ARCHS:
        raise ValueError(f"ahead-of-time compiles need a Program lowered for {sorted(ARCHS)}, got {prog.target!r}")
    if prog.dtype not in POINTER:
        raise ValueError(f"ahead-of-time compiles take float16, bfloat16 or float32, got {prog.dtype!r}")
    check(prog)
    return GPUTarget("cuda", ARCHS[prog.target], 32)


def compile_backward(prog, tensors):
    """Compile every head group's backward kernels (dq, dkv) of a lowered Program the generated
    backward serves, as training runs them: the lse without a gradient of its own, and the
    gradients of every float captured tensor (a relative position bias is a parameter)."""
    target = _target(prog)
    why = why_not(prog) or not_generated(prog)
    if why is not None:
        raise ValueError(f"the generated backward does not serve this program: {why}")
    meta = table_meta(prog, tensors)
    grads = tuple(n for n, x in tensors.items() if x.is_floating_point())
    results = []
    for grp in prog.groups:
        t0 = time.perf_counter()
        bg = BackwardGroup(prog, grp, meta, False, grads)
        made = time.perf_counter() - t0
        plan = bg.grp.plan                  # the backward's own (backward.backward_plan)
        opts = {"num_warps": plan.num_warps, "num_stages": plan.num_stages}
        for name, fn, sig in zip(("dq", "dkv"), (bg.dq, bg.dkv), backward_signatures(prog, meta, grads)):
            t0 = time.perf_counter()
            kern, regs, spills = _build(fn, sig, {}, target, opts)
            results.append(AotResult(prog.target, grp.heads, plan, int(kern.metadata.shared), None,
                                     time.perf_counter() - t0 + made / 2, regs, spills, name))
    return results


def compile_program(prog, tensors, stats=True):
    """Compile every head group's kernel of a lowered Program (its target is the arch)."""
    target = _target(prog)
    meta = table_meta(prog, tensors)
    elem = 2 if prog.dtype in ("float16", "bfloat16") else 4
    route, _ = route_of(prog, "triton")
    pro_secs = 0.0
    if route is not None:                   # the routing prologue's two kernels must build too
        t0 = time.perf_counter()
        pro = RoutingPrologue(prog, route)
        elem_ptr = POINTER[prog.dtype]
        for fn, sig in ((pro.sums, {"q": elem_ptr, "k": elem_ptr, "qm": "*fp32", "km": "*fp32"}),
                        (pro.topk, {"qm": "*fp32", "km": "*fp32", "route_idx": "*i32"})):
            _build(fn, sig, {}, target, {"num_warps": 4})
        pro_secs = time.perf_counter() - t0
    results = []
    for grp in prog.groups:
        plan = grp.plan
        opts = {"num_warps": plan.num_warps, "num_stages": plan.num_stages}
        t0 = time.perf_counter()
        if prog.norm.kind == "linear":          # states and prefix build first; apply is the main kernel
            lin = LinearGroup(prog, grp, meta)
            tabs = {p: ("*fp32" if kind == "float" else "*i32") for p, _, kind in meta.values()}
            f32, f64, i32, ptr = "*fp32", "*fp64", "*i32", POINTER[prog.dtype]
            _build(lin.states, {"k": ptr, "v": ptr, "heads": i32, "st": f32, "zt": f64, **tabs}, {}, target, opts)
            _build(lin.prefix, {"st": f32, "zt": f64, "pst": f32, "pzt": f64}, {}, target, {"num_warps": 4})
            sig = {"q": ptr, "k": ptr, "v": ptr, "o": ptr,
                   **{n: i32 for n in ("heads", "tcnt", "tlist", "tcls", "acls")},
                   "st": f32, "zt": f64, "pst": f32, "pzt": f64, **tabs}
            kern, regs, spills = _build(lin.apply, sig, {}, target, opts)
        else:
            shape, _ = group_tables(prog, grp, route)
            fn = load_source(generate(prog, grp, shape, meta, route))
            kern, regs, spills = _build(fn, signature(prog, meta, route is not None), {"STATS": stats}, target, opts)
        secs = time.perf_counter() - t0 + pro_secs
        results.append(AotResult(prog.target, grp.heads, plan, int(kern.metadata.shared),
                                 shared_memory(plan, prog.dims.d, prog.dims.dv, elem), secs, regs, spills))
    return results
