"""Gradients for generated kernels: the forward runs the generated kernel, the backward
recomputes through the eager reference (memory-proportional to the useful pairs) and
differentiates that, until generated backward kernels exist. ``recompute_grads`` is shared by
the eager path (the autograd.Function below) and the torch.compile path (custom_op.py)."""
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


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, prog, names, return_lse, q, k, v, *tensors):
        ctx.prog, ctx.names, ctx.return_lse = prog, names, return_lse
        ctx.save_for_backward(q, k, v, *tensors)
        got = run(q, k, v, dict(zip(names, tensors)), return_lse=return_lse)
        return got if return_lse else (got,)

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, None, None) + tuple(recompute_grads(ctx.prog, ctx.saved_tensors, ctx.names,
                                                                ctx.return_lse, grads))


def differentiable(run, prog, q, k, v, tensors, return_lse):
    """run(q, k, v, tensors, return_lse) with gradients when any input asks for them."""
    names = tuple(tensors)
    values = [tensors[n] for n in names]
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, *values))):
        return run(q, k, v, tensors, return_lse=return_lse)
    out = _Attention.apply(run, prog, names, return_lse, q, k, v, *values)
    return out if return_lse else out[0]
