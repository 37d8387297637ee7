"""No generated TVM kernel reads past q, k, v or a captured table: every kernel of the catalogue
and of the parametrized suite runs on guarded inputs (tests/guarded.py: each tensor against a
PROT_NONE page, after its end and before its start) and still matches the oracle. The control
proves the guard pages fault."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run(code_or_args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    args = [sys.executable, *code_or_args]
    return subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("side, offset", [("end", "t.numel() * 4"), ("start", "-4")])
def test_guard_pages_fault(side, offset):
    code = ("import ctypes, torch; from guarded import guarded; t = guarded(torch.ones(3, 5), %r); "
            "assert float(t.sum()) == 15; print('read', flush=True); "
            "ctypes.c_float.from_address(t.data_ptr() + %s).value" % (side, offset))
    got = run(["-c", code], timeout=120)
    assert got.stdout.strip() == "read" and got.returncode == -11, (got.returncode, got.stdout, got.stderr[-2000:])


def test_tvm_kernels_read_inside_their_tensors():
    got = run(["sanitize_run.py"])
    last = got.stdout.strip().splitlines()[-1:] or ["(nothing)"]
    assert got.returncode == 0 and last == ["sanitized: all cases passed"], (
        f"exit {got.returncode} while running: {last[0]}\n{got.stderr[-3000:]}")
