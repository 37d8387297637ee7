"""Compile generated TVMScript through LLVM for the host CPU, with a compiled-kernel cache in
memory and on disk (keyed by the generated source, the target, the attncc and TVM versions and
the source of the TIR building blocks it inlines, intrin.py), so a second process loads the
shared library instead of compiling again."""
import hashlib
import importlib.util
import os
import time
from pathlib import Path

import torch

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


def host_target():
    """The LLVM target of this machine: its CPU model and core count."""
    cpu = _codegen.llvm_get_system_cpu() or "generic"
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})


def cache_dir():
    root = os.environ.get("ATTNCC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "attncc")
    path = Path(root) / "tvm"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    parts = [__version__, tvm.__version__, _INTRIN, str(target), source, *key_parts]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    got = _MEMORY.get(key)
    if got is not None:
        return got
    t0 = time.perf_counter()
    d = cache_dir()
    so, py = d / f"{key}.so", d / f"{key}.py"
    from_disk = so.exists()
    if not from_disk:
        py.write_text(source)               # a real file: the TVMScript parser reads the source
        spec = importlib.util.spec_from_file_location(f"attncc_tvm_{key}", py)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ex = tvm.compile(mod.build(), target=target)
        tmp = d / f"{key}.{os.getpid()}.so"
        ex.export_library(str(tmp))
        os.replace(tmp, so)                 # atomic: concurrent processes never see half a file
    fn = tvm.runtime.load_module(str(so))["main"]     # run from the library: its launch pointer is ours to set
    omp = use_torch_threads(so, d)
    got = Compiled(fn, source, time.perf_counter() - t0, from_disk, omp, str(so))
    _MEMORY[key] = got
    return got
