"""Where and how a tuning candidate is measured. A runner takes a compiled candidate, runs it
on the tuner's inputs, judges its output with the oracle and times it; LocalRunner does that
in this process, rpc.RPCRunner on remote servers. The interface (what tune() calls):

    width                       candidates measured at once
    name                        what the record's measured_on says
    fingerprint(target)         the device the records are keyed by
    start() / stop(wait)        around the search
    submit(trial, fn, bench)    a Future that fills the Trial (ok, error, seconds, where) or
                                holds the candidate's error
    rounds(final, fns, bench, n) n interleaved rounds over the finalists: append each time
"""
import statistics
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from .device import fingerprint
from .verify import Oracle


def time_call(fn, min_time=0.05, max_reps=25):
    """Median seconds of fn() after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    reps = max(3, min(max_reps, int(min_time / max(one, 1e-6))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts + [one])


def time_cuda(fn, min_time=0.05):
    """Median seconds of fn() on a CUDA device: triton.testing.do_bench (a warm-up, then CUDA
    events around each call with the L2 cache flushed in between, read after a synchronize),
    about min_time seconds of calls."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=max(1.0, 250 * min_time), rep=max(5.0, 1e3 * min_time), return_mode="median") / 1e3


@dataclass
class Bench:
    """What every candidate runs on: the inputs (on the device the candidates run on), the
    oracle that judges the output (on the CPU), and the seconds of calls one timing takes."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    tensors: dict
    oracle: Oracle
    min_time: float

    def time(self, fn, scale=1.0):
        """Median seconds of fn(): synchronized CUDA-event timing for CUDA inputs, else the
        wall clock; scale x min_time seconds of calls."""
        if self.q.is_cuda:
            return time_cuda(fn, scale * self.min_time)
        return time_call(fn, scale * self.min_time)


class LocalRunner:
    """Measures candidates in this process, one at a time (tune's default runner): on the CPU,
    or on the CUDA device the inputs live on."""
    width = 1                   # candidates measured at once
    name = "local"

    def fingerprint(self, target):
        return fingerprint(target)

    def start(self):
        pass

    def stop(self, wait=True):
        pass

    def submit(self, trial, fn, bench):
        """Measure now; a finished Future holding the trial (or the candidate's error)."""
        fut = Future()
        try:
            trial.where = "local"
            out = fn(bench.q, bench.k, bench.v, bench.tensors)
            trial.ok, trial.error = bench.oracle.check(out)
            if trial.ok:
                trial.seconds = bench.time(lambda: fn(bench.q, bench.k, bench.v, bench.tensors))
            fut.set_result(trial)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:
            fut.set_exception(e)
        return fut

    def rounds(self, final, fns, bench, rounds):
        """Interleaved rounds: append each round's time of every candidate of `final` to its
        list (the candidates' order reversed every other round)."""
        for r in range(rounds):
            for cand, times in alternate(final.items(), r):
                if cand in fns:
                    fn = fns[cand]
                    times.append(bench.time(lambda: fn(bench.q, bench.k, bench.v, bench.tensors), 4))


def alternate(items, r):
    """`items` in order on even rounds `r`, reversed on odd ones (so a drift of the machine's
    speed within a round weighs on every candidate alike)."""
    items = list(items)
    return items if r % 2 == 0 else items[::-1]


def make_runner(rpc):
    """The runner for tune's `rpc` argument: None (this process), (host, port[, key]) of an RPC
    tracker, or a runner object."""
    if rpc is None:
        return LocalRunner()
    if isinstance(rpc, (tuple, list)):
        from .rpc import RPCRunner
        return RPCRunner(*rpc)
    if not all(hasattr(rpc, a) for a in ("submit", "rounds", "fingerprint")):
        raise TypeError(f"rpc must be None, (host, port, key) of an RPC tracker or an RPCRunner, got {rpc!r}")
    return rpc
