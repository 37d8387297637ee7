"""What every backend's generated backward needs to know about a lowered Program: whether
its backward kernels can be generated (and if not, why, in words a user can act on), and
which of its inputs get gradients from them."""
from .tiles import slots_once


def why_not(prog):
    """None when the generated backward serves this program, else the reason."""
    if prog.norm.kind == "linear":
        return "linear attention's backward kernels are not generated yet"
    for grp in prog.groups:
        # routed regions overlap by design: their dK and dV tasks own key regions, and read
        # which query regions routed to them from the inverted routing table
        if grp.gather.kind != "routing" and not slots_once(grp):
            return (f"the {grp.gather.kind} gather reads a key in several groups (overlapping key sets), whose "
                    "dK and dV need a reduction that is not generated yet")
    return None
