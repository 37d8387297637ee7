"""Run the TVM kernels of the catalogue and of the parametrized suite on guarded inputs
(tests/guarded.py), on both sides, and check each against the reference. A read or write past
q, k, v or a captured table kills this process with SIGSEGV; tests/test_sanitize.py runs it in
a subprocess and reports which case was running (the last line printed)."""
import sys
import warnings

import torch

from attncc.ops import CATALOGUE
from guarded import guarded
from oracle import check_against_oracle

torch.manual_seed(0)
warnings.simplefilter("ignore")


def cases():
    from test_tvm import CASES, tvm_can
    from oracle import make_inputs
    for e in CATALOGUE:
        if tvm_can(e.spec):
            yield e.name, e.spec, e.inputs()
    for name in sorted(CASES):
        spec, dims, tensors = CASES[name]
        if tvm_can(spec):
            yield name, spec, (*make_inputs(dims), tensors)


def main(names):
    for name, spec, (q, k, v, tensors) in cases():
        if names and name not in names:
            continue
        for side in ("end", "start"):
            print(f"case {name} side {side}", flush=True)
            g = {n: guarded(x.float() if x.is_floating_point() else x.int(), side) for n, x in tensors.items()}
            check_against_oracle(spec, guarded(q, side), guarded(k, side), guarded(v, side), g, backend="tvm")
    print("sanitized: all cases passed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
