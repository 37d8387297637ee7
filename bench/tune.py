"""Tuned against default plans on the CPU bench shapes (the rows of bench/cpu_attention.py), and
the cost of a tuning-database lookup; with --target sm_80 / sm_90 (or --gpu: this GPU's arch)
the Triton plans of the GPU bench shapes (the rows of bench/gpu_attention.py, fp16) on a CUDA GPU.

    python bench/tune.py [--only vit causal4096 ...] [--mode fast] [--budget 120] [--rounds 5]
    python bench/tune.py --lookup            # lookup cost only
    python bench/tune.py --ship schedules/   # also write the records as a shipped file
    python bench/tune.py --gpu --ship schedules/ [--budget 30] [--time-limit 450]   # on a GPU

Each CPU shape is tuned (or read from the user database when already tuned), then the default
and the tuned plans are compiled and timed in interleaved rounds in one process (medians).
Writes bench/out/tune.{md,json}. Timings on a shared machine are noisy: compare ratios.
On a GPU the tuner's own final interleaved rounds (default against the finalists, CUDA-event
medians) are the comparison; shapes start in order until --time-limit seconds have passed,
and each shape's record is shipped as soon as it is tuned (a run cut short keeps what it
found). Writes bench/out/tune_gpu.{md,json}.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import attncc as ac
from attncc.codegen.tvm.backend import TVMProgram
from attncc.ir.plan import TilePlan
from attncc.ir.program import Dims
from attncc.passes.pipeline import lower
from attncc.tune import Database, tune, workload_hash
from attncc.tune import db as tdb
from attncc.tune.device import cpu_fingerprint
from attncc.tune.runner import alternate
from attncc.tune.search import make_inputs, need_gpu, plan_label, time_call

OUT = Path(__file__).parent / "out"
GPU_TARGETS = ("sm_80", "sm_90")


def shapes():
    """name -> (description, spec, dims, captured tensors): the bench/cpu_attention.py rows."""
    vit, n4k = Dims(8, 12, 197, 197, 64, 64), Dims(1, 8, 4096, 4096, 64, 64)
    swin = Dims(8, 3, 3136, 3136, 32, 32)
    rpb = {"rpb": 0.02 * torch.randn(13 * 13, 3, generator=torch.Generator().manual_seed(0))}
    win = lambda s: ac.Attention(ac.window2d((56, 56), (7, 7), (s, s)), score_mods=ac.rel_pos_bias("rpb", (7, 7)))
    return {
        "vit": ("full softmax B8 H12 N197 d64", ac.Attention(), vit, {}),
        "full4096": ("full softmax B1 H8 N4096 d64", ac.Attention(), n4k, {}),
        "causal4096": ("causal B1 H8 N4096 d64", ac.Attention(ac.causal()), n4k, {}),
        "sliding256": ("sliding window 256 B1 H8 N4096 d64", ac.Attention(ac.sliding_window(256)), n4k, {}),
        "swin_shift0": ("Swin 56x56 win7 B8 H3 d32 (+rpb)", win(0), swin, rpb),
        "swin_shift3": ("Swin 56x56 win7 shift3 B8 H3 d32 (+rpb)", win(3), swin, rpb),
        "axial_row": ("axial rows 64x64 B2 H8 d64", ac.Attention(ac.axial((64, 64), 1)), Dims(2, 8, 4096, 4096, 64, 64), {}),
        "axial_col": ("axial cols 64x64 B2 H8 d64", ac.Attention(ac.axial((64, 64), 0)), Dims(2, 8, 4096, 4096, 64, 64), {}),
        "sigmoid_vit": ("sigmoid B8 H12 N197 d64", ac.Attention(normalizer=ac.sigmoid()), vit, {}),
        "sigmoid_4096": ("sigmoid B1 H8 N4096 d64", ac.Attention(normalizer=ac.sigmoid()), n4k, {}),
        "neighborhood": ("neighborhood 7x7 on 56x56 B8 H3 d32", ac.Attention(ac.neighborhood2d((56, 56), (7, 7))),
                         swin, {}),
    }


def gpu_shapes():
    """name -> (description, spec, dims, captured tensors): the bench/gpu_attention.py rows, the
    headline shapes first (B8 H16 N4096 dense, 112x112 grids, BiFormer-T's routing stages at
    batch 8). Linear attention is listed too: untunable (its chunk plan is fixed), so reported."""
    sys.path.insert(0, str(Path(__file__).parent))
    import routing
    B, H, N = 8, 16, 4096
    n64, grid, T = Dims(B, H, N, N, 64, 64), (112, 112), 112 * 112
    g64 = Dims(B, H, T, T, 64, 64)
    out = {}
    for d in (64, 128):
        out[f"full_d{d}"] = (f"full softmax B{B} H{H} N{N} d{d}", ac.Attention(), Dims(B, H, N, N, d, d), {})
        out[f"causal_d{d}"] = (f"causal B{B} H{H} N{N} d{d}", ac.Attention(ac.causal()), Dims(B, H, N, N, d, d), {})
    out["sliding"] = (f"causal sliding window 256, B{B} H{H} N{N} d64", ac.Attention(ac.sliding_window(256)), n64, {})
    rpb = {"rpb": 0.02 * torch.randn(169, H, generator=torch.Generator().manual_seed(0))}
    for shift in (0, 3):
        out[f"swin_shift{shift}"] = (f"Swin 112x112 win7 shift{shift} B{B} H{H} d64 (+rpb)", ac.Attention(
            ac.window2d(grid, (7, 7), (shift, shift)), score_mods=ac.rel_pos_bias("rpb", (7, 7))), g64, rpb)
    out["neighborhood"] = (f"neighborhood 7x7 on 112x112, B{B} H{H} d64", ac.Attention(ac.neighborhood2d(grid, (7, 7))),
                           g64, {})
    out["axial_rows"] = (f"axial rows 112x112, B{B} H{H} d64", ac.Attention(ac.axial(grid, 1)), g64, {})
    out["axial_cols"] = (f"axial columns 112x112, B{B} H{H} d64", ac.Attention(ac.axial(grid, 0)), g64, {})
    out["sigmoid"] = (f"sigmoid (b = -log n) B{B} H{H} N{N} d64", ac.Attention(normalizer=ac.sigmoid()), n64, {})
    gen = torch.Generator().manual_seed(0)
    lay = (torch.rand(N // 128, N // 128, generator=gen) < 0.25) | torch.eye(N // 128, dtype=torch.bool)
    out["block_sparse_call"] = (f"block-sparse call-time layout ({lay.float().mean().item():.0%} of 128x128 blocks), "
                                f"B{B} H{H} N{N} d64", ac.Attention(ac.block_sparse("layout", (128, 128))), n64,
                                {"layout": lay})
    for stage, (rgrid, regions, topk, hr, dr) in routing.STAGES.items():
        nr = rgrid[0] * rgrid[1]
        out[f"routing_{stage}"] = (f"routing {rgrid[0]}x{rgrid[1]}, 7x7 regions, topk {topk}, B{B} H{hr} d{dr}",
                                   ac.Attention(ac.routing(rgrid, regions, topk), scale=(hr * dr) ** -0.5),
                                   Dims(B, hr, nr, nr, dr, dr), {})
    lin = Dims(1, 8, N, N, 64, 64)
    out["linear"] = (f"linear (elu+1) B1 H8 N{N} d64", ac.Attention(normalizer=ac.linear("elu1")), lin, {})
    out["linear_causal"] = (f"causal linear (elu+1) B1 H8 N{N} d64",
                            ac.Attention(ac.causal(), normalizer=ac.linear("elu1")), lin, {})
    return out


def label(plans):
    return " / ".join(f"{p.block_m}x{p.block_n} u{p.unroll} v{p.vector}" for p in plans)


def compare(spec, dims, tensors, plan_sets, rounds):
    """Per plan set, its time in each of `rounds` interleaved rounds (the order reversed every
    other round)."""
    q, k, v = make_inputs(dims, torch.float32)
    fns = []
    for plans in plan_sets:
        comp = TVMProgram(lower(spec, dims, "float32", "tvm", plans=plans).program, tensors)
        fns.append(lambda comp=comp: comp(q, k, v, tensors))
    times = [[] for _ in fns]
    for r in range(rounds):
        for t, fn in alternate(list(zip(times, fns)), r):
            t.append(time_call(fn, 0.2))
    return times


def bench_lookup(n_records=1000, n=20000):
    """Seconds per lookup in a database of n_records (hot: parsed once, then one stat per
    lookup), and the first lookup after the file changed (a re-parse)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "records.json")
        recs = [tdb.make_record(workload=f"{w:016x}", target="tvm", device=cpu_fingerprint(), dtype="float32",
                                dims=Dims(1, 8, 64 * (s + 1), 64 * (s + 1), 64, 64), plans=[TilePlan()], time_s=1e-3)
                for w in range(n_records // 10) for s in range(10)]
        db._write(recs)
        t0 = time.perf_counter()
        db._load()
        cold = time.perf_counter() - t0
        want = recs[len(recs) // 2]
        args = (want["workload"], "tvm", want["device"], "float32")
        ts = {}
        for what, shape in (("exact", want["shape"]), ("bucket", [1, 8, 300, 300, 64, 64]),
                            ("miss", [1, 8, 100000, 100000, 64, 64])):
            t0 = time.perf_counter()
            for _ in range(n):
                tdb.lookup(*args, shape, dbs=[db])
            ts[what] = (time.perf_counter() - t0) / n
        spec, dims = ac.Attention(ac.causal()), Dims(1, 8, 4096, 4096, 64, 64)
        t0 = time.perf_counter()
        for _ in range(20):
            workload_hash(spec, dims, "tvm")
        ts["workload_hash"] = (time.perf_counter() - t0) / 20
    return cold, ts


def ship(records, directory, device):
    """Add records to the shipped file of `device` in `directory` (no lock file left behind)."""
    parts = device.split(":")
    if parts[0] == "gpu":               # 'gpu:NVIDIA H200:sm_90' -> gpu-nvidia-h200-sm_90.json
        fname = "-".join(("gpu", *parts[1].lower().split(), parts[2])) + ".json"
    else:                               # 'cpu:<model>:<isa>:<cores>c'
        fname = "-".join(x for x in ("cpu", *parts[1].lower().split(), parts[2].replace("+", "-"), parts[3])) + ".json"
    path = Path(directory) / fname
    db = Database(path)
    for rec in records:
        if rec is not None:
            db.add(rec)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)     # no lock file in the package
    return path


def gpu_table(head, rows):
    return "\n".join(head + [
        f"| {r['shape']} | {r['default']} | {r['tuned']} | {r['default_ms']:.3f} | {r['tuned_ms']:.3f} | "
        f"{r['speedup']:.2f}x | {r['trials']} ({r['rejected']}) |" if "note" not in r else
        f"| {r['shape']} | {r['note']} | | | | | |" for r in rows])


def main_gpu(args, target):
    """Tune the Triton plans of the GPU bench shapes on this machine's CUDA GPU."""
    from attncc.tune.device import gpu_fingerprint
    from attncc.tune.space import Untunable
    try:
        need_gpu(target)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"bench/tune.py: {e}") from None
    device, out = gpu_fingerprint(), Path(args.out)
    print(f"tuning Triton plans ({target}, {args.dtype}, mode {args.mode}, {args.budget:.0f} s per shape) on {device}",
          flush=True)
    rows, t0, path = [], time.perf_counter(), None
    head = [f"Triton plans tuned ({args.mode}) against the defaults, {args.dtype}, {device}; the tuner's final "
            f"interleaved rounds (CUDA-event medians)", "",
            "| shape | default plan | tuned plan | default ms | tuned ms | speedup | trials (rejected) |", "|" + "---|" * 7]
    for name, (desc, spec, dims, tensors) in gpu_shapes().items():
        if args.only and name not in args.only:
            continue
        if args.time_limit and time.perf_counter() - t0 > args.time_limit:
            rows.append(dict(name=name, shape=desc, note=f"skipped: past --time-limit {args.time_limit:.0f} s"))
            continue
        print(f"== {name}: {desc}", file=sys.stderr, flush=True)
        try:
            res = tune(spec, dims, args.dtype, tensors, target=target, mode=args.mode, budget_s=args.budget,
                       trials=args.trials, rounds=args.rounds, progress=True, retune=args.retune)
        except Untunable as e:
            rows.append(dict(name=name, shape=desc, note=f"untunable: {e}"))
            continue
        except Exception as e:              # one shape's failure (reported) does not lose the others' records
            rows.append(dict(name=name, shape=desc, note=f"failed: {type(e).__name__}: {str(e)[:200]}"))
            print(f"   {rows[-1]['note']}", file=sys.stderr, flush=True)
            continue
        default = tuple(g.plan for g in lower(spec, dims, args.dtype, target).program.groups)
        rows.append(dict(name=name, shape=desc, default=plan_label(default, target), tuned=plan_label(res.plans, target),
                         default_ms=res.default_seconds * 1e3, tuned_ms=res.seconds * 1e3, speedup=res.speedup,
                         trials=res.record.get("trials"), rejected=res.record.get("rejected"), from_db=res.from_db))
        if args.ship:
            path = ship([res.record], args.ship, device)
        r = rows[-1]
        print(f"   default {r['default']} {r['default_ms']:.3f} ms, tuned {r['tuned']} {r['tuned_ms']:.3f} ms "
              f"({r['speedup']:.2f}x){' (from the database)' if res.from_db else ''}", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tune_gpu.md").write_text(gpu_table(head, rows) + "\n")       # so far
    text = gpu_table(head, rows)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_gpu.md").write_text(text + "\n")
    (out / "tune_gpu.json").write_text(json.dumps(dict(device=device, target=target, dtype=args.dtype, rows=rows),
                                                  indent=1))
    if path is not None:
        print(f"wrote {sum('note' not in r for r in rows)} record(s) to {path}")
    return 0 if all("failed" not in r.get("note", "") for r in rows) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--mode", default="fast", choices=("fast", "full"))
    ap.add_argument("--budget", type=float,
                    help="tuning seconds per shape, the oracle included (default 180 on the CPU, 30 on a GPU)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lookup", action="store_true", help="measure the lookup cost only")
    ap.add_argument("--ship", help="directory to write this device's records to as a shipped file")
    ap.add_argument("--retune", action="store_true")
    ap.add_argument("--target", default="tvm", choices=("tvm", *GPU_TARGETS),
                    help="tvm: the CPU bench shapes; sm_80 / sm_90: the GPU bench shapes' Triton plans (a CUDA GPU)")
    ap.add_argument("--gpu", action="store_true", help="the Triton plans of this machine's GPU (its arch's target)")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="GPU inputs")
    ap.add_argument("--trials", type=int, help="candidates per shape, the default included (GPU; default: the mode's)")
    ap.add_argument("--time-limit", type=float, default=450.0,
                    help="GPU: start no shape after this many seconds (0: no limit)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.gpu or args.target != "tvm":
        from attncc.runtime.kernel import triton_target
        target = args.target
        if args.gpu:
            target = triton_target(torch.device("cuda")) if torch.cuda.is_available() else "sm_90"
        args.budget = 30.0 if args.budget is None else args.budget
        return main_gpu(args, target)
    args.budget = 180.0 if args.budget is None else args.budget
    torch.set_num_threads(2)
    cold, ts = bench_lookup()
    print(f"database lookup (1000 records; noisy shared machine): first load {cold * 1e3:.2f} ms, then "
          + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in ts.items()) + "\n", flush=True)
    if args.lookup:
        return 0
    rows, records = [], []
    for name, (desc, spec, dims, tensors) in shapes().items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}: {desc}", file=sys.stderr, flush=True)
        res = tune(spec, dims, "float32", tensors, mode=args.mode, budget_s=args.budget, progress=True,
                   retune=args.retune)
        default = tuple(g.plan for g in lower(spec, dims, "float32", "tvm").program.groups)
        if res.plans != default:
            r_def, r_tuned = compare(spec, dims, tensors, [default, res.plans], args.rounds)
        else:
            r_def = r_tuned = compare(spec, dims, tensors, [default], args.rounds)[0]
        t_def, t_tuned = statistics.median(r_def), statistics.median(r_tuned)
        speedup = statistics.median(d / t for d, t in zip(r_def, r_tuned))     # the rounds' paired ratios
        rows.append(dict(name=name, shape=desc, default=label(default), tuned=label(res.plans),
                         default_ms=t_def * 1e3, tuned_ms=t_tuned * 1e3, speedup=speedup,
                         trials=len(res.trials) if not res.from_db else res.record.get("trials"),
                         from_db=res.from_db))
        records.append(res.record)
        print(f"   default {label(default)} {t_def * 1e3:.2f} ms, tuned {label(res.plans)} {t_tuned * 1e3:.2f} ms "
              f"({speedup:.2f}x)", file=sys.stderr, flush=True)
    lines = [f"Tuned ({args.mode}) against default plans, fp32, 2 threads, {cpu_fingerprint()}; medians of "
             f"{args.rounds} interleaved rounds, speedup: the median of the rounds' paired ratios (shared machine: "
             "noisy)", "",
             "| shape | default plan | tuned plan | default ms | tuned ms | speedup | trials |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['default']} | {r['tuned']} | {r['default_ms']:.2f} | {r['tuned_ms']:.2f} "
                     f"| {r['speedup']:.2f}x | {r['trials']} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.md").write_text(text + "\n")
    (out / "tune.json").write_text(json.dumps(dict(device=cpu_fingerprint(), rows=rows,
                                                   lookup_s=ts, lookup_cold_s=cold), indent=1))
    if args.ship:
        path = ship(records, args.ship, cpu_fingerprint())
        print(f"wrote {len(records)} record(s) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
