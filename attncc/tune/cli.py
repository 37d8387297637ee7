"""`attncc tune` and `attncc db ...`: the command-line side of tuning (attncc/cli.py wires
these subcommands in)."""
import json
import runpy
import sys
from pathlib import Path

import torch

from ..dsl.spec import Attention
from ..ir.plan import TilePlan
from ..ir.program import Dims
from . import db as tdb
from .build import GPU_TARGETS, need_gpu, plan_label
from .device import fingerprint, gpu_fingerprint
from .rpc import DEFAULT_KEY, RemoteError, RPCRunner, RPCUnavailable, parse_address

DTYPES = ("float32", "float16", "bfloat16")
TARGETS = ("tvm",) + GPU_TARGETS


def parse_shape(text):
    """'B,H,N,M,d,dv' or 'B,H,N,d' (M = N, dv = d) -> Dims."""
    try:
        xs = [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        xs = []
    if len(xs) == 4:
        xs = [xs[0], xs[1], xs[2], xs[2], xs[3], xs[3]]
    if len(xs) != 6 or min(xs) < 1:
        raise SystemExit(f"attncc tune: --shape must be B,H,N,M,d,dv or B,H,N,d (positive ints), got {text!r}; "
                         "e.g. --shape 1,8,4096,64")
    return Dims(*xs)


def load_workload(name, var="spec"):
    """(name, spec, dims or None, tensors(dims, generator) or None) from a catalogue entry
    name or a Python file defining `spec` (and optionally `dims`, `tensors`)."""
    if name.endswith(".py") or Path(name).is_file():
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"attncc tune: no such file {name!r}")
        ns = runpy.run_path(str(path))
        spec = ns.get(var)
        if not isinstance(spec, Attention):
            raise SystemExit(f"attncc tune: {name} must define {var} = ac.Attention(...), "
                             f"got {type(spec).__name__}; pick another variable with --spec-var")
        dims = ns.get("dims")
        if dims is not None and not isinstance(dims, Dims):
            dims = Dims(*dims)
        return path.stem, spec, dims, ns.get("tensors")
    from attncc.ops import CATALOGUE
    for e in CATALOGUE:
        if e.name == name:
            return e.name, e.spec, e.dims, e.tensors
    raise SystemExit(f"attncc tune: {name!r} is neither a Python file nor a catalogue entry; entries: "
                     + ", ".join(e.name for e in CATALOGUE))


def cmd_tune(args):
    from .search import tune
    name, spec, dims, make_tensors = load_workload(args.workload, args.spec_var)
    dims = parse_shape(args.shape) if args.shape else dims
    if dims is None:
        raise SystemExit(f"attncc tune: {args.workload} defines no dims; pass --shape B,H,N,M,d,dv")
    tensors = {}
    if spec.captured():
        if make_tensors is None:
            raise SystemExit(f"attncc tune: the spec reads tensors {list(spec.captured())}; define "
                             "tensors(dims, generator) -> dict in the file")
        tensors = make_tensors(dims, torch.Generator().manual_seed(0))
    target, dtype = args.target, args.dtype or ("float16" if args.target in GPU_TARGETS else "float32")
    torch.set_num_threads(args.threads)
    runner = _rpc_runner(args)
    if target in GPU_TARGETS:
        if runner is not None:
            raise SystemExit(f"attncc tune: --rpc measures the TVM CPU backend's kernels on remote CPUs, not "
                             f"--target {target}; tune GPU plans on the GPU machine itself, without --rpc")
        try:
            need_gpu(target)
        except (RuntimeError, ValueError) as e:
            raise SystemExit(f"attncc tune: {e}") from None
    where = "this machine" if runner is None else f"RPC servers under key {runner.key!r} at {runner.host}:{runner.port}"
    try:
        device = fingerprint(target) if runner is None else runner.fingerprint(target)
        print(f"attncc tune: {name} {spec!r}\n  shape B{dims.B} H{dims.H} N{dims.N} M{dims.M} d{dims.d} dv{dims.dv}, "
              f"{dtype}, target {target}, mode {args.mode}, measured on {where}, device {device}", flush=True)
        res = tune(spec, dims, dtype, tensors, mode=args.mode, budget_s=args.budget, trials=args.trials,
                   target=target, jobs=args.jobs, progress=True, retune=args.retune, rpc=runner)
    except KeyboardInterrupt:
        print("interrupted before the first candidate finished: nothing recorded", file=sys.stderr)
        return 130
    except (RPCUnavailable, RemoteError) as e:
        raise SystemExit(f"attncc tune: {e}") from None
    if res.from_db:
        print(f"already tuned (use --retune to tune again): {res.seconds * 1e3:.3f} ms with "
              f"{_plans(res.plans, target)} in {tdb.user_path()}")
        return 0
    bad = res.rejected
    print(f"{len(res.trials)} of {res.space} candidates measured ({res.pruned} pruned by the fast-memory model"
          f"{f', {len(bad)} rejected' if bad else ''}){'; interrupted: kept the best found' if res.interrupted else ''}")
    for t in bad:
        print(f"  rejected {_plans(t.plans, target)}: {t.failure}")
    if runner is not None:
        servers = sorted({t.where for t in res.trials if t.where})
        print(f"measured on {len(servers)} RPC server(s): " + ", ".join(
            f"{s} ({sum(t.where == s for t in res.trials)})" for s in servers))
    print(f"default {res.default_seconds * 1e3:.3f} ms, best {res.seconds * 1e3:.3f} ms "
          f"({res.speedup:.2f}x) with {_plans(res.plans, target)}\nrecorded in {tdb.user_path()}")
    return 0


def _rpc_runner(args):
    """The RPCRunner of --rpc HOST:PORT --rpc-key KEY, or None (measure here)."""
    if args.rpc is None:
        if args.rpc_key is not None:
            raise SystemExit("attncc tune: --rpc-key needs --rpc HOST:PORT (the RPC tracker's address)")
        return None
    try:
        host, port = parse_address(args.rpc)
    except ValueError as e:
        raise SystemExit(f"attncc tune: --rpc: {e}") from None
    return RPCRunner(host, port, args.rpc_key or DEFAULT_KEY)


def _plans(plans, target="tvm"):
    if target in GPU_TARGETS:
        return "; ".join(f"block_m={p.block_m} block_n={p.block_n} num_warps={p.num_warps} "
                         f"num_stages={p.num_stages}" for p in plans)
    return "; ".join(f"block_m={p.block_m} block_n={p.block_n} unroll={p.unroll} vector={p.vector}" for p in plans)


def _this_devices():
    """The fingerprints of this machine's devices: its CPU, and its GPU when torch sees one."""
    devs = {fingerprint("tvm")}
    if torch.cuda.is_available():
        devs.add(gpu_fingerprint(torch.cuda.current_device()))
    return devs


def _all_records():
    rows = []
    for db in tdb.databases():
        db._load()
        src = "user" if not db.readonly else f"shipped:{db.path.name}"
        rows += [(src, r) for r in db.records]
    return rows


def cmd_db(args):
    return {"list": db_list, "show": db_show, "export": db_export, "clear": db_clear}[args.db_cmd](args)


def db_list(args):
    rows = _all_records()
    this = _this_devices()
    print(f"user database: {tdb.user_path()}\nthis device: {', '.join(sorted(this))}")
    if not rows:
        print("no records")
        return 0
    print("| # | source | spec | shape B,H,N,M,d,dv | dtype | device | plans | ms | default ms |")
    print("|" + "---|" * 9)
    for n, (src, r) in enumerate(rows):
        dev = "this" if r["device"] in this else r["device"]
        dflt = r.get("default_time_s")
        plans = plan_label([TilePlan(**p) for p in r["plans"]], r["target"]).replace(" | ", " / ")
        print(f"| {n} | {src} | {r.get('spec', r['workload'])[:60]} | {','.join(map(str, r['shape']))} | {r['dtype']} "
              f"| {dev} | {plans} "
              f"| {r['time_s'] * 1e3:.3f} | {'' if dflt is None else f'{dflt * 1e3:.3f}'} |")
    return 0


def db_show(args):
    rows = _all_records()
    sel = args.record
    hits = [r for n, (_, r) in enumerate(rows) if str(n) == sel or r["workload"].startswith(sel)]
    if not hits:
        raise SystemExit(f"attncc db show: no record {sel!r}; give a number from `attncc db list` or a workload "
                         "hash prefix")
    print(json.dumps(hits, indent=1, sort_keys=True))
    return 0


def db_export(args):
    this = _this_devices()
    recs = [r for src, r in _all_records() if src == "user" and (args.all_devices or r["device"] in this)]
    text = json.dumps({"format": tdb.FORMAT, "records": recs}, indent=1, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {len(recs)} record(s) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def db_clear(args):
    n = tdb.user_database().clear()
    print(f"removed {n} record(s) from {tdb.user_path()} (shipped records are not touched)")
    return 0


def add_parsers(sub):
    p = sub.add_parser("tune", help="tune a spec's plans on this machine and record the winner")
    p.add_argument("workload", help="a catalogue entry (attncc catalogue) or a Python file defining spec "
                                    "(and optionally dims, tensors(dims, generator))")
    p.add_argument("--shape", help="B,H,N,M,d,dv or B,H,N,d (default: the entry's or the file's dims)")
    p.add_argument("--dtype", choices=DTYPES, help="default: float32 for --target tvm, float16 for a GPU target")
    p.add_argument("--target", default="tvm", choices=TARGETS,
                   help="tvm: the TVM CPU kernels, timed on this CPU; sm_80 / sm_90: the Triton plans of that "
                        "GPU arch, timed on this machine's CUDA GPU, which must be of that arch (default: tvm)")
    p.add_argument("--mode", default="fast", choices=("fast", "full"))
    p.add_argument("--budget", type=float, help="seconds (default: 120 fast, 900 full)")
    p.add_argument("--trials", type=int, help="candidates to measure, the default plan included")
    p.add_argument("--jobs", type=int, default=1,
                   help="compile candidates in this many processes (target tvm; GPU candidates compile in turn)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--spec-var", default="spec", help="the spec's variable name in a Python file")
    p.add_argument("--retune", action="store_true", help="tune even when the database has this workload")
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure on the servers of this TVM RPC tracker (several "
                                                       "candidates at once; they must be of this machine's CPU class)")
    p.add_argument("--rpc-key", metavar="KEY", help="the servers' key at the tracker (default: attncc)")
    p.set_defaults(fn=cmd_tune)
    p = sub.add_parser("db", help="the schedule database: list | show | export | clear")
    dsub = p.add_subparsers(dest="db_cmd", required=True)
    dsub.add_parser("list", help="the records (user, then shipped)")
    q = dsub.add_parser("show", help="one record's JSON")
    q.add_argument("record", help="a number from `attncc db list`, or a workload hash prefix")
    q = dsub.add_parser("export", help="the user records of this device as a schedules/ file")
    q.add_argument("-o", "--output", help="file to write (default: stdout)")
    q.add_argument("--all-devices", action="store_true")
    dsub.add_parser("clear", help="remove the user records")
    p.set_defaults(fn=cmd_db)
