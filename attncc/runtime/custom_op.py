"""attncc kernels as torch.library custom ops, so ``torch.compile(model, fullgraph=True)``
traces a model holding attncc kernels or modules without graph breaks.

Under torch.compile a kernel call becomes one opaque op::

    attncc::attention(str ref, Tensor q, Tensor k, Tensor v, Tensor[] tensors, str names,
                      bool return_lse) -> (Tensor out, Tensor lse)

``ref`` names the kernel through a registry of owners (weakly held): a Kernel registers itself
as ``k<n>``; an ``ac.nn`` module registers as ``m<n>`` and resolves ``m<n>/<suffix>`` to the
kernel it compiles for that suffix (its mask signature). Resolving at run time (never at trace
time) keeps compilation and TVM out of the traced graph. ``tensors`` are the captured tensors
named by the comma-separated ``names``. ``lse`` is an empty tensor unless return_lse.

The fake (meta) implementation only computes output shapes: out [B, H, N, dv] in q's dtype,
lse [B, H, N] float32 (always computed: the backward reads it; ``call`` drops it unless
asked). Gradients: ``attncc::attention_backward``, itself an opaque op so the backward graph
traces too, runs the backend's generated backward kernels from out and lse, or recomputes
through the eager reference where there are none (autograd.backward_of).
"""
import itertools
import weakref

import torch

from .autograd import backward_of, no_double_backward
from .inputs import check_call

_OWNERS = weakref.WeakValueDictionary()
_IDS = itertools.count()


def register(owner, prefix):
    """A fresh reference string for `owner` (held weakly); owner._kernel_for_ref(suffix)
    must return the Kernel that ``<ref>/<suffix>`` (or ``<ref>`` with suffix "") names."""
    ref = f"{prefix}{next(_IDS)}"
    _OWNERS[ref] = owner
    return ref


def resolve(ref):
    """The Kernel a reference string names."""
    head, _, suffix = ref.partition("/")
    owner = _OWNERS.get(head)
    if owner is None:
        raise RuntimeError(f"attncc::attention: kernel reference {ref!r} is gone (the Kernel or module that the "
                           "compiled graph was traced with was garbage-collected); keep it alive while the "
                           "compiled function is in use")
    return owner._kernel_for_ref(suffix)


def _unpack(names, tensors):
    keys = names.split(",") if names else []
    if len(keys) != len(tensors):
        raise ValueError(f"attncc::attention: {len(tensors)} captured tensors for names {keys}")
    return dict(zip(keys, tensors))


@torch.library.custom_op("attncc::attention", mutates_args=())
def attention(ref: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: list[torch.Tensor],
              names: str, return_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    kern = resolve(ref)
    with torch.no_grad():
        out, lse = kern(q, k, v, return_lse=True, **_unpack(names, tensors))
    return out.contiguous(), lse.to(torch.float32).contiguous()


@attention.register_fake
def _attention_fake(ref, q, k, v, tensors, names, return_lse):
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1]), q.new_empty((B, H, N), dtype=torch.float32)


@torch.library.custom_op("attncc::attention_backward", mutates_args=())
def attention_backward(ref: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: list[torch.Tensor],
                       names: str, return_lse: bool, out: torch.Tensor, lse: torch.Tensor, grad_out: torch.Tensor,
                       grad_lse: torch.Tensor | None) -> list[torch.Tensor]:
    """Gradients for q, k, v and every captured tensor (an empty tensor for the ones that are
    not floating point)."""
    kern = resolve(ref)
    captured = _unpack(names, tensors)
    prog = kern.lower(*check_call(kern.spec, q, k, v, captured, False)).program
    inputs = (q, k, v, *tensors)
    run = kern.program_for(q, k, v, captured)
    floats = tuple(n for n, x in captured.items() if x.is_floating_point())
    with _autograd_dispatch():
        grads = backward_of(run, prog, list(captured), return_lse, inputs, out, lse,
                            (grad_out, grad_lse if return_lse else None), floats)
    # contiguous, as the fake implementation promises
    return [g.contiguous() if g is not None else (x.new_zeros(x.shape) if x.is_floating_point() else x.new_empty(0))
            for g, x in zip(grads, inputs)]


def _autograd_dispatch():
    """Autograd back on inside an op implementation (the dispatcher runs it below the autograd
    keys, which would make the recompute record nothing)."""
    K = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (K.AutogradCPU, K.AutogradCUDA, K.ADInplaceOrView):
        exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@attention_backward.register_fake
def _attention_backward_fake(ref, q, k, v, tensors, names, return_lse, out, lse, grad_out, grad_lse):
    return [x.new_empty(x.shape) if x.is_floating_point() else x.new_empty(0) for x in (q, k, v, *tensors)]


def _setup_context(ctx, inputs, output):
    ref, q, k, v, tensors, names, return_lse = inputs
    ctx.ref, ctx.names, ctx.return_lse, ctx.n = ref, names, return_lse, len(tensors)
    ctx.save_for_backward(q, k, v, *output, *tensors)


def _backward(ctx, grad_out, grad_lse):
    if torch.is_grad_enabled():
        no_double_backward(repr(resolve(ctx.ref).spec))
    q, k, v, out, lse, *tensors = ctx.saved_tensors
    if grad_out is None:
        grad_out = q.new_zeros(*q.shape[:3], v.shape[-1])
    if not ctx.return_lse:
        grad_lse = None
    got = attention_backward(ctx.ref, q, k, v, tensors, ctx.names, ctx.return_lse, out, lse, grad_out, grad_lse)
    fl = [x.is_floating_point() for x in (q, k, v, *tensors)]
    g = [gi if f else None for gi, f in zip(got, fl)]
    return None, g[0], g[1], g[2], g[3:], None, None


attention.register_autograd(_backward, setup_context=_setup_context)


def call(ref, q, k, v, tensors, return_lse):
    """Run the kernel named `ref` through the custom op (what a Kernel does under torch.compile)."""
    names = ",".join(tensors)
    out, lse = attention(ref, q, k, v, list(tensors.values()), names, return_lse)
    return (out, lse) if return_lse else out
