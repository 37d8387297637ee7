"""Gradients for generated kernels: the forward runs the generated kernel; the backward runs
the backend's generated backward kernels where it has them (`run.backward_why_not()` is None:
TVM and Triton, issue 23), else recomputes through the eager reference (memory-proportional
to the useful pairs) and differentiates that, with a BackwardWarning saying why.
``recompute_grads`` is shared by the eager path (the autograd.Function below) and the
torch.compile path (custom_op.py)."""
import warnings

import torch

from ..reference import eager


def recompute_grads(prog, inputs, names, return_lse, grads):
    """Gradients of the reference's (out[, lse]) for `inputs` = (q, k, v, *captured tensors named
    `names`), given the output gradients `grads` (None entries are skipped). None for an input
    that is not floating point or that the outputs do not depend on."""
    inputs = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    with torch.enable_grad():
        got = eager.run(prog, *inputs[:3], dict(zip(names, inputs[3:])), return_lse=return_lse)
        outs = got if return_lse else (got,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        wrt = [x for x in inputs if x.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
    it = iter(got)
    return [next(it) if x.requires_grad else None for x in inputs]


class BackwardWarning(UserWarning):
    """The backward of a generated kernel recomputes through the eager reference (slow, and
    memory-proportional to the useful pairs), because the backend generates no backward for it."""


def _why_not(run, table_grads):
    if run is None:
        return "the eager reference backend differentiates through its own operations"
    why = getattr(run, "backward_why_not", None)
    if why is None:
        return "this backend generates no backward kernels yet"
    return why(table_grads)


def describe(prog):
    """The attention a Program computes, in a few words (for messages)."""
    kinds = sorted({p.kind for g in prog.groups for p in g.preds})
    return f"{'/'.join(kinds) or 'full'} attention, {prog.norm}"


def no_double_backward(what):
    """Raise when a backward runs with create_graph=True (the generated backward kernels have
    no backward of their own; a recompute would return gradients that are silently not
    differentiable). `what`: the attention, in words."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"attncc::attention ({what}): double backward (create_graph=True, e.g. a gradient "
                           "penalty) is not supported; compute that term with ac.reference(spec), or backward "
                           "without create_graph")


def backward_of(run, prog, names, return_lse, inputs, out, lse, grads, table_grads, route_idx=None):
    """Gradients for inputs = (q, k, v, *captured tensors named `names`) given the output
    gradients `grads` (dout, dlse or None): from the backend's generated backward kernels
    (`run`, the compiled program, which read out and lse) when they serve the program, else
    recomputed through the reference with a BackwardWarning saying why. None for the
    captured tensors outside `table_grads`. `route_idx`: the forward call's routing table
    (routed attention: the backward reads the same routes)."""
    why = _why_not(run, table_grads)
    if why is not None:
        warnings.warn(f"attncc: the backward runs through the eager reference's autograd (slower, more memory): "
                      f"{why}", BackwardWarning, stacklevel=3)
        return recompute_grads(prog, inputs, names, return_lse, grads)
    q, k, v, *tensors = inputs
    dout, dlse = grads[0], (grads[1] if return_lse else None)
    if dout is None and dlse is None:
        return [None] * len(inputs)
    extra = {} if route_idx is None else {"route_idx": route_idx}
    dq, dk, dv, dtabs = run.backward(q, k, v, out, lse, dout, dlse, dict(zip(names, tensors)), table_grads, **extra)
    return [dq, dk, dv, *(dtabs.get(n) for n in names)]


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, prog, names, return_lse, q, k, v, *tensors):
        ctx.prog, ctx.names, ctx.return_lse, ctx.run = prog, names, return_lse, run
        ctx.table_grads = tuple(n for n, x, need in zip(names, tensors, ctx.needs_input_grad[7:])
                                if need and x.is_floating_point())
        # the generated backward reads out and lse: O(N d) saved, never N x M
        out, lse = run(q, k, v, dict(zip(names, tensors)), return_lse=True)
        ctx.route_idx = getattr(run, "route_idx", None)      # this call's routes (a later call replaces run's)
        ctx.save_for_backward(q, k, v, out, lse, *tensors)
        return (out, lse) if return_lse else (out,)

    @staticmethod
    def backward(ctx, *grads):
        no_double_backward(describe(ctx.prog))
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        got = backward_of(ctx.run, ctx.prog, ctx.names, ctx.return_lse, (q, k, v, *tensors), out, lse, grads,
                          ctx.table_grads, ctx.route_idx)
        return (None, None, None, None) + tuple(got)


def differentiable(run, prog, q, k, v, tensors, return_lse):
    """run(q, k, v, tensors, return_lse) with gradients when any input asks for them."""
    names = tuple(tensors)
    values = [tensors[n] for n in names]
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, *values))):
        return run(q, k, v, tensors, return_lse=return_lse)
    out = _Attention.apply(run, prog, names, return_lse, q, k, v, *values)
    return out if return_lse else out[0]
