"""The attncc command line: ``attncc demo``, ``attncc catalogue``, ``attncc explain NAME``,
``attncc check-gpu --arch sm_80 sm_90``, ``attncc tune NAME``, ``attncc db list | show | export
| clear``, ``attncc cache info | clear`` (also ``python -m attncc ...``)."""
import argparse
import os
import sys
import time
import warnings

import torch

from . import compile as ac_compile
from .progress import progress_bar
from .runtime.inputs import check_call


def run_entry(entry, rounds=3):
    """One catalogue entry: compile it (backend "auto"), judge its output against the dense
    fp64 oracle (relative to the textbook formula's own fp32 error), and time it against the
    peers: attncc's eager reference backend (reshape / gather / chunked: what eager model code
    does) and torch SDPA given the pattern as a dense boolean mask (softmax patterns without
    score modifiers)."""
    import torch.nn.functional as F
    from .demo import interleaved
    from .ir import symbols as S
    from .reference.dense import dense_mask
    from .tune.verify import Oracle
    q, k, v, tensors = entry.inputs()
    kern = ac_compile(entry.spec)
    low = kern.lower(*check_call(entry.spec, q, k, v, tensors, False))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = kern(q, k, v, **tensors)
    compile_s = time.perf_counter() - t0
    canon = low.stages[0][1]
    oracle = Oracle(canon, q, k, v, tensors)
    ok, err = oracle.check(out)
    calls = {"attncc": lambda: kern(q, k, v, **tensors)}
    eager = ac_compile(entry.spec, backend="reference")
    calls["eager"] = lambda: eager(q, k, v, **tensors)
    prog = low.program
    if prog.norm.kind == "softmax" and prog.score == S.score and not prog.post and not prog.prologues:
        mask = dense_mask(canon, q, k, tensors)
        calls["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=canon.scale)
    with torch.no_grad():
        t = interleaved(calls, rounds, 0.05)
    cost, d = prog.cost, entry.dims
    fallback = next((str(w.message) for w in caught if "reference" in str(w.message)), None)
    return {
        "name": entry.name, "family": entry.family, "backend": kern.backend if not fallback else "reference",
        "shape": f"B{d.B} H{d.H} N{d.N} M{d.M} d{d.d}", "density": cost.useful_pairs / (d.N * d.M),
        "compile_s": compile_s, "ms": t["attncc"] * 1e3, "eager_ms": t["eager"] * 1e3,
        "sdpa_ms": t["sdpa"] * 1e3 if "sdpa" in t else None, "ok": ok, "err": err, "yard": oracle.yard,
        "fallback": fallback,
    }


def catalogue_table(rows):
    lines = ["| pattern | family | shape | density | backend | first call s (compile) | attncc ms | eager ms "
             "| SDPA dense-mask ms | vs eager | vs SDPA | max err vs fp64 | fp32 textbook err | oracle |",
             "|" + "---|" * 14]
    for r in rows:
        sdpa = ("n/a", "n/a") if r["sdpa_ms"] is None else (f"{r['sdpa_ms']:.2f}", f"{r['sdpa_ms'] / r['ms']:.2f}x")
        lines.append(f"| {r['name']} | {r['family']} | {r['shape']} | {r['density']:.3f} | {r['backend']} | "
                     f"{r['compile_s']:.1f} | {r['ms']:.2f} | {r['eager_ms']:.2f} | {sdpa[0]} | "
                     f"{r['eager_ms'] / r['ms']:.2f}x | {sdpa[1]} | {r['err']:.1e} | {r['yard']:.1e} | "
                     f"{'ok' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


def cmd_demo(args):
    from . import demo
    from attncc.ops import CATALOGUE
    torch.set_num_threads(args.threads)
    failed, trainings = [], []
    print(f"attncc demo on this CPU ({args.threads} threads, fp32). Models with random weights (nothing is "
          "downloaded) before and after ac.swap: the outputs compared, per-layer and end-to-end inference "
          "times, then one training step each (interleaved rounds, medians).\n", flush=True)
    for name in args.models:
        try:
            model = demo.MODELS[name]()
        except RuntimeError as e:
            print(f"## {name}: skipped: {e}\n", flush=True)
            continue
        # a whole forward is one call per round, and single calls move by 10-15% on a shared
        # machine: the end-to-end ratio takes more rounds than the layers
        c = demo.compare(model, batch=args.batch, rounds=args.e2e_rounds or 3 * args.rounds,
                         layer_rounds=args.rounds)
        swapped = sorted({s.was for s in c.report})
        print(f"## {c.name}, batch {args.batch}\n\nac.swap replaced {len(c.report)} modules ({'; '.join(swapped)}).\n"
              f"outputs {'equal' if c.equal else 'DIFFER'}: max abs difference {c.max_diff:.1e} "
              "(allclose at rtol = atol = 1e-4)\n", flush=True)
        print(c.table() + "\n", flush=True)
        if not c.equal:
            failed.append(f"{name}: outputs differ by {c.max_diff:.1e}")
        trainings.append(demo.compare_training(model, batch=args.batch, rounds=args.rounds))
        t = trainings[-1]
        print(f"training step (forward, loss, generated backward, SGD): before {t.before * 1e3:.0f} ms, after "
              f"{t.after * 1e3:.0f} ms, {t.speedup:.2f}x; parameter gradients max abs diff {t.grad_diff:.1e} "
              "of the largest\n", flush=True)
        if t.grad_diff > 1e-4:
            failed.append(f"{name}: training gradients differ by {t.grad_diff:.1e}")
    if trainings:
        print("## Training step before and after ac.swap\n\n| model | before ms | after ms | speedup | "
              "gradients: max abs diff / max |grad| |\n|---|---|---|---|---|")
        for t in trainings:
            print(f"| {t.name} | {t.before * 1e3:.0f} | {t.after * 1e3:.0f} | {t.speedup:.2f}x | {t.grad_diff:.1e} |")
        print(flush=True)
    entries = [e for e in CATALOGUE if not args.only or e.name in args.only]
    print("## The pattern catalogue (ops/)\n\nEach pattern compiled by attncc (backend auto: generated TVM "
          "kernels on this CPU), judged against the dense float64 oracle, and timed against its peers.\n",
          flush=True)
    rows = []
    with progress_bar(len(entries)) as bar:
        for e in entries:
            bar.set_description_str(f"compiling and timing {e.name}")
            rows.append(run_entry(e, args.rounds))
            bar.update()
    print(catalogue_table(rows))
    for r in rows:
        if r["fallback"]:
            print(f"note: {r['name']} ran on the reference backend: {r['fallback']}")
    failed += [f"{r['name']}: error {r['err']:.1e} over the oracle's bound" for r in rows if not r["ok"]]
    print(f"\n{len(rows)} patterns; " + ("every output within the oracle's bound" if not failed else
                                          "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


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


def gpu_job(name, arch, dtype, hd, backward=True):
    """Compile one catalogue entry's kernels for one arch, dtype and head dim: result rows (the
    forward's, then the generated backward's dq and dkv where it serves the entry)."""
    import dataclasses
    from attncc.codegen.backward import why_not
    from attncc.codegen.triton.aot import compile_backward, compile_program
    from attncc.codegen.triton.backward import not_generated
    from attncc.ops import entry
    from .passes.pipeline import lower
    e = entry(name)
    dims = dataclasses.replace(e.dims, d=hd, dv=hd)
    rows = []
    try:
        prog = lower(e.spec, dims, dtype, target=arch).program
        tensors = e.tensors(dims, torch.Generator().manual_seed(0))
        results = compile_program(prog, tensors)
    except Exception as exc:                     # reported as a failed row, the command exits 1
        return [dict(name=name, arch=arch, dtype=dtype, hd=hd, kernel="forward",
                     error=f"{type(exc).__name__}: {exc}"[:300])]
    if backward and why_not(prog) is None and not_generated(prog) is None:
        try:
            results += compile_backward(prog, tensors)
        except Exception as exc:
            rows.append(dict(name=name, arch=arch, dtype=dtype, hd=hd, kernel="dq, dkv",
                             error=f"{type(exc).__name__}: {exc}"[:300]))
    for r in results:
        p = r.plan
        rows.append(dict(name=name, arch=arch, dtype=dtype, hd=hd, heads=r.heads, kernel=r.kernel,
                         error=None if r.fits else f"needs {r.shared} bytes of shared memory, {arch} has {r.limit}",
                         plan=f"{p.block_m}x{p.block_n} w{p.num_warps} s{p.num_stages}", shared=r.shared,
                         model=r.model, seconds=r.seconds, regs=r.registers, spills=r.spills))
    return rows


def gpu_table(rows):
    lines = ["| pattern | kernel | arch | dtype | head dim | plan (BMxBN warps stages) | shared memory bytes (model) "
             "| compile s | registers | spill bytes |", "|" + "---|" * 10]
    for r in rows:
        head = f"| {r['name']} | {r.get('kernel', 'forward')} | {r['arch']} | {r['dtype']} | {r['hd']} |"
        if r.get("plan") is None:
            lines.append(f"{head} FAILED: {r['error']} | | | | |")
            continue
        fmt = lambda x: "n/a" if x is None else f"{x:,}"
        model = "" if r["model"] is None else f" ({r['model']:,})"      # the model sizes the forward's tiles
        lines.append(f"{head} {r['plan']} | {r['shared']:,}{model} | {r['seconds']:.1f} | {fmt(r['regs'])} "
                     f"| {fmt(r['spills'])} |" + (f" FAILED: {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


def cmd_check_gpu(args):
    """Compile every catalogue pattern the Triton backend serves for the given arches, fp16
    and bf16, head dims 64 and 128, without a GPU (the forward kernels, and the generated
    backward's dq and dkv where it serves the pattern, unless --no-backward); print a table;
    exit 1 on any failure."""
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
    jobs = [(n, a, dt, hd, not args.no_backward) for n in names for a in args.arch for dt in args.dtype
            for hd in args.head_dim]
    print(f"attncc check-gpu: {len(jobs)} compiles ({len(names)} patterns x {len(args.arch)} arches x "
          f"{len(args.dtype)} dtypes x {len(args.head_dim)} head dims; "
          f"{'forward kernels only' if args.no_backward else 'forward and generated backward kernels'}) "
          f"with triton.compile and a GPUTarget, {args.jobs} at a time\n", flush=True)
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, progress_bar(len(jobs)) as bar:
        for got in pool.map(gpu_job, *zip(*jobs)):
            bar.set_description_str(f"{got[0]['name']} {got[0]['arch']} {got[0]['dtype']} d{got[0]['hd']}",
                                    refresh=False)
            bar.update()
            rows.extend(got)
    print(gpu_table(rows))
    failed = [r for r in rows if r["error"]]
    for s in skipped:
        print(f"not compiled (unsupported by the Triton backend): {s}")
    print(f"\n{len(rows) - len(failed)} of {len(rows)} kernels compiled and fit; {len(failed)} failed")
    return 1 if failed else 0


def cmd_cache(args):
    """Show (info) or empty (clear) the cache folders: all, or those picked by --tvm/--triton/--tune."""
    from . import cachedir
    names = [n for n in cachedir.FOLDERS if getattr(args, n)] or list(cachedir.FOLDERS)
    print(f"attncc cache: {cachedir.root()} (ATTNCC_CACHE_DIR moves it)")
    if args.action == "info":
        for name, path, files, size in cachedir.usage(names):
            print(f"{name:<7} {path}: {files} file(s), {size / 2**20:.1f} MiB ({size} bytes)")
    else:
        for name, path, files in cachedir.clear(names):
            print(f"{name:<7} {path}: removed {files} file(s)")
    db = os.environ.get("ATTNCC_TUNE_DB")
    if "tune" in names and db:
        print(f"note: the tuning records in ATTNCC_TUNE_DB={db} are not in the cache folder; "
              "`attncc db list` shows them and `attncc db clear` removes them")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="attncc", description="attncc: an attention compiler")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="the main job: swap attncc into real models and time them, then the "
                                    "pattern catalogue against its peers")
    p.add_argument("--models", nargs="*", default=["vit", "swin"], choices=["vit", "swin", "open_clip"],
                   help="models to swap and time (none: the catalogue only)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (medians)")
    p.add_argument("--e2e-rounds", type=int, default=None,
                   help="interleaved rounds of the whole models (default: 3 x --rounds)")
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
    p.add_argument("--no-backward", action="store_true",
                   help="compile the forward kernels only (not the generated backward's dq and dkv kernels)")
    p.set_defaults(fn=cmd_check_gpu)
    p = sub.add_parser("cache", help="show (info) or empty (clear) attncc's caches: compiled TVM kernels, "
                                     "generated Triton sources, tuning records")
    p.add_argument("action", choices=["info", "clear"])
    for name, what in (("tvm", "the compiled TVM kernels"), ("triton", "the generated Triton kernel sources"),
                       ("tune", "the tuner's records")):
        p.add_argument(f"--{name}", action="store_true", help=f"only {what} (default: every cache)")
    p.set_defaults(fn=cmd_cache)
    from .tune.cli import add_parsers as add_tune_parsers
    add_tune_parsers(sub)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
