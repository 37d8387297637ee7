"""``ac.compile``, ``ac.reference`` and the Kernel they return.

A Kernel is specialised per call shape: the first call with new shapes lowers the spec
through the pass pipeline (cached per shape and dtype), later calls run the backend.
"""
import contextlib
import math
import sys
import warnings

import torch

from ..dsl.spec import Attention
from ..ir.program import Dims
from ..passes.pipeline import lower
from ..reference import eager
from . import custom_op
from .autograd import differentiable
from .inputs import check_call, check_tables, layouts

BACKENDS = ("auto", "tvm", "triton", "reference")
TUNE = (False, None, True, "fast", "full")
# plan targets with tuned plans: the TVM CPU kernels, the Triton kernels per GPU arch
TUNED_TARGETS = ("tvm", "sm_80", "sm_90")


def available():
    """The backends this installation can run (triton needs the triton package)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ("reference", "tvm")
    return ("reference", "tvm", "triton")


class InterpreterWarning(UserWarning):
    """backend='triton' ran Triton's interpreter on CPU tensors: correct, slow, for testing."""


def _resolve(backend, device="cpu"):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        return "tvm" if device == "cpu" else "reference"
    if backend not in available():
        raise NotImplementedError(f"backend {backend!r} is not available in this installation of attncc "
                                  f"(available: {', '.join(available())}); pip install triton, or use "
                                  "backend='reference'")
    return backend


def triton_target(device):
    """The Triton plan target for a device: sm_90 for compute capability 9.0 and newer, else
    sm_80 (also for CPU tensors, which run under the interpreter with sm_80's plans)."""
    if getattr(device, "type", device) == "cuda":
        import torch
        major, _ = torch.cuda.get_device_capability(device)
        return "sm_90" if major >= 9 else "sm_80"
    return "sm_80"


# Triton's interpreter runs the generated kernels from this release on (3.9 tested; 3.6's fails
# on scalar loads used as loop bounds); compiled GPU kernels also build with 3.6
INTERPRETER_TRITON = (3, 9)


def _check_interpreter():
    import triton
    got = tuple(int(x) for x in triton.__version__.split(".")[:2] if x.isdigit())
    if got < INTERPRETER_TRITON:
        raise NotImplementedError(
            f"backend='triton' on CPU tensors runs Triton's interpreter, which needs triton >= "
            f"{'.'.join(map(str, INTERPRETER_TRITON))} for attncc's kernels, but triton {triton.__version__} is "
            "installed; upgrade triton (pip install 'triton>=3.9'), use CUDA tensors, or backend='tvm' on the CPU")


class Kernel:
    """A compiled attention spec: ``kern(q, k, v, return_lse=False, **tensors)``.

    q [B, H, N, d], k [B, H, M, d], v [B, H, M, dv] -> out [B, H, N, dv] (and lse [B, H, N],
    natural log, float32, when return_lse=True). Tensors the spec captures by name are passed
    by keyword. ``explain()`` prints the IR after each pass, the plans and the cost.
    """

    def __init__(self, spec, backend="auto", tune=False):
        if not isinstance(spec, Attention):
            raise TypeError(f"compile takes an ac.Attention spec, got {type(spec).__name__} ({spec!r}); "
                            "wrap a pattern as ac.Attention(pattern=...)")
        if not any(tune is t for t in TUNE):
            raise ValueError(f"tune must be False, True, 'fast' or 'full', got {tune!r}")
        self.spec = spec
        self.requested = backend
        self.backend = _resolve(backend)
        # tune: look the plan up in the schedule database (exact shape, then shape bucket), else
        # run the autotuner at the first call of a shape (attncc/tune); "full" searches everything.
        # TVM plans are tuned on this CPU, Triton plans on the CUDA GPU the call's tensors are on
        self.tune = {True: "fast"}.get(tune, tune) or None
        if self.tune and self.backend not in ("tvm", "triton"):
            raise ValueError(f"tune={tune!r} tunes the generated kernels' plans (TVM on the CPU, Triton on a CUDA GPU); "
                             f"backend={backend!r} has nothing to tune (the reference is not tiled); use backend='auto', "
                             "'tvm' or 'triton', or tune=False")
        self._tuned = {}
        self._lowered = {}
        self._compiled = {}
        self._tables_ok = set()         # call keys whose captured tensors check_tables found valid
        self._last = None
        self._warned = False
        self._op_ref = custom_op.register(self, "k")    # names this kernel to the torch custom op

    def _kernel_for_ref(self, suffix):
        return self

    def lower(self, dims, dtype="float32", target=None, per_query=True):
        """The Lowered pipeline result for these dims (cached). `target` defaults to the
        backend's (the triton backend plans for sm_80 unless a call's device says sm_90).
        With tune=..., the plans come from the schedule database when it has them (for a GPU
        target: what a call on CUDA tensors looked up or tuned, tuned_plans). per_query=False:
        without per-query key gathers (the backward's program for neighborhoods)."""
        target = target or self._target
        key = (dims, dtype, target) + (() if per_query else ("no per-query gathers",))
        got = self._lowered.get(key)
        if got is None:
            plans = None
            if self.tune and target == "tvm":
                plans = self.tuned_plans(dims, dtype)
            elif self.tune and target in TUNED_TARGETS:
                plans = self._tuned.get(key)
            try:
                got = lower(self.spec, dims, dtype, target=target, plans=plans if per_query else None,
                            per_query=per_query)
            except ValueError:
                if plans is None or self._tuned.get(key) is not None:
                    raise
                # a record of a nearby shape whose tiles do not fit this shape's atoms: defaults
                got = lower(self.spec, dims, dtype, target=target, per_query=per_query)
            self._lowered[key] = got
        self._last = (dims, dtype)
        return got

    def tuned_plans(self, dims, dtype, tensors=None, target="tvm", device=None):
        """The plans tuning chose for these shapes and plan target: this kernel's own tuning run,
        else the database (exact shape, then bucket), else None (defaults). Records are keyed by
        the device: this CPU for "tvm", the CUDA `device` for "sm_80" / "sm_90" (a GPU target's
        answer is kept for lower()). With `tensors` (the call's captured tensors) a miss runs
        the autotuner (on that CUDA device for a GPU target) and records its winner."""
        key = (dims, dtype, target)
        if key in self._tuned:
            return self._tuned[key]
        from ..passes.canonicalize import canonicalize
        from ..tune import db as tdb
        from ..tune.device import fingerprint, gpu_fingerprint
        gpu = target != "tvm"
        canon = canonicalize(self.spec, dims, "float32", target)
        hit = tdb.lookup(tdb.program_hash(canon, self.spec), target, gpu_fingerprint(device) if gpu else
                         fingerprint(target), dtype, (dims.B, dims.H, dims.N, dims.M, dims.d, dims.dv))
        if hit is not None and len(hit.plans) == len(canon.groups):
            if gpu:
                self._tuned[key] = hit.plans
            return hit.plans
        if tensors is None:
            return None
        from ..tune import tune
        from ..tune.space import Untunable
        try:
            with torch.cuda.device(device) if gpu and device is not None else contextlib.nullcontext():
                self._tuned[key] = tune(self.spec, dims, dtype, tensors, mode=self.tune, target=target).plans
        except Untunable as e:
            warnings.warn(f"attncc: {e}; running the default plans", stacklevel=4)
            self._tuned[key] = None
        return self._tuned[key]

    @property
    def _target(self):
        return "sm_80" if self.backend == "triton" else self.backend

    def __call__(self, q, k, v, return_lse=False, return_routing=False, **tensors):
        if return_routing:
            return self._with_routing(q, k, v, return_lse, tensors)
        if torch.compiler.is_compiling():       # one opaque op in the traced graph (custom_op.py)
            return custom_op.call(self._op_ref, q, k, v, tensors, return_lse)
        dims, dtype = check_call(self.spec, q, k, v, tensors, return_lse)
        tensors = layouts(self.spec, tensors, dims)
        use_triton = self.backend == "triton" or (self.requested == "auto" and q.device.type == "cuda"
                                                  and "triton" in available())
        if tensors:         # every backend clamps table reads: a too-small table must fail here
            target = triton_target(q.device) if use_triton else None
            check_tables(self.spec, self.lower(dims, dtype, target).program, tensors, self._tables_ok)
        if use_triton:
            return self._run_triton(q, k, v, tensors, return_lse, dims, dtype)
        if self.backend == "tvm" and q.device.type != "cpu":
            if self.requested != "auto":
                raise ValueError(f"backend='tvm' generates CPU kernels but q is on {q.device}; move the tensors to "
                                 "the CPU or use backend='reference' (or backend='triton' on a CUDA GPU)")
            warnings.warn(f"attncc: no generated backend for {q.device} yet; backend='auto' runs the eager "
                          "reference", stacklevel=2)
            return eager.run(self.lower(dims, dtype).program, q, k, v, tensors, return_lse=return_lse)
        if self.backend == "tvm":
            comp = self.compiled(dims, dtype, tensors)
            if comp is not None:
                return differentiable(comp, comp.prog, q, k, v, tensors, return_lse)
        low = self.lower(dims, dtype)
        return eager.run(low.program, q, k, v, tensors, return_lse=return_lse)

    def program_for(self, q, k, v, tensors):
        """The compiled program a call with these tensors runs (TVMProgram or TritonProgram;
        what the torch.compile path's backward asks for its generated kernels), or None when
        it runs the eager reference."""
        dims, dtype = check_call(self.spec, q, k, v, tensors, False)
        tensors = layouts(self.spec, tensors, dims)
        if self.backend == "triton" or (self.requested == "auto" and q.device.type == "cuda"
                                        and "triton" in available()):
            return self.compiled_triton(dims, dtype, tensors, triton_target(q.device))
        if self.backend == "tvm" and q.device.type == "cpu":
            return self.compiled(dims, dtype, tensors)
        return None

    def _with_routing(self, q, k, v, return_lse, tensors):
        """The call's results and the routing table [B, S^2, topk] (int64; the routed regions
        of every query region, in no particular order): the one the generated kernel's
        prologue wrote, else the reference routing's. No gradient flows through it."""
        from ..dsl.patterns import Routing
        if not any(isinstance(p, Routing) for p in self.spec.pattern.leaves()):
            raise ValueError(f"return_routing=True needs a spec with ac.routing(...); this one routes nothing "
                             f"({self.spec.pattern!r}); drop return_routing")
        if torch.compiler.is_compiling():
            raise ValueError("return_routing=True is not traceable by torch.compile (the attention runs as one opaque "
                             "op); call the kernel eagerly to inspect the routing")
        out = self(q, k, v, return_lse=return_lse, **tensors)
        dims, dtype = check_call(self.spec, q, k, v, tensors, return_lse)
        shapes = tuple((n, tuple(x.shape), x.is_floating_point()) for n, x in sorted(tensors.items()))
        comp = self._compiled.get((dims, dtype, shapes)) or self._compiled.get(
            ("triton", triton_target(q.device), dims, dtype, shapes))
        idx = getattr(comp, "route_idx", None)          # the generated prologue's own table
        if idx is None:
            from ..reference.routing import routing_tables
            prog = self.lower(dims, dtype).program
            pro = prog.prologues[0]
            idx = routing_tables(pro, q.float(), k.float(), prog.scale, pro.outputs)[pro.outputs[1]]
        idx = idx.long()
        return (*out, idx) if return_lse else (out, idx)

    def _run_triton(self, q, k, v, tensors, return_lse, dims, dtype):
        if q.device.type == "cpu":
            _check_interpreter()
            if not self._warned:
                warnings.warn("attncc: backend='triton' with CPU tensors runs Triton's interpreter: correct but slow, "
                              "for testing only; use backend='tvm' (or 'auto') for CPU speed, or CUDA tensors",
                              InterpreterWarning, stacklevel=3)
                self._warned = True
        elif q.device.type != "cuda":
            raise ValueError(f"backend='triton' runs on CUDA tensors (or CPU tensors under Triton's interpreter, "
                             f"for testing) but q is on {q.device}; move the tensors to a CUDA device")
        target = triton_target(q.device)
        if self.tune and q.device.type == "cuda":
            self.tuned_plans(dims, dtype, tensors, target, q.device)    # looks up, tunes on a database miss
        elif self.tune and not self._tuned.get("interpreter warned"):
            warnings.warn(f"attncc: tune={self.tune!r} tunes Triton plans on a CUDA GPU; Triton's interpreter on these "
                          "CPU tensors is never tuned (its times say nothing about a GPU) and runs the default plans; "
                          "pass CUDA tensors to tune", stacklevel=3)
            self._tuned["interpreter warned"] = True
        comp = self.compiled_triton(dims, dtype, tensors, target)
        if comp is None:
            return eager.run(self.lower(dims, dtype).program, q, k, v, tensors, return_lse=return_lse)
        return differentiable(comp, comp.prog, q, k, v, tensors, return_lse)

    def compiled_triton(self, dims, dtype, tensors, target="sm_80"):
        """The generated Triton program for these shapes and plan target (None when
        backend='auto' had to fall back to the reference, with a warning saying why)."""
        key = ("triton", target, dims, dtype,
               tuple((n, tuple(x.shape), x.is_floating_point()) for n, x in sorted(tensors.items())))
        if key not in self._compiled:
            from ..codegen.triton.backend import TritonProgram, Unsupported
            try:
                self._compiled[key] = TritonProgram(self.lower(dims, dtype, target).program, tensors)
            except Unsupported as e:
                if self.requested != "auto":
                    raise
                warnings.warn(f"attncc: {e}; backend='auto' runs the eager reference for this spec", stacklevel=4)
                self._compiled[key] = None
        self._last = (dims, dtype)
        return self._compiled[key]

    def compiled(self, dims, dtype, tensors):
        """The generated program for these shapes (None when backend='auto' had to fall back to
        the reference for this spec, with a warning saying why)."""
        key = (dims, dtype, tuple((n, tuple(x.shape), x.is_floating_point()) for n, x in sorted(tensors.items())))
        if key not in self._compiled:
            from ..codegen.tvm.backend import TVMProgram, Unsupported
            try:
                if self.tune:
                    self.tuned_plans(dims, dtype, tensors)      # tunes on a database miss
                self._compiled[key] = TVMProgram(self.lower(dims, dtype).program, tensors,
                                                 relower=lambda: self.lower(dims, dtype, per_query=False).program)
            except Unsupported as e:
                if self.requested != "auto":
                    raise
                warnings.warn(f"attncc: {e}; backend='auto' runs the eager reference for this spec", stacklevel=3)
                self._compiled[key] = None
        self._last = (dims, dtype)
        return self._compiled[key]

    def default_dims(self):
        grid = self.spec.pattern.grid
        n = math.prod(grid) if grid else 256
        heads = [h for hs, _ in getattr(self.spec.pattern, "branches", ()) for h in hs]
        return Dims(B=1, H=max(heads) + 1 if heads else 2, N=n, M=n, d=64, dv=64)

    def explain(self, dims=None, dtype=None, file="stdout"):
        """Print (and return) the IR after each pass, the plan and the cost, for `dims` (a Dims),
        else the last call's shapes, else a default shape for the pattern. file=None only
        returns the text."""
        if dims is None and self._last is not None:
            dims, last_dtype = self._last
            dtype = dtype or last_dtype
        dims = dims or self.default_dims()
        dtype = dtype or "float32"
        low = self.lower(dims, dtype)
        head = [f"spec: {self.spec!r}",
                f"backend: {self.backend} (asked: {self.requested!r}); lowering took {low.seconds * 1e3:.1f} ms"]
        tail = ["generated source: none (the eager reference backend interprets the IR)"]
        if self.backend == "tvm":
            comp = [c for key, c in self._compiled.items() if len(key) == 3 and key[:2] == (dims, dtype)]
            if not comp and not self.spec.captured():
                comp = [self.compiled(dims, dtype, {})]
            if comp and comp[0] is not None:
                c = comp[0]
                how = "loaded from the disk cache" if all(g.from_disk for g, _ in c.groups) else "compiled"
                tail = [f"=== generated TVMScript ({how} in {c.seconds:.2f} s)", c.source, *c.explain_backward()]
            elif comp:
                tail = ["generated source: none (backend='auto' runs the reference for this spec)"]
            else:
                tail = ["generated source: compiled at the first call (captured tensor shapes decide it)"]
        if self.backend == "triton":
            comp = [c for key, c in self._compiled.items() if key[0] == "triton" and key[2:4] == (dims, dtype)]
            if not comp and not self.spec.captured():
                comp = [self.compiled_triton(dims, dtype, {})]
            if comp:
                c = comp[0]
                plans = "; ".join(f"heads {g.grp.heads}: {g.grp.plan}" for g in c.groups)
                tail = [f"=== generated Triton source (generated in {c.seconds:.2f} s; "
                        f"plans for {c.prog.target}: {plans})", c.source, *c.explain_backward()]
            else:
                tail = ["generated source: generated at the first call (captured tensor shapes decide it)"]
        text = "\n".join(head) + "\n" + low.explain() + "\n" + "\n".join(tail)
        if file is not None:
            print(text, file=sys.stdout if file == "stdout" else file)
        return text


def compile(spec, backend="auto", tune=False):
    """Compile an ac.Attention spec for a backend ("auto" | "tvm" | "triton" | "reference")."""
    return Kernel(spec, backend=backend, tune=tune)


def reference(spec):
    """The eager oracle for a spec: ``ac.reference(spec)(q, k, v, **tensors)``."""
    return Kernel(spec, backend="reference")
