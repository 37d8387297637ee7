"""The attncc command line: ``attncc demo``, ``attncc catalogue``, ``attncc explain NAME``."""
import argparse
import sys
import time

import torch

from . import compile as ac_compile
from .reference.dense import dense_attention
from .runtime.inputs import check_call


def _progress(k, n, name, stream=sys.stderr):
    end = "\n" if not stream.isatty() or k == n else "\r"
    stream.write(f"[{k}/{n}] {name:<24}{end}")
    stream.flush()


def run_entry(entry):
    """Lower, run the reference and the dense oracle for one catalogue entry; a result row."""
    q, k, v, tensors = entry.inputs()
    kern = ac_compile(entry.spec, backend="reference")
    low = kern.lower(*check_call(entry.spec, q, k, v, tensors, False))
    t0 = time.perf_counter()
    out = kern(q, k, v, **tensors)
    ref_s = time.perf_counter() - t0
    canon = low.stages[0][1]
    gold = dense_attention(canon, q, k, v, tensors)
    same_dtype = dense_attention(canon, q, k, v, tensors, dtype=torch.float32)
    cost, d = low.program.cost, entry.dims
    return {
        "name": entry.name, "family": entry.family,
        "shape": f"B{d.B} H{d.H} N{d.N} M{d.M} d{d.d}",
        "pairs": cost.useful_pairs, "exact": cost.exact, "density": cost.useful_pairs / (d.N * d.M),
        "gflop": cost.value(cost.flops) / 1e9, "lower_ms": low.seconds * 1e3, "ref_ms": ref_s * 1e3,
        "err": (out.double() - gold).abs().max().item(),
        "err_dense_fp32": (same_dtype.double() - gold).abs().max().item(),
    }


def catalogue_table(rows):
    head = ("| pattern | family | shape | useful pairs per (b,h) | density | GFLOP (cost pass) | lower ms "
            "| reference ms | max err vs fp64 oracle | fp32 dense err |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        pairs = ("" if r["exact"] else "<= ") + f"{r['pairs']:,}"
        lines.append(f"| {r['name']} | {r['family']} | {r['shape']} | {pairs} | {r['density']:.3f} | "
                     f"{r['gflop']:.3f} | {r['lower_ms']:.0f} | {r['ref_ms']:.1f} | {r['err']:.1e} | "
                     f"{r['err_dense_fp32']:.1e} |")
    return "\n".join(lines)


def cmd_demo(args):
    from attncc.ops import CATALOGUE
    entries = [e for e in CATALOGUE if not args.only or e.name in args.only]
    torch.set_num_threads(args.threads)
    print(f"attncc demo: the pattern catalogue (ops/), lowered through the IR and run by the eager "
          f"reference backend, checked against the independent dense float64 oracle ({args.threads} threads).\n")
    rows = []
    for n, e in enumerate(entries, 1):
        _progress(n, len(entries), e.name)
        rows.append(run_entry(e))
    print(catalogue_table(rows))
    worst = max(r["err"] for r in rows)
    print(f"\n{len(rows)} patterns; worst max error of the reference against the fp64 oracle: {worst:.1e}")
    return 0


def cmd_catalogue(args):
    from attncc.ops import CATALOGUE
    for e in CATALOGUE:
        print(f"{e.name:<24} {e.family:<13} {e.spec!r}")
    return 0


def cmd_explain(args):
    from attncc.ops import entry
    e = entry(args.name)
    kern = ac_compile(e.spec, backend="reference")
    kern.explain(dims=e.dims)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="attncc", description="attncc: an attention compiler")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="compile and check the pattern catalogue, print a table")
    p.add_argument("--only", nargs="*", help="catalogue entries to run (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("catalogue", help="list the pattern catalogue")
    p.set_defaults(fn=cmd_catalogue)
    p = sub.add_parser("explain", help="print the IR after each pass, the plan and the cost of a catalogue entry")
    p.add_argument("name")
    p.set_defaults(fn=cmd_explain)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
