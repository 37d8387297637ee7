"""Captured tensors as both backends' kernels read them: each a parameter named `tab_<name>`
(a user's name never shadows a kernel variable), float tensors as float32 and integer ones as
int32, compact; the spec's compile-time constants (static block-sparse layouts) beside them."""
import torch


def param(name):
    """The kernel parameter of a tensor the expressions read."""
    return f"tab_{name}"


def kinds(prog, tensors):
    """IR table name -> (shape, "float" | "int") of the call's captured tensors and the
    program's constants, in the order the kernels take them."""
    out = {name: (tuple(x.shape), "float" if x.is_floating_point() else "int") for name, x in tensors.items()}
    out.update({c.name: (tuple(c.array.shape), "int") for c in prog.constants})
    return out


def as_table(x, device=None):
    """A captured tensor as the kernels read it (float32 or int32, compact, on `device`)."""
    x = x if device is None else x.to(device)
    return (x.to(torch.float32) if x.is_floating_point() else x.to(torch.int32)).contiguous()
