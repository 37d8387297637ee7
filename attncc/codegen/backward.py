"""What every backend's generated backward needs to know about a lowered Program: whether
its backward kernels can be generated (and if not, why, in words a user can act on), and
which of its inputs get gradients from them."""
import math

import numpy as np

from ..ir import symbols as S
from ..ir.evaluate import evaluate
from .tiles import slots_once

# the float64 gradient slots of the captured tensors fit this many bytes: each call zeroes and
# sums them (64 MiB of slots cost a Swin-T training step 0.6 s of memset)
SLOT_BYTES = 1 << 23


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


def scatter_pair(read, gat, heads, tile, grad):
    """grad[the read's index] += tile[hh, t, u] over the heads of the group and group 0's local
    queries t and keys u (a hoisted group-invariant read: every group reads the same entry at
    (t, u)), in float64, sequentially (numpy's add.at: the same bits every time)."""
    t, u = np.arange(gat.Lq), np.arange(gat.Lk)
    q0 = np.broadcast_to(np.asarray(evaluate(gat.q_token.subs(S.g, 0), {S.t: t})), t.shape)
    k0 = np.broadcast_to(np.asarray(evaluate(gat.k_token.subs(S.g, 0), {S.u: u})), u.shape)
    env = {S.h: np.asarray(heads)[:, None, None], S.i: q0[None, :, None], S.j: k0[None, None, :]}
    shape = (len(heads), gat.Lq, gat.Lk)
    idx = tuple(np.clip(np.broadcast_to(np.asarray(evaluate(ix, env)), shape), 0, n - 1)
                for ix, n in zip(read.indices, grad.shape))
    np.add.at(grad, idx, tile[:, :gat.Lq, :gat.Lk])
