"""The device fingerprint that tuning records are keyed by: what decides which schedule is
fastest (CPU model, the vector ISA, the cores a kernel runs on; a GPU's name and arch)."""
import functools
import os
import platform

# ISA flags that change the generated code's speed (others, like sse2, every x86-64 CPU has)
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "asimd", "sve", "sve2")


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None, set()
    info = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        info.setdefault(key.strip(), val.strip())
    model = info.get("model name") or info.get("Model") or info.get("cpu model")
    if model and "cpu family" in info:         # x86: the family and model number name the generation
        model = f"{model} family {info['cpu family']} model {info.get('model', '?')}"
    return model, set((info.get("flags") or info.get("Features") or "").split())


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """This CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    return frozenset(_cpuinfo()[1])


@functools.lru_cache(maxsize=None)
def cpu_fingerprint():
    """'cpu:<model>:<isa flags>:<cores>c', e.g. 'cpu:AMD EPYC family 25 model 1:avx+avx2+fma:2c'
    (family 25 is Zen 3). The core count
    is the number the TVM runtime runs (TVM_NUM_THREADS, else the CPUs this process may use)."""
    model, flags = _cpuinfo()
    model = " ".join((model or platform.processor() or platform.machine() or "unknown").split())
    isa = "+".join(f for f in ISA_FLAGS if f in flags) or platform.machine() or "unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        cores = os.cpu_count() or 1
    cores = int(os.environ.get("TVM_NUM_THREADS") or cores)
    return f"cpu:{model.replace(':', ' ')}:{isa}:{cores}c"


def gpu_fingerprint(device=0):
    """'gpu:<name>:sm_<major><minor>' of a CUDA device."""
    import torch
    major, minor = torch.cuda.get_device_capability(device)
    return f"gpu:{torch.cuda.get_device_name(device).replace(':', ' ')}:sm_{major}{minor}"


def fingerprint(target):
    """The fingerprint of the device that runs `target`'s kernels ("tvm": this CPU)."""
    if target in ("tvm", "cpu", "reference"):
        return cpu_fingerprint()
    return gpu_fingerprint()
