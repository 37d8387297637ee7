"""Compile generated TVMScript through LLVM for the host CPU, with a compiled-kernel cache in
memory and on disk (keyed by the generated source, the target, the attncc and TVM versions and
the source of the TIR building blocks it inlines, intrin.py), so a second process loads the
shared library instead of compiling again.

The disk cache heals itself: a library is published with its checksum (cachedir.publish) and
checked before it is loaded; one that does not match (truncated, overwritten) or fails to load
(garbage, another ABI) is removed and compiled again, with one CacheWarning. A lock per kernel
makes concurrent processes compile it once: the others wait and load the published file."""
import hashlib
import importlib.util
import os
import time
import warnings
from pathlib import Path

import torch

from ... import cachedir
from ...version import __version__
from .threads import use_torch_threads

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")   # idle TVM workers must not starve torch
# TVM's default pool size is half the logical CPUs (it assumes two hyperthreads per core): on
# a 2-vCPU machine that is one thread. Run as many threads as torch does unless the user says.
os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))

import tvm  # noqa: E402
from tvm.target import codegen as _codegen  # noqa: E402

_MEMORY = {}
# the generated sources call intrin.py's functions, inlined when parsed: their text is part of
# what decides a binary, so an edited intrin.py never loads a library built from the old one
_INTRIN = hashlib.sha256((Path(__file__).parent / "intrin.py").read_bytes()).hexdigest()
# the disk cache's layout, part of the key: libraries of an older layout (no checksum) are not looked at
_LAYOUT = "cache layout 2: <key>.so + <key>.so.sha256"


def host_target():
    """The LLVM target of this machine: its CPU model and core count."""
    cpu = _codegen.llvm_get_system_cpu() or "generic"
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})


def cache_dir():
    return cachedir.folder("tvm")


class Compiled:
    """A compiled group kernel: the callable, its source, how long it took to get, whether its
    parallel loops run on torch's OpenMP threads (threads.py) or TVM's pool, and the shared
    library it was loaded from (the disk cache's file; RPC measurement uploads it)."""

    def __init__(self, fn, source, seconds, from_disk, omp=False, path=None):
        self.fn, self.source, self.seconds, self.from_disk, self.omp = fn, source, seconds, from_disk, omp
        self.path = path


def compile_source(source, key_parts):
    """Compile `source` (defining build() -> PrimFunc); cached by everything that decides it."""
    target = host_target()
    parts = [__version__, tvm.__version__, _INTRIN, _LAYOUT, str(target), source, *key_parts]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    got = _MEMORY.get(key)
    if got is not None:
        return got
    t0 = time.perf_counter()
    d = cache_dir()
    so = d / f"{key}.so"
    fn = _load_cached(so)               # published libraries are whole: reading needs no lock (a read-only cache works)
    from_disk = fn is not None
    if fn is None:
        with cachedir.lock(so):         # one process compiles a kernel; the others wait, then load it
            fn = _load_cached(so)
            from_disk = fn is not None
            if fn is None:
                _build(source, target, so)
                fn = _load(so)
    omp = use_torch_threads(so, d)
    got = Compiled(fn, source, time.perf_counter() - t0, from_disk, omp, str(so))
    _MEMORY[key] = got
    return got


def _load(so):
    return tvm.runtime.load_module(str(so))["main"]     # run from the library: its launch pointer is ours to set


def _load_cached(so):
    """The kernel of the cached library `so`, or None when there is none or it was unusable
    (then it is removed, with a warning naming the file and why)."""
    if not so.exists():
        return None
    why = cachedir.verify(so)       # before loading: a truncated library crashes the loader (SIGBUS)
    if why is None:
        try:
            return _load(so)
        except Exception as e:      # noqa: BLE001  (garbage or a foreign library: TVM's loader says why)
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = f"it fails to load: {type(e).__name__}: {lines[-1] if lines else e}"
    cachedir.remove(so)
    warnings.warn(f"attncc: the cached TVM kernel {so} is unusable ({why}); removed it and compiling the kernel "
                  "again", cachedir.CacheWarning, stacklevel=4)
    return None


def _build(source, target, so):
    """Compile `source` and publish the library as `so` (with its checksum)."""
    py = so.with_suffix(".py")
    cachedir.write_atomic(py, source)   # a real file: the TVMScript parser reads the source
    spec = importlib.util.spec_from_file_location(f"attncc_tvm_{so.stem}", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ex = tvm.compile(mod.build(), target=target)
    tmp = so.with_name(f"{so.stem}.{os.getpid()}.tmp.so")
    try:
        ex.export_library(str(tmp))
        cachedir.publish(tmp, so)       # atomic: other processes never see half a library
    finally:
        if tmp.exists():
            tmp.unlink()
