"""One training step end to end before and after ``ac.swap`` (issue 23's bench): fp32, 2
threads, batch 8 at 224x224, random weights, train mode: timm swin_tiny_patch4_window7_224
and the ViT-B-sized nn.TransformerEncoder. A step is forward, a mean-square loss, backward
(attncc's generated backward kernels: a BackwardWarning fails the run) and an SGD step; the
two copies alternate in interleaved rounds, the speedup is the median of the rounds' before /
after ratios with its bootstrap interval, and the first step's parameter gradients are compared.

    python bench/e2e_train.py [--rounds 11] [--batch 8] [--models swin vit]

Writes bench/out/e2e_train.{md,json}.
"""
import argparse
import json
import platform
import warnings
from pathlib import Path

import torch

from attncc import demo
from attncc.runtime.autograd import BackwardWarning

from e2e import interval

TARGETS = {"swin": 1.15, "vit": 1.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("error", BackwardWarning)
    lines = [f"# One training step before and after ac.swap ({platform.processor() or platform.machine()}, "
             f"{args.threads} threads, fp32, batch {args.batch}, {args.rounds} interleaved rounds, medians)", "",
             "| model | before ms | after ms | speedup (median of ratios) | 90% interval | target | "
             "parameter gradients: max abs diff / max |grad| |", "|---|---|---|---|---|---|---|"]
    rows = []
    for name in args.models:
        c = demo.compare_training(demo.MODELS[name](), batch=args.batch, rounds=args.rounds)
        lo, hi = interval(c.ratios)
        lines.append(f"| {c.name} | {c.before * 1e3:.0f} | {c.after * 1e3:.0f} | {c.speedup:.2f}x | {lo:.2f}-{hi:.2f}x | "
                     f">= {TARGETS[name]:.2f}x: {'met' if c.speedup >= TARGETS[name] else 'NOT met'} | "
                     f"{c.grad_diff:.1e} |")
        rows.append(dict(model=name, before_s=c.before, after_s=c.after, speedup=c.speedup, ratios=c.ratios,
                         interval_90=(lo, hi), grad_diff=c.grad_diff, target=TARGETS[name]))
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "e2e_train.md").write_text("\n".join(lines) + "\n")
    (out / "e2e_train.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
