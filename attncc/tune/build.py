"""How a tuning candidate is compiled, per target: tvm_build (the TVM CPU backend) and
triton_build (the Triton backend for the GPU plan targets "sm_80" / "sm_90", which needs a
CUDA GPU of that arch: need_gpu), the tuner's seeded inputs, and plan labels."""
import time

import torch

from ..passes.pipeline import lower

# the Triton plan targets: tuned on a CUDA GPU of that arch (runtime/kernel.py triton_target)
GPU_TARGETS = ("sm_80", "sm_90")


def plan_label(plans, target="tvm"):
    if target in GPU_TARGETS:
        return " | ".join(f"{p.block_m}x{p.block_n} w{p.num_warps} s{p.num_stages}" for p in plans)
    return " | ".join(f"{p.block_m}x{p.block_n} u{p.unroll} v{p.vector}" for p in plans)


def make_inputs(dims, dtype, seed=0, device="cpu"):
    """Seeded q, k, v (drawn on the CPU, the same on every device), on `device`."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(dims.B, dims.H, dims.N, dims.d, generator=gen).to(dtype)
    k = torch.randn(dims.B, dims.H, dims.M, dims.d, generator=gen).to(dtype)
    v = torch.randn(dims.B, dims.H, dims.M, dims.dv, generator=gen).to(dtype)
    return tuple(x.to(device) for x in (q, k, v))


def need_gpu(target):
    """The CUDA device that tunes `target`'s Triton plans (the current one); a clear error when
    there is none, or when it runs another arch's plans."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"tuning Triton plans for target {target!r} needs a CUDA GPU, and torch sees none "
            "(torch.cuda.is_available() is False); candidates are timed on the GPU, never in Triton's interpreter. "
            f"Run it on a GPU machine: `python bench/tune.py --target {target} --ship schedules/`, or "
            "`bash bench/gpu_run.sh tune` in a session with a lent GPU")
    from ..runtime.kernel import triton_target
    dev = torch.device("cuda", torch.cuda.current_device())
    arch = triton_target(dev)
    if arch != target:
        raise ValueError(f"target {target!r} does not match this GPU: {torch.cuda.get_device_name(dev)} (compute "
                         f"capability {'.'.join(map(str, torch.cuda.get_device_capability(dev)))}) runs {arch!r} "
                         f"plans; tune target={arch!r} here, or tune {target!r} on a GPU of that arch")
    return dev


def tvm_build(spec, dims, dtype, tensors, plans, target="tvm"):
    """Compile a candidate with the TVM backend: a callable (q, k, v, tensors) -> out, and the
    compile seconds."""
    from ..codegen.tvm.backend import TVMProgram
    t0 = time.perf_counter()
    comp = TVMProgram(lower(spec, dims, dtype, target, plans=plans, verify=False).program, tensors)
    fn = lambda q, k, v, t: comp(q, k, v, t)     # noqa: E731
    fn.program = comp                            # what an RPC runner uploads
    return fn, time.perf_counter() - t0


def triton_build(spec, dims, dtype, tensors, plans, target="sm_90", interpret=False):
    """Compile a candidate with the Triton backend for a GPU plan target: a callable (q, k, v,
    tensors) -> out that launches the generated kernels on the inputs' device, and the seconds
    of generating them (Triton compiles at the first call, the oracle check). A CUDA GPU of
    that arch is required unless interpret=True (CPU tensors run Triton's interpreter: for
    tests of the plan plumbing, never for timing)."""
    from ..codegen.triton.backend import TritonProgram
    if not interpret:
        need_gpu(target)
    t0 = time.perf_counter()
    comp = TritonProgram(lower(spec, dims, dtype, target, plans=plans, verify=False).program, tensors)
    fn = lambda q, k, v, t: comp(q, k, v, t)     # noqa: E731
    fn.program = comp
    return fn, time.perf_counter() - t0


BUILDERS = {"tvm": tvm_build, "sm_80": triton_build, "sm_90": triton_build}
