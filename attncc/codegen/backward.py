"""What every backend's generated backward needs to know about a lowered Program: whether
its backward kernels can be generated (and if not, why, in words a user can act on), and
which of its inputs get gradients from them."""
import math

from .tiles import slots_once

SLOT_BYTES = 1 << 26    # the float64 gradient slots of the captured tensors fit this many bytes


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


def grad_param(name):
    """The kernel parameter of a captured tensor's gradient slots (both backends)."""
    return f"grad_{name}"


def table_slots(tasks, shapes, cap):
    """How many slots the dq tasks are dealt to when captured tensors of `shapes` get
    gradients (each slot holds a float64 copy of every such gradient, at most `cap` slots,
    within SLOT_BYTES; `tasks` without such gradients). From the shapes alone, never the
    threads or the device: the slots' sum, in order, is then the same bits everywhere."""
    if not shapes:
        return tasks
    size = sum(8 * math.prod(s) for s in shapes)
    return max(1, min(tasks, cap, SLOT_BYTES // max(1, size)))
