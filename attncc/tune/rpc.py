"""Measuring tuning candidates on other machines through TVM's RPC tracker (tvm.rpc), so a
search fans out over several servers.

    tune(spec, dims, rpc=("127.0.0.1", 9190, "attncc"))      # or rpc=RPCRunner(host, port, key)
    attncc tune causal --shape 1,8,4096,64 --rpc 127.0.0.1:9190 --rpc-key attncc

The tracker and the servers (the extra attncc[rpc] installs what they need):

    python -m tvm.exec.rpc_tracker --host HOST --port 9190
    TVM_NUM_THREADS=<cores> python -m tvm.exec.rpc_server --tracker HOST:9190 --key attncc

Every candidate is compiled here (its group kernels' shared libraries lie in the TVM cache
directory). Then a thread per server asks the tracker for a session, uploads the libraries,
loads them there, sends the arguments this machine's call would pass (q, k, v, the output,
the row statistics, the tile tables and captured tensors, all compact), runs the candidate
once, brings the output back to be judged by the oracle here, and times each group kernel with
the remote time_evaluator (a warm-up call, then the median of REPEATS repeats; a candidate's
time is the sum over its groups). The final interleaved rounds run on one server, so the
times that decide the winner come from one device.

A remote failure (a server that dies, a library that does not load) fails that candidate with
the server's address in the message; only the default plan's failure stops the search.

Device class: the kernels are compiled for this machine's CPU (LLVM's name for it, e.g.
znver3), so the servers must be of the same class; a server whose CPU LLVM names differently
fails its candidates. Records are keyed by this machine's fingerprint with the servers' core
count (runtime.NumThreads of their TVM pool: half the logical CPUs unless TVM_NUM_THREADS says
otherwise). The servers run the kernels on TVM's thread pool, not torch's OpenMP threads.
"""
import math
import os
import socket
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .device import cpu_fingerprint
from .runner import alternate

DEFAULT_PORT = 9190
DEFAULT_KEY = "attncc"
REPEATS = 5


class RPCUnavailable(RuntimeError):
    """No tracker at the address, or no server under the key (the message says how to start one)."""


class RemoteError(RuntimeError):
    """A candidate's measurement failed on a server (the message names the server)."""


def parse_address(text):
    """'HOST:PORT' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"an RPC tracker address must be HOST:PORT, got {text!r}; e.g. 127.0.0.1:{DEFAULT_PORT}")
    return host, int(port)


def _start_hint(host, port, key):
    return (f"start a tracker there with `python -m tvm.exec.rpc_tracker --host {host} --port {port}` and "
            f"servers with `python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")


class Tracker:
    """One connection to an RPC tracker, speaking its JSON protocol (tvm.rpc.base) with
    timeouts: tvm.rpc.connect_tracker retries a refused connection for a minute."""

    def __init__(self, host, port, key, timeout):
        from tvm.rpc import base
        self.base, self.addr = base, f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self.sock, 4))[0]
        except OSError as e:
            raise RPCUnavailable(f"no RPC tracker at {host}:{port} ({e}); {_start_hint(host, port, key)}, "
                                 "or give the HOST:PORT of a running tracker") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise RPCUnavailable(f"{host}:{port} answers but is not an RPC tracker; {_start_hint(host, port, key)}")

    def summary(self):
        self.base.sendjson(self.sock, [self.base.TrackerCode.SUMMARY])
        code, value = self.base.recvjson(self.sock)
        return value

    def request(self, key, wait_s):
        """(host, port, match key) of a server under `key`, waiting up to wait_s for one to be free."""
        self.sock.settimeout(wait_s)
        self.base.sendjson(self.sock, [self.base.TrackerCode.REQUEST, key, "", 1])
        try:
            code, value = self.base.recvjson(self.sock)
        except socket.timeout:
            raise RPCUnavailable(f"no RPC server under key {key!r} came free at the tracker {self.addr} within "
                                 f"{wait_s:g} s; start more servers or raise wait_s") from None
        except OSError as e:
            raise RPCUnavailable(f"the RPC tracker at {self.addr} dropped the connection ({e})") from None
        return value

    def close(self):
        self.sock.close()


@dataclass
class Job:
    """One candidate's call as a server runs it: per group its library and the indices of its
    arguments in `arrays` (q, k, v, the output and the row statistics are shared by the groups,
    as in TVMProgram.__call__), and where the output is."""
    libs: list
    args: list
    arrays: list
    out: int
    dtype: torch.dtype


def library(comp):
    """The shared library a compiled group kernel was loaded from (build.compile_source's disk
    cache file)."""
    if not comp.path or not os.path.isfile(comp.path):
        raise RuntimeError(f"the compiled library of a group kernel is not in the TVM cache any more ({comp.path}); "
                           "was the cache directory (ATTNCC_CACHE_DIR) cleared during tuning?")
    return comp.path


def prepare(prog, bench):
    """The Job of a TVMProgram on the tuner's inputs: the arguments its __call__ passes each
    group kernel, for compact q, k, v and output (the kernels without the strides variant)."""
    from ..codegen.tiles import RuntimeLayout
    from ..codegen.captured import as_table
    from ..codegen.tvm.backend import operand, output_like
    q, k, v = bench.q, bench.k, bench.v
    qf, kf, vf = (operand(x) for x in (q, k, v))
    B, H, N, _ = q.shape
    o = output_like(qf, v.shape[-1])
    if not all(x.is_contiguous() for x in (qf, kf, vf, o)):
        raise ValueError("RPC measurement runs the compact kernels: q, k, v and the output must be contiguous")
    lse = torch.empty(B, H, N, dtype=torch.float32)
    tabs = [as_table(bench.tensors[n]) if n in bench.tensors else prog.consts[n] for n in prog.names]
    extra = [] if prog.route is None else [torch.empty(B, prog.route.count, prog.route.topk, dtype=torch.int32)]
    arrays, index, libs, args = [], {}, [], []

    def slot(x):
        if id(x) not in index:
            index[id(x)] = len(arrays)
            arrays.append(np.ascontiguousarray(x.detach().numpy()))
        return index[id(x)]
    for (comp, gargs), grp in zip(prog.kernels(False, ()), prog.prog.groups):
        if isinstance(gargs[-1], RuntimeLayout):        # the call's layout decides the key tiles
            layout = gargs[-1]
            gargs = [gargs[0], *layout.cached_tables(gargs[-2], grp, tabs[prog.names.index(layout.name)])]
        libs.append(library(comp))
        args.append([slot(x) for x in (qf, kf, vf, o, lse, *gargs, *extra, *tabs)])
    return Job(libs, args, arrays, index[id(o)], q.dtype)


def _program(fn):
    prog = getattr(fn, "program", None)
    if prog is None or not hasattr(prog, "kernels"):
        raise TypeError("measuring through RPC needs the TVM backend's build: a fn with .program, a TVMProgram "
                        f"(search.tvm_build sets it); this build returned {fn!r}")
    return prog


class RPCRunner:
    """Measures tuning candidates on the RPC servers that the tracker at host:port hands out
    under `key`: one candidate per server registered there at the start, each in its own
    thread and session (tune's runner interface: runner.py). session_timeout bounds one
    session (the server ends it), wait_s the wait for a free server, timeout a connection to
    the tracker."""

    def __init__(self, host="127.0.0.1", port=DEFAULT_PORT, key=DEFAULT_KEY, *, session_timeout=600.0,
                 wait_s=600.0, timeout=5.0):
        self.host, self.port, self.key = host, int(port), key
        self.session_timeout, self.wait_s, self.timeout = session_timeout, wait_s, timeout
        self.name = f"rpc {host}:{self.port} key {key}"
        self.width, self.device, self.cpu, self.pool = 1, None, None, None

    def tracker(self):
        return Tracker(self.host, self.port, self.key, self.timeout)

    def servers(self):
        """The number of servers registered under the key (free or busy); none is an error."""
        tr = self.tracker()
        try:
            info = tr.summary()
        finally:
            tr.close()
        keys = [s.get("key", "").removeprefix("server:") for s in info.get("server_info", []) if s.get("key")]
        if self.key not in keys:
            raise RPCUnavailable(f"the RPC tracker at {self.host}:{self.port} has no server under key {self.key!r} "
                                 f"(its keys: {sorted(set(keys)) or 'none'}); start one with `python -m "
                                 f"tvm.exec.rpc_server --tracker {self.host}:{self.port} --key {self.key}`")
        return keys.count(self.key)

    @contextmanager
    def session(self):
        """(an RPC session, its server's host:port) from the tracker."""
        import tvm.rpc
        tr = self.tracker()
        try:
            host, port, match = tr.request(self.key, self.wait_s)
        finally:
            tr.close()
        where = f"{host}:{port}"
        try:
            sess = tvm.rpc.connect(host, port, match, session_timeout=self.session_timeout)
        except Exception as e:
            raise RemoteError(f"RPC server {where}: cannot open a session: {e}") from None
        yield sess, where

    def fingerprint(self, target):
        """The servers' device: this machine's fingerprint with their TVM thread count, once one
        server confirms that LLVM names its CPU as this machine's."""
        if target != "tvm":
            raise NotImplementedError(f"RPC measurement runs the TVM CPU backend's kernels, not target {target!r}")
        if self.device is None:
            from tvm.target import codegen
            self.servers()
            self.cpu = codegen.llvm_get_system_cpu() or "generic"
            got = {}
            failure = self.on_server(lambda sess, where: got.update(cpu=self._probe(sess), where=where))
            if failure:
                raise RemoteError(failure)
            (cpu, threads), where = got["cpu"], got["where"]
            if cpu != self.cpu:
                raise RPCUnavailable(f"RPC server {where} runs a {cpu!r} CPU, this machine a {self.cpu!r} one: the "
                                     "kernels are compiled for this machine's CPU, so the servers must be of its "
                                     "class; tune on a machine like the servers, or use servers like this one")
            self.device = f"{cpu_fingerprint().rsplit(':', 1)[0]}:{threads}c"
        return self.device

    @staticmethod
    def _probe(sess):
        return sess.get_function("target.llvm_get_system_cpu")(), int(sess.get_function("runtime.NumThreads")())

    def on_server(self, work):
        """work(session, its host:port) on a server from the tracker; a failure message, or None.
        The error is returned as text so that nothing of the session stays reachable from it:
        the server is free again as soon as the work is done (a kept traceback would hold it)."""
        where = None
        try:
            with self.session() as (sess, where):
                work(sess, where)
            return None
        except (RemoteError, RPCUnavailable) as e:
            return str(e)
        except Exception as e:
            return f"RPC server {where}: {type(e).__name__}: {str(e).strip()[:400]}"

    def start(self):
        self.width = self.servers()
        self.pool = ThreadPoolExecutor(self.width, thread_name_prefix="attncc-rpc")

    def stop(self, wait=True):
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)
            self.pool = None

    def submit(self, trial, fn, bench):
        job = prepare(_program(fn), bench)          # here: it may compile, and it reads the cache
        return self.pool.submit(self._measure, trial, job, bench)

    def _load(self, sess, job):
        """Upload, load and run a Job once: (device, [(module, remote args)] per group, output)."""
        import tvm
        cpu = sess.get_function("target.llvm_get_system_cpu")()
        if cpu != self.cpu:
            raise RuntimeError(f"it runs a {cpu!r} CPU, the kernels are compiled for this machine's {self.cpu!r}: "
                               "use servers of this machine's CPU class")
        dev = sess.cpu()
        for path in dict.fromkeys(job.libs):
            sess.upload(path)
        mods = [sess.load_module(os.path.basename(p)) for p in job.libs]
        arrays = [tvm.runtime.tensor(a, dev) for a in job.arrays]
        calls = [(m, [arrays[i] for i in idx]) for m, idx in zip(mods, job.args)]
        for m, a in calls:
            m["main"](*a)
        return dev, calls, torch.from_numpy(arrays[job.out].numpy()).to(job.dtype)

    @staticmethod
    def _time(dev, calls, min_time):
        """Seconds per call of a loaded candidate: the sum of its groups' medians."""
        ms = max(1, math.ceil(1000 * min_time / REPEATS))
        return float(sum(m.time_evaluator("main", dev, number=1, repeat=REPEATS, min_repeat_ms=ms)(*a).median
                         for m, a in calls))

    def _measure(self, trial, job, bench):
        """In a pool thread: one candidate on one server."""
        def work(sess, where):
            trial.where = where
            dev, calls, out = self._load(sess, job)
            trial.ok, trial.error = bench.oracle.check(out)
            if trial.ok:
                trial.seconds = self._time(dev, calls, bench.min_time)
        failure = self.on_server(work)
        if failure:
            raise RemoteError(failure)
        return trial

    def rounds(self, final, fns, bench, rounds):
        """The interleaved rounds, all on one server; if they fail, a warning and no round times
        (tune then keeps the best first measurement)."""
        if not rounds:
            return
        jobs = {c: prepare(_program(fns[c]), bench) for c in final if c in fns}

        def work(sess, where):
            loaded = {c: self._load(sess, j)[:2] for c, j in jobs.items()}
            for r in range(rounds):
                for c, (dev, calls) in alternate(loaded.items(), r):
                    final[c].append(self._time(dev, calls, 4 * bench.min_time))
        failure = self.on_server(work)
        if failure:
            warnings.warn(f"the final rounds failed ({failure}); keeping the best first measurement", RuntimeWarning)
            for times in final.values():
                times.clear()
