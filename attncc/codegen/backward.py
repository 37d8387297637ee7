"""What every backend's generated backward needs to know about a lowered Program: whether
its backward kernels can be generated (and if not, why, in words a user can act on), and
which of its inputs get gradients from them."""
from .tiles import slots_once


def why_not(prog):
    """None when the generated backward serves this program, else the reason."""
    if prog.norm.kind == "linear":
        return "linear attention's backward kernels are not generated yet"
    if prog.prologues:
        return "the backward of routed attention is not generated yet"
    for grp in prog.groups:
        if not slots_once(grp):
            return (f"the {grp.gather.kind} gather reads a key in several groups (overlapping key sets), whose "
                    "dK and dV need a reduction that is not generated yet")
    return None
