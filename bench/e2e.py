"""End-to-end inference before and after ``ac.swap`` (issue 6's bench): fp32, 2 threads,
batch 8 at 224x224, random weights: timm swin_tiny_patch4_window7_224, the ViT-B-sized torch
nn.TransformerEncoder and open_clip's ViT-B-32 image tower. Each model and its swapped copy
are timed interleaved (warm-up, rounds, medians), per layer and end to end, in one run.

    python bench/e2e.py [--rounds 5] [--batch 8] [--models swin vit open_clip]

Writes bench/out/e2e.{md,json}.
"""
import argparse
import json
import os
import platform
from pathlib import Path

import torch

from attncc import demo

TARGETS = {"swin": 1.15, "vit": 1.0, "open_clip": 1.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["swin", "vit", "open_clip"], choices=list(demo.MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ATTNCC_TVM_THREADS")}
    lines = [f"# End to end before and after ac.swap ({platform.processor() or platform.machine()}, "
             f"{args.threads} threads, fp32, batch {args.batch}, {args.rounds} interleaved rounds, medians; "
             f"environment {env})", ""]
    summary, rows = [], []
    for name in args.models:
        c = demo.compare(demo.MODELS[name](), batch=args.batch, rounds=args.rounds)
        ok = c.speedup >= TARGETS[name]
        summary.append(f"| {c.name} | {c.before * 1e3:.1f} | {c.after * 1e3:.1f} | {c.speedup:.2f}x | "
                       f">= {TARGETS[name]:.2f}x: {'met' if ok else 'NOT met'} | {c.max_diff:.1e} |")
        lines += [f"## {c.name}", "", f"{len(c.report)} modules swapped; outputs "
                  f"{'equal' if c.equal else 'DIFFER'} (max abs difference {c.max_diff:.1e})", "", c.table(), ""]
        rows.append(dict(model=name, name=c.name, before_s=c.before, after_s=c.after, speedup=c.speedup,
                         max_diff=c.max_diff, equal=c.equal, layers=c.layers, target=TARGETS[name]))
        print("\n".join(lines[-6:]), flush=True)
    head = ["| model | before ms | after ms | speedup | target | max abs diff |", "|---|---|---|---|---|---|"]
    text = "\n".join(lines[:2] + head + summary + [""] + lines[2:])
    (out / "e2e.md").write_text(text + "\n")
    (out / "e2e.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(head + summary))


if __name__ == "__main__":
    main()
