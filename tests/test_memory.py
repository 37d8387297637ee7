"""The reference stays memory-proportional to the useful pairs on sparse patterns: it never
builds an N x M matrix for them. Measured as the peak RSS growth of a fresh process."""
import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    import attncc as ac
    torch.set_num_threads(1)
    case = sys.argv[1]
    if case == "swin_shifted_56":
        spec = ac.Attention(ac.window2d((56, 56), (7, 7), (3, 3)),
                            score_mods=ac.rel_pos_bias("rpb", (7, 7)))
        B, H, N, d, tens = 2, 3, 3136, 32, {"rpb": torch.randn(169, 3)}
        pairs = 3136 * 49
    elif case == "sliding_4096":
        spec = ac.Attention(ac.sliding_window(256))
        B, H, N, d, tens = 1, 4, 4096, 64, {}
        pairs = 4096 * 257
    else:
        spec = ac.Attention(ac.neighborhood2d((56, 56), (7, 7)))
        B, H, N, d, tens = 2, 3, 3136, 32, {}
        pairs = 3136 * 49
    q, k, v = (torch.randn(B, H, N, d) for _ in range(3))
    kern = ac.reference(spec)
    from attncc.runtime.inputs import check_call
    kern.lower(*check_call(spec, q, k, v, tens, False))      # compile-time work is not the kernel's memory
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = kern(q, k, v, **tens)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth": (peak - base) * 1024, "dense": B * H * N * N * 4,
                      "useful": B * H * pairs * 4, "inputs": 4 * q.numel() * 4}))
""")


@pytest.mark.parametrize("case", ["swin_shifted_56", "sliding_4096", "neighborhood_56"])
def test_reference_memory_is_near_the_useful_pairs(case):
    res = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    # a dense score matrix alone would be m["dense"] bytes; the reference stays far below it
    assert m["growth"] < 0.25 * m["dense"], m
    assert m["growth"] < 8 * m["useful"] + 2 * m["inputs"], m
