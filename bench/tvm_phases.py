"""Where the time of a generated TVM kernel goes: the kernel timed whole and with each phase
(QK^T, mask, softmax, PV) left out, at the CPU bench shapes (2 threads, medians).

    python bench/tvm_phases.py [vit | n4096 | swin | sliding | sigmoid | neighborhood]
"""
import statistics
import sys
import time

import torch

import attncc as ac
from attncc.codegen.tvm.backend import TVMProgram
from attncc.codegen.tvm.source import PHASES
from attncc.ir.program import Dims
from attncc.passes.pipeline import lower

SHAPES = {
    "vit": (ac.Attention(), Dims(8, 12, 197, 197, 64, 64), {}),
    "n4096": (ac.Attention(), Dims(1, 8, 4096, 4096, 64, 64), {}),
    "swin": (ac.Attention(ac.window2d((56, 56), (7, 7), (3, 3)), score_mods=ac.rel_pos_bias("rpb", (7, 7))),
             Dims(8, 3, 3136, 3136, 32, 32), {"rpb": torch.randn(169, 3)}),
    "sliding": (ac.Attention(ac.sliding_window(256)), Dims(1, 8, 4096, 4096, 64, 64), {}),
    "sigmoid": (ac.Attention(normalizer=ac.sigmoid()), Dims(8, 12, 197, 197, 64, 64), {}),
    "neighborhood": (ac.Attention(ac.neighborhood2d((56, 56), (7, 7))), Dims(8, 3, 3136, 3136, 32, 32), {}),
}


def median_ms(fn, n=9):
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main():
    torch.set_num_threads(2)
    name = sys.argv[1] if len(sys.argv) > 1 else "vit"
    spec, dims, tensors = SHAPES[name]
    prog = lower(spec, dims, target="tvm").program
    q = torch.randn(dims.B, dims.H, dims.N, dims.d)
    k = torch.randn(dims.B, dims.H, dims.M, dims.d)
    v = torch.randn(dims.B, dims.H, dims.M, dims.dv)
    variants = {"whole": ()} | {f"without {p}": (p,) for p in PHASES}
    progs = {label: TVMProgram(prog, tensors, skip) for label, skip in variants.items()}
    times = {label: [] for label in progs}
    for _ in range(3):                                  # interleaved rounds
        for label, p in progs.items():
            times[label].append(median_ms(lambda: p(q, k, v, tensors)))
    whole = statistics.median(times["whole"])
    print(f"{name}: {prog.groups[0].plan}")
    print("| variant | ms | phase share |\n|---|---|---|")
    for label, ts in times.items():
        t = statistics.median(ts)
        share = "" if label == "whole" else f"{(whole - t) / whole:.0%}"
        print(f"| {label} | {t:.2f} | {share} |")


if __name__ == "__main__":
    main()
