"""Run the generated kernels' parallel loops on torch's own OpenMP threads.

A TVM kernel parallelizes through the function pointer ``__TVMBackendParallelLaunch`` that
its shared library exports and TVM's loader fills with TVM's thread pool. In a model, torch
ops and attncc kernels alternate: after each torch op, torch's OpenMP workers spin-wait for
the next one (libgomp's default), so TVM's threads ran on a core already busy spinning (timm
Swin-T, 2 cores: the attention blocks 1.3x slower than in isolation). Here the pointer is
set to a small launcher, compiled once with the C compiler TVM already uses to link kernels,
that runs the tasks as an OpenMP parallel region of torch's OpenMP runtime: the threads that
were spinning do the work. ``ATTNCC_TVM_THREADS=tvm`` keeps TVM's pool instead; so does a
process whose torch runs no OpenMP runtime this launcher can share (then nothing changes).
"""
import ctypes
import hashlib
import os
import subprocess
import warnings
from pathlib import Path

from ... import cachedir

_SOURCE = r"""
#include <omp.h>
typedef struct { void *sync_handle; int num_task; } attncc_penv;
typedef int (*attncc_lambda)(int task_id, attncc_penv *penv, void *cdata);

int attncc_parallel_launch(attncc_lambda f, void *cdata, int num_task) {
  int err = 0;
  int n = num_task > 0 ? num_task : omp_get_max_threads();
#pragma omp parallel num_threads(n) reduction(| : err)
  {
    attncc_penv env = {0, omp_get_num_threads()};
    err |= f(omp_get_thread_num(), &env, cdata);
  }
  return err;
}

void *attncc_omp_symbol(void) { return (void *)&omp_get_max_threads; }
"""

_STATE = {}


def _torch_openmp():
    """The OpenMP runtime torch loaded (a path from this process's memory map), or None."""
    import torch  # noqa: F401  (loads its OpenMP runtime)
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1]
        if "/" in path and os.path.basename(path).startswith(("libgomp", "libiomp", "libomp")):
            return path
    return None


def _build(cache):
    """The launcher library in the cache folder, compiled once (with its checksum, like the
    kernels: a truncated library would crash the process that loads it)."""
    cc = os.environ.get("CC", "gcc")
    key = hashlib.sha256((_SOURCE + cc + "+sha256").encode()).hexdigest()[:16]
    so = cache / f"omp_launch_{key}.so"
    if so.exists() and cachedir.verify(so) is None:     # published whole: reading needs no lock
        return so
    with cachedir.lock(so):
        why = cachedir.verify(so) if so.exists() else None
        if why:
            cachedir.remove(so)
            warnings.warn(f"attncc: the cached OpenMP launcher {so} is unusable ({why}); removed it and "
                          "compiling it again", cachedir.CacheWarning, stacklevel=4)
        if not so.exists():
            src = cache / f"omp_launch_{key}.{os.getpid()}.c"
            tmp = cache / f"omp_launch_{key}.{os.getpid()}.tmp.so"
            try:
                src.write_text(_SOURCE)
                subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fopenmp", str(src), "-o", str(tmp)], check=True,
                               capture_output=True, text=True, timeout=120)
                cachedir.publish(tmp, so)
            finally:
                for p in (src, tmp):
                    if p.exists():
                        p.unlink()
    return so


def launcher(cache):
    """The address of the OpenMP launcher sharing torch's OpenMP runtime, or None (TVM's pool
    stays) when ATTNCC_TVM_THREADS=tvm, torch runs no OpenMP, or the launcher cannot be built
    or would load a second OpenMP runtime."""
    if "addr" in _STATE:
        return _STATE["addr"]
    addr = None
    if os.environ.get("ATTNCC_TVM_THREADS", "omp") != "tvm":
        omp = _torch_openmp()
        if omp is not None:
            try:
                lib = ctypes.CDLL(str(_build(cache)))
                mine = ctypes.CDLL(omp).omp_get_max_threads
                lib.attncc_omp_symbol.restype = ctypes.c_void_p
                if lib.attncc_omp_symbol() == ctypes.cast(mine, ctypes.c_void_p).value:
                    addr = ctypes.cast(lib.attncc_parallel_launch, ctypes.c_void_p).value
                    _STATE["lib"] = lib
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                warnings.warn(f"attncc: could not build the OpenMP launcher for TVM kernels ({e}); they run on "
                              "TVM's thread pool, which competes with torch's spinning OpenMP threads (slower "
                              "inside models); set ATTNCC_TVM_THREADS=tvm to silence this", stacklevel=2)
    _STATE["addr"] = addr
    return addr


def use_torch_threads(so_path, cache):
    """Point the loaded kernel library's parallel launch at the OpenMP launcher (if any)."""
    addr = launcher(cache)
    if addr is None:
        return False
    try:
        ptr = ctypes.c_void_p.in_dll(ctypes.CDLL(str(so_path)), "__TVMBackendParallelLaunch")
    except ValueError:          # no parallel loop in this kernel: nothing to launch
        return False
    ptr.value = addr
    return True
