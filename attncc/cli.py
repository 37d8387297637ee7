"""The attncc command line: ``attncc demo``, ``attncc catalogue``, ``attncc explain NAME``,
``attncc check-gpu --arch sm_80 sm_90``, ``attncc tune NAME``, ``attncc db list | show | export
| clear`` (also ``python -m attncc ...``)."""
import argparse
import os
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


def gpu_job(name, arch, dtype, hd):
    """Compile one catalogue entry's kernels for one arch, dtype and head dim: result rows."""
    import dataclasses
    from attncc.codegen.triton.aot import compile_program
    from attncc.ops import entry
    from .passes.pipeline import lower
    e = entry(name)
    dims = dataclasses.replace(e.dims, d=hd, dv=hd)
    rows = []
    try:
        prog = lower(e.spec, dims, dtype, target=arch).program
        results = compile_program(prog, e.tensors(dims, torch.Generator().manual_seed(0)))
    except Exception as exc:                     # reported as a failed row, the command exits 1
        return [dict(name=name, arch=arch, dtype=dtype, hd=hd, error=f"{type(exc).__name__}: {exc}"[:300])]
    for r in results:
        p = r.plan
        rows.append(dict(name=name, arch=arch, dtype=dtype, hd=hd, heads=r.heads, error=None if r.fits else
                         f"needs {r.shared} bytes of shared memory, {arch} has {r.limit}",
                         plan=f"{p.block_m}x{p.block_n} w{p.num_warps} s{p.num_stages}", shared=r.shared,
                         model=r.model, seconds=r.seconds, regs=r.registers, spills=r.spills))
    return rows


def gpu_table(rows):
    lines = ["| pattern | arch | dtype | head dim | plan (BMxBN warps stages) | shared memory bytes (model) "
             "| compile s | registers | spill bytes |", "|" + "---|" * 9]
    for r in rows:
        if r.get("plan") is None:
            lines.append(f"| {r['name']} | {r['arch']} | {r['dtype']} | {r['hd']} | FAILED: {r['error']} | | | | |")
            continue
        fmt = lambda x: "n/a" if x is None else str(x)
        lines.append(f"| {r['name']} | {r['arch']} | {r['dtype']} | {r['hd']} | {r['plan']} | {r['shared']:,} "
                     f"({r['model']:,}) | {r['seconds']:.1f} | {fmt(r['regs'])} | {fmt(r['spills'])} |"
                     + (f" FAILED: {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


def cmd_check_gpu(args):
    """Compile every catalogue pattern the Triton backend serves for the given arches, fp16
    and bf16, head dims 64 and 128, without a GPU; print a table; exit 1 on any failure."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from attncc.codegen.triton.backend import unsupported
    from attncc.ops import CATALOGUE
    from .passes.canonicalize import canonicalize
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")      # triton 3.9's default, without its warning
    names, skipped = [], []
    for e in CATALOGUE:
        if args.only and e.name not in args.only:
            continue
        why = unsupported(canonicalize(e.spec, e.dims))
        if why:
            skipped.append(f"{e.name}: {why}")
        else:
            names.append(e.name)
    jobs = [(n, a, dt, hd) for n in names for a in args.arch for dt in args.dtype for hd in args.head_dim]
    print(f"attncc check-gpu: {len(jobs)} compiles ({len(names)} patterns x {len(args.arch)} arches x "
          f"{len(args.dtype)} dtypes x {len(args.head_dim)} head dims) with triton.compile and a GPUTarget, "
          f"{args.jobs} at a time\n", flush=True)
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for k, got in enumerate(pool.map(gpu_job, *zip(*jobs)), 1):
            _progress(k, len(jobs), f"{got[0]['name']} {got[0]['arch']} {got[0]['dtype']} d{got[0]['hd']}")
            rows.extend(got)
    print(gpu_table(rows))
    failed = [r for r in rows if r["error"]]
    for s in skipped:
        print(f"not compiled (unsupported by the Triton backend): {s}")
    print(f"\n{len(rows) - len(failed)} of {len(rows)} kernels compiled and fit; {len(failed)} failed")
    return 1 if failed else 0


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
    p = sub.add_parser("check-gpu", help="compile the catalogue's Triton kernels for NVIDIA GPUs, no GPU needed")
    p.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"], choices=["sm_80", "sm_90"])
    p.add_argument("--dtype", nargs="+", default=["float16", "bfloat16"], choices=["float16", "bfloat16", "float32"])
    p.add_argument("--head-dim", nargs="+", type=int, default=[64, 128])
    p.add_argument("--only", nargs="*", help="catalogue entries to compile (default: all the backend serves)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    p.set_defaults(fn=cmd_check_gpu)
    from .tune.cli import add_parsers as add_tune_parsers
    add_tune_parsers(sub)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
