"""Tuned against default plans on the CPU bench shapes (the rows of bench/cpu_attention.py), and
the cost of a tuning-database lookup.

    python bench/tune.py [--only vit causal4096 ...] [--mode fast] [--budget 120] [--rounds 5]
    python bench/tune.py --lookup            # lookup cost only
    python bench/tune.py --ship schedules/   # also write the records as a shipped file

Each shape is tuned (or read from the user database when already tuned), then the default
and the tuned plans are compiled and timed in interleaved rounds in one process (medians).
Writes bench/out/tune.{md,json}. Timings on a shared machine are noisy: compare ratios.
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
from attncc.tune.search import make_inputs, time_call

OUT = Path(__file__).parent / "out"


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


def label(plans):
    return " / ".join(f"{p.block_m}x{p.block_n} u{p.unroll} v{p.vector}" for p in plans)


def compare(spec, dims, tensors, plan_sets, rounds):
    """Median seconds per plan set, timed in interleaved rounds."""
    q, k, v = make_inputs(dims, torch.float32)
    fns = []
    for plans in plan_sets:
        comp = TVMProgram(lower(spec, dims, "float32", "tvm", plans=plans).program, tensors)
        fns.append(lambda comp=comp: comp(q, k, v, tensors))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for t, fn in zip(times, fns):
            t.append(time_call(fn, 0.2))
    return [statistics.median(t) for t in times]


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--mode", default="fast", choices=("fast", "full"))
    ap.add_argument("--budget", type=float, default=180.0, help="tuning seconds per shape")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lookup", action="store_true", help="measure the lookup cost only")
    ap.add_argument("--ship", help="directory to write this device's records to as a shipped file")
    ap.add_argument("--retune", action="store_true")
    args = ap.parse_args(argv)
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
        t_def, t_tuned = compare(spec, dims, tensors, [default, res.plans], args.rounds) \
            if res.plans != default else [None, None]
        if t_def is None:
            t_def = t_tuned = compare(spec, dims, tensors, [default], args.rounds)[0]
        rows.append(dict(name=name, shape=desc, default=label(default), tuned=label(res.plans),
                         default_ms=t_def * 1e3, tuned_ms=t_tuned * 1e3, speedup=t_def / t_tuned,
                         trials=len(res.trials) if not res.from_db else res.record.get("trials"),
                         from_db=res.from_db))
        records.append(res.record)
        print(f"   default {label(default)} {t_def * 1e3:.2f} ms, tuned {label(res.plans)} {t_tuned * 1e3:.2f} ms "
              f"({t_def / t_tuned:.2f}x)", file=sys.stderr, flush=True)
    lines = [f"Tuned ({args.mode}) against default plans, fp32, 2 threads, {cpu_fingerprint()}; medians of "
             f"{args.rounds} interleaved rounds (shared machine: noisy)", "",
             "| shape | default plan | tuned plan | default ms | tuned ms | speedup | trials |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['default']} | {r['tuned']} | {r['default_ms']:.2f} | {r['tuned_ms']:.2f} "
                     f"| {r['speedup']:.2f}x | {r['trials']} |")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "tune.md").write_text(text + "\n")
    (OUT / "tune.json").write_text(json.dumps(dict(device=cpu_fingerprint(), rows=rows,
                                                   lookup_s=ts, lookup_cold_s=cold), indent=1))
    if args.ship:
        dev = cpu_fingerprint().split(":")
        fname = "-".join(x for x in ("cpu", *dev[1].lower().split(), dev[2].replace("+", "-"), dev[3])) + ".json"
        path = Path(args.ship) / fname
        ship = Database(path)
        for rec in records:
            if rec is not None:
                ship.add(rec)
        path.with_name(path.name + ".lock").unlink(missing_ok=True)     # no lock file in the package
        print(f"wrote {len(records)} record(s) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
