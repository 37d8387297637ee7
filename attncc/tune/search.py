"""The autotuner: compile the candidates of the search space, check each against the fp64
oracle, time the ones that pass on this machine, record the winner in the database.

    result = tune(spec, dims, "float32", mode="fast", budget_s=60)
    result = tune(spec, dims, "float16", target="sm_90")     # Triton plans, on a CUDA GPU

Targets: "tvm" (the CPU kernels, timed on this CPU) and the Triton plan targets "sm_80" and
"sm_90" (timed on this machine's CUDA GPU, which must be of that arch; without a GPU they
raise: Triton's interpreter is never timed). GPU inputs live on the device, the oracle on the
CPU.

Timing: one warm-up call, then the median of repeated calls (at least `min_time` seconds of
them; on a GPU, triton.testing.do_bench: CUDA events, synchronized); the default and the best
few are timed again in interleaved rounds at the end (4 x min_time per round, the order of the
candidates reversed every other round) and the winner is the finalist whose rounds' paired
ratios (the default's time over its own, round by round) have the highest median, provided
that median shows it MARGIN (3%) faster; otherwise the default plans stay. Pairing the rounds
keeps a slow spell of a shared machine from deciding. A candidate whose output misses the
oracle's bound never wins.
Ctrl-C stops the search and keeps (and records) the best plan found so far.

Where candidates run is the runner's business: LocalRunner (this process, the default) or
rpc.RPCRunner (remote servers from a TVM RPC tracker, several candidates at once); either way a
candidate is compiled here and checked against the oracle here.
"""
import math
import multiprocessing
import os
import pickle
import signal
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

import torch

from ..passes.pipeline import lower
from ..progress import progress_bar
from .build import BUILDERS, GPU_TARGETS, make_inputs, need_gpu, plan_label, triton_build, tvm_build  # noqa: F401
from .db import lookup, make_record, user_database, workload_hash
from .runner import Bench, make_runner, time_call, time_cuda  # noqa: F401  (bench/tune.py)
from .space import MODES, search_space
from .verify import Oracle

# per mode: trials and seconds when the caller gives no budget
BUDGETS = {"fast": dict(trials=12, seconds=120.0), "full": dict(trials=None, seconds=900.0)}
FINALISTS = 3
# a plan replaces the default only when its final median beats the default's by this much: on
# a loaded machine smaller differences are noise, and the default is the known quantity
MARGIN = 0.03


@dataclass
class Trial:
    plans: tuple
    seconds: float = math.nan        # median time per call
    error: float = math.nan          # max abs error against the fp64 oracle
    ok: bool = False                 # within the oracle's bound
    compile_s: float = 0.0
    failure: str = ""
    where: str = ""                  # who measured it: "local", or an RPC server's host:port


@dataclass
class TuneResult:
    """What a tuning run found. `plans` is the winner (the default plans when nothing beat
    them); `trials` every candidate tried, in order; `record` what was stored."""
    plans: tuple
    seconds: float
    default_seconds: float
    trials: list = field(default_factory=list)
    pruned: int = 0
    space: int = 0
    interrupted: bool = False
    record: dict | None = None
    from_db: bool = False

    @property
    def speedup(self):
        return self.default_seconds / self.seconds

    @property
    def rejected(self):
        return [t for t in self.trials if not t.ok]


def _worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle


def _precompile(spec, dims, dtype, tensors, plans, target):
    """In a worker process: compile a candidate into the shared disk cache."""
    try:
        return BUILDERS[target](spec, dims, dtype, tensors, plans, target)[1], ""
    except Exception as e:                       # reported as the candidate's failure
        return 0.0, f"{type(e).__name__}: {e}"


def _status(best, target, note=""):
    """The progress bar's label: the best time so far and its plan, and what just happened."""
    best_s = f"best {best.seconds * 1e3:.3f} ms ({plan_label(best.plans, target)})" if best else "best -"
    return f"{best_s} {note}".rstrip()


def _check_budget(budget_s, trials):
    if budget_s is not None and not (isinstance(budget_s, (int, float)) and budget_s > 0):
        raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise ValueError(f"trials must be a positive int (candidates to measure, the default plan included), "
                         f"got {trials!r}")


class _Interrupts:
    """Notes Ctrl-C while the search runs (main thread only). TVM's compiler checks signals
    from C++ and may hand the KeyboardInterrupt back as an ordinary error, which would only
    fail one candidate; the flag makes the search stop after it all the same."""

    def __init__(self):
        self.hit, self.prev = False, None

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            self.prev = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.hit = True
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.prev is not None:
            signal.signal(signal.SIGINT, self.prev)


def tune(spec, dims, dtype="float32", tensors=None, *, mode="fast", budget_s=None, trials=None, target="tvm",
         jobs=1, db=None, save=True, progress=None, build=None, min_time=0.05, rounds=5, retune=False, rpc=None):
    """Tune `spec` at `dims` and `dtype` for `target`; returns a TuneResult and stores the
    winner in `db` (the user database by default) unless save=False.

    mode: "fast" (the default's neighbours) or "full" (the whole space); budget_s / trials
    stop the search early (the default plan always counts as the first trial). jobs > 1
    compiles candidates in that many worker processes (target "tvm"). build(plans) -> (fn,
    seconds) replaces the backend's compile (for other runners, and for tests). The GPU
    targets "sm_80" / "sm_90" tune on the current CUDA device (need_gpu: an error without one
    unless build= is given); the inputs and captured tensors are moved there, the oracle
    judges on the CPU, and records are keyed by the GPU's fingerprint. An already-tuned workload
    returns its record without compiling anything unless retune=True. rpc=(host, port, key)
    measures on the servers an RPC tracker hands out under `key`, one candidate per free
    server at a time, the final rounds too (rpc.py; the record is keyed by their device), or
    rpc= an RPCRunner.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_budget(budget_s, trials)
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    budget = BUDGETS[mode]
    budget_s = budget["seconds"] if budget_s is None else budget_s
    trials = budget["trials"] if trials is None else trials
    tensors = dict(tensors or {})
    gpu = target in GPU_TARGETS
    if gpu and build is None:
        where = need_gpu(target)        # before the fingerprint: no GPU is this error, not torch's
    else:
        where = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
    db = user_database() if db is None else db
    runner = make_runner(rpc)
    workload, device = workload_hash(spec, dims, target), runner.fingerprint(target)
    shape = (dims.B, dims.H, dims.N, dims.M, dims.d, dims.dv)
    if not retune:
        hit = lookup(workload, target, device, dtype, shape, dbs=[db])
        if hit is not None and hit.match == "exact":
            rec = hit.record
            return TuneResult(hit.plans, rec["time_s"], rec.get("default_time_s") or rec["time_s"], record=rec,
                              from_db=True)
    t_start = time.perf_counter()
    low = lower(spec, dims, dtype, target)
    space = search_space(low.program, mode)
    cands = list(space.candidates[:trials] if trials else space.candidates)
    q, k, v = make_inputs(dims, getattr(torch, dtype))
    oracle = Oracle(low.stages[0][1], q, k, v, {n: x.cpu() for n, x in tensors.items()})
    tensors = {n: x.to(where) for n, x in tensors.items()}
    bench = Bench(*(x.to(where) for x in (q, k, v)), tensors, oracle, min_time)
    if build is None:
        builder = BUILDERS.get(target)
        if builder is None:
            raise NotImplementedError(f"no tuning runner for target {target!r}; tunable: {', '.join(BUILDERS)}")
        build = lambda plans: builder(spec, dims, dtype, tensors, plans, target)     # noqa: E731
        pool_ok = jobs > 1 and not gpu and _picklable(spec, tensors)
    else:
        pool_ok = False
    bar = progress_bar(len(cands), prefix="tuning ", label=_status(None, target),
                       enabled=sys.stderr.isatty() if progress is None else bool(progress),
                       stream=progress if hasattr(progress, "write") else None, width=20)
    done, fns, pending, interrupted = [], {}, {}, False
    best = None
    pool = (ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
            if pool_ok else None)   # spawn: forking a process that runs TVM and torch threads is unsafe
    ctrl_c = _Interrupts()

    def begin(cand, pre):
        """Compile a candidate here and hand it to the runner."""
        t, fn = Trial(cand), None
        try:
            if pre.get(cand, (0, ""))[1]:
                raise RuntimeError(pre[cand][1])
            fn, t.compile_s = build(cand)
            t.compile_s += pre.get(cand, (0.0, ""))[0]
            fut = runner.submit(t, fn, bench)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:          # a failed compile fails the candidate like a failed run
            fut = Future()
            fut.set_exception(e)
        pending[fut] = (t, fn)

    def finish(fut):
        nonlocal best
        t, fn = pending.pop(fut)
        try:
            fut.result()
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:          # a candidate that fails to build or run is a failed trial
            if ctrl_c.hit:              # Ctrl-C surfaced as a compiler error: not the plan's fault
                raise KeyboardInterrupt from e
            if t.plans == cands[0]:
                raise                   # the default plan must work: not a tuning problem
            t.ok, t.failure = False, f"{type(e).__name__}: {e}"[:500]
        if not t.ok and not t.failure:
            t.failure = f"wrong output: max error {t.error:.3e} > bound {bench.oracle.limit:.3e}"
        done.append(t)
        if t.ok:
            fns[t.plans] = fn
            if best is None or t.seconds < best.seconds:
                best = t
        bar.set_description_str(_status(best, target, "" if t.ok else
                                         f"rejected {plan_label(t.plans, target)}: {t.failure[:80]}"), refresh=False)
        bar.update()
        if ctrl_c.hit:
            raise KeyboardInterrupt

    def drain(full):
        """Collect finished measurements: until a runner slot is free, or (full) all of them."""
        while pending and (full or len(pending) >= runner.width):
            for fut in wait(list(pending), return_when=FIRST_COMPLETED).done:
                finish(fut)

    try:
        ctrl_c.__enter__()
        runner.start()
        try:
            step = 2 * jobs if pool else 1
            for start in range(0, len(cands), step):
                batch = cands[start:start + step]
                pre = {}
                if pool:        # compile the batch in the workers, then time it with them idle
                    futs = {c: pool.submit(_precompile, spec, dims, dtype, tensors, c, target) for c in batch
                            if c != cands[0]}     # the default builds here: its errors are the user's
                    pre = {c: f.result() for c, f in futs.items()}
                for cand in batch:
                    begin(cand, pre)
                    drain(full=False)
                    if time.perf_counter() - t_start > budget_s:
                        raise _Budget
        except _Budget:
            pass
        drain(full=True)                # the candidates still being measured
    except KeyboardInterrupt:
        interrupted = True
    finally:
        ctrl_c.__exit__()
        runner.stop(wait=not interrupted)
        if pool:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        bar.close()
    if best is None:
        raise RuntimeError("tuning found no candidate that compiles and matches the reference "
                           + ("(interrupted before the first finished)" if interrupted else
                              "; failures: " + "; ".join(t.failure for t in done[:3])))
    default = cands[0]
    final = {default: [], best.plans: []}
    if not interrupted:
        for t in sorted((t for t in done if t.ok), key=lambda t: t.seconds)[:FINALISTS]:
            final.setdefault(t.plans, [])
        try:        # interleaved rounds over the default and the finalists
            runner.rounds(final, fns, bench, rounds if len(final) > 1 else 0)
        except KeyboardInterrupt:
            interrupted = True
    medians = {c: statistics.median(ts) for c, ts in final.items() if ts}
    first = {t.plans: t.seconds for t in done if t.ok}
    if medians and all(c in medians for c in final if c in fns):
        win = pick({c: ts for c, ts in final.items() if ts}, default)
        default_s = medians.get(default, first.get(default, math.nan))
        win_s = medians[win]
    else:
        win, win_s = best.plans, best.seconds
        default_s = first.get(default, math.nan)
    res = TuneResult(win, win_s, default_s, done, len(space.pruned), len(space), interrupted)
    if save:
        res.record = make_record(workload=workload, target=target, device=device, dtype=dtype, dims=dims,
                                 plans=win, time_s=win_s, default_time_s=None if math.isnan(default_s) else default_s,
                                 spec=repr(spec)[:300], mode=mode, trials=len(done),
                                 rejected=len([t for t in done if not t.ok]), interrupted=interrupted,
                                 measured_on=runner.name)
        db.add(res.record)
    return res


def pick(rounds, default):
    """The winner of the final rounds ({candidate: its time in each round}): the candidate whose
    rounds' paired ratios (the default's time over its own) have the highest median, if that
    median shows it MARGIN faster; otherwise the default (without the default's rounds: the
    lowest median)."""
    if default not in rounds:
        return min(rounds, key=lambda c: statistics.median(rounds[c]))
    gain = {c: statistics.median(d / t for d, t in zip(rounds[default], ts)) for c, ts in rounds.items()}
    win = max(gain, key=gain.get)
    return win if gain[win] >= 1 / (1 - MARGIN) else default


class _Budget(Exception):
    pass


def _picklable(*objs):
    try:
        pickle.dumps(objs)
        return True
    except Exception:
        return False


def default_jobs():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
