"""Gradients for generated kernels: the forward runs the generated kernel, the backward
recomputes through the eager reference (memory-proportional to the useful pairs) and
differentiates that, until generated backward kernels exist."""
import torch

from ..reference import eager


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, prog, names, return_lse, q, k, v, *tensors):
        ctx.prog, ctx.names, ctx.return_lse = prog, names, return_lse
        ctx.save_for_backward(q, k, v, *tensors)
        got = run(q, k, v, dict(zip(names, tensors)), return_lse=return_lse)
        return got if return_lse else (got,)

    @staticmethod
    def backward(ctx, *grads):
        q, k, v, *tensors = ctx.saved_tensors
        inputs = [x.detach().requires_grad_(x.is_floating_point()) for x in (q, k, v, *tensors)]
        with torch.enable_grad():
            got = eager.run(ctx.prog, *inputs[:3], dict(zip(ctx.names, inputs[3:])), return_lse=ctx.return_lse)
            outs = got if ctx.return_lse else (got,)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
            wrt = [x for x in inputs if x.requires_grad]
            got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
        it = iter(got)
        return (None, None, None, None) + tuple(next(it) if x.requires_grad else None for x in inputs)


def differentiable(run, prog, q, k, v, tensors, return_lse):
    """run(q, k, v, tensors, return_lse) with gradients when any input asks for them."""
    names = tuple(tensors)
    values = [tensors[n] for n in names]
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, *values))):
        return run(q, k, v, tensors, return_lse=return_lse)
    out = _Attention.apply(run, prog, names, return_lse, q, k, v, *values)
    return out if return_lse else out[0]
