"""Guarded tensors: a tensor placed against a page the process may not touch (PROT_NONE), so
that a kernel reading or writing one element past its end (side="end") or before its start
(side="start") faults at once (SIGSEGV) instead of reading a neighbour's memory silently. The
sanitizer of tests/test_sanitize.py (TVM's own bound checkers instrument nothing in kernels
written as low-level TIR over T.Buffer parameters: measured, an out-of-range store went
through)."""
import ctypes
import mmap

import torch

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
PROT_NONE = 0       # mmap exports PROT_READ and PROT_WRITE only
_KEEP = []          # the mappings stay alive (and guarded) for the process's life


def guarded(x, side="end"):
    """A contiguous copy of `x` whose first byte follows a guard page (side="start") or whose
    last byte precedes one (side="end")."""
    x = x.contiguous()
    nbytes = x.numel() * x.element_size()
    pages = max(1, -(-nbytes // PAGE))
    m = mmap.mmap(-1, (pages + 2) * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for off in (0, (pages + 1) * PAGE):
        if _libc.mprotect(ctypes.c_void_p(base + off), PAGE, PROT_NONE) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
    start = PAGE + (pages * PAGE - nbytes if side == "end" else 0)
    t = torch.frombuffer(m, dtype=x.dtype, count=x.numel(), offset=start).view(x.shape)
    t.copy_(x)
    _KEEP.append(m)
    return t
