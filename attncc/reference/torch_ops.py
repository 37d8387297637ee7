"""The torch adapter of the IR evaluator (attncc.ir.evaluate)."""
import torch


class TorchOps:
    name = "torch"

    def __init__(self, device="cpu"):
        self.device = device

    def asarray(self, x):
        return torch.as_tensor(x, device=self.device)

    where = staticmethod(torch.where)
    remainder = staticmethod(torch.remainder)
    logical_and = staticmethod(torch.logical_and)
    logical_or = staticmethod(torch.logical_or)
    logical_not = staticmethod(torch.logical_not)
    minimum = staticmethod(torch.minimum)
    maximum = staticmethod(torch.maximum)
    abs = staticmethod(torch.abs)
    floor = staticmethod(torch.floor)
    tanh = staticmethod(torch.tanh)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    sqrt = staticmethod(torch.sqrt)
    any = staticmethod(torch.any)

    @staticmethod
    def floor_divide(a, q):
        return torch.div(a, q, rounding_mode="floor")

    @staticmethod
    def clip(x, lo, hi):
        return torch.clamp(x, lo, hi)

    def shape(self, x):
        return tuple(x.shape)

    def is_array(self, x):
        return isinstance(x, torch.Tensor)

    def is_int(self, x):
        return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool

    def pow(self, a, e):
        if not isinstance(a, torch.Tensor):
            return torch.pow(float(a), e) if isinstance(e, torch.Tensor) else float(a) ** e
        return torch.pow(a, e)


def like(x, ref):
    """An evaluated expression as a tensor of ref's dtype, broadcast against ref (an
    expression need not depend on every index, or on the score at all)."""
    x = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    return x.expand(torch.broadcast_shapes(x.shape, ref.shape))
