"""Tuning through TVM's RPC tracker: a tracker and two RPC servers on 127.0.0.1 (in this
process's children, torn down after the module), real compiles, real remote timing. The
search fans out over both servers, a wrong kernel is rejected by the oracle here, a remote
failure fails only its candidate, and a missing tracker or key says how to start one."""
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import attncc as ac
import attncc.codegen.tvm.build  # noqa: F401  (sets this process's TVM_NUM_THREADS before the servers start)
from attncc.ir.program import Dims
from attncc.passes.pipeline import lower
from attncc.tune import Database, search_space, tune, workload_hash
from attncc.tune import rpc
from attncc.tune.device import cpu_fingerprint
from attncc.tune.rpc import RPCRunner, RPCUnavailable
from attncc.tune.search import make_inputs, tvm_build
from attncc.tune.verify import Oracle

HOST = "127.0.0.1"              # loopback only
KEY = "attncc-test"
CAUSAL = ac.Attention(ac.causal())
FULL = ac.Attention()
DIMS = Dims(1, 2, 256, 256, 32, 32)
SMALL = Dims(1, 2, 64, 64, 16, 16)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def registered(port):
    try:
        return RPCRunner(HOST, port, KEY).servers()
    except RPCUnavailable:
        return 0


@pytest.fixture(scope="module")
def servers():
    """(tracker port, {host:port of the two servers}): a tracker and two servers under KEY,
    each server's TVM pool one thread (2 cores here); always torn down."""
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker
    tracker, procs, old = None, [], os.environ.get("TVM_NUM_THREADS")
    try:
        port = free_port()
        tracker = Tracker(HOST, port=port, port_end=port + 20, silent=True)
        os.environ["TVM_NUM_THREADS"] = "1"         # what the servers' processes inherit
        try:
            with ThreadPoolExecutor(2) as ex:
                procs += ex.map(lambda _: Server(HOST, port=tracker.port + 20, port_end=tracker.port + 60, key=KEY,
                                                 tracker_addr=(HOST, tracker.port), silent=True), range(2))
        finally:
            if old is None:
                os.environ.pop("TVM_NUM_THREADS")
            else:
                os.environ["TVM_NUM_THREADS"] = old
        deadline = time.time() + 30
        while registered(tracker.port) < 2 and time.time() < deadline:
            time.sleep(0.2)
        yield tracker.port, {f"{HOST}:{s.port}" for s in procs}
    finally:
        for s in procs:
            s.terminate()
        if tracker is not None:
            tracker.terminate()


def runner(port, key=KEY):
    return RPCRunner(HOST, port, key, session_timeout=120, wait_s=60)   # a hang fails the test, not CI


def test_tune_through_rpc_fans_out_and_the_winner_matches_the_oracle(servers, tmp_path):
    port, addrs = servers
    db = Database(tmp_path / "records.json")
    res = tune(CAUSAL, DIMS, trials=4, rpc=runner(port), db=db, progress=False, min_time=0.02, rounds=2)
    assert all(t.ok for t in res.trials), [t.failure for t in res.trials]
    assert {t.where for t in res.trials} == addrs          # both servers measured candidates
    assert res.seconds > 0 and res.default_seconds > 0
    # the winner, built here again, against the fp64 oracle
    q, k, v = make_inputs(DIMS, torch.float32)
    fn, _ = tvm_build(CAUSAL, DIMS, "float32", {}, res.plans)
    assert Oracle(lower(CAUSAL, DIMS, "float32", "tvm").stages[0][1], q, k, v).check(fn(q, k, v, {}))[0]
    # keyed by the servers' device: this CPU class, their one-thread pools
    device = cpu_fingerprint().rsplit(":", 1)[0] + ":1c"
    assert res.record["device"] == device and res.record["measured_on"] == f"rpc {HOST}:{port} key {KEY}"
    hit = db.lookup(workload_hash(CAUSAL, DIMS, "tvm"), "tvm", device, "float32", (1, 2, 256, 256, 32, 32))
    assert hit.match == "exact" and hit.plans == res.plans


def test_rpc_rejects_a_wrong_output_and_a_remote_failure_fails_only_its_candidate(servers, tmp_path, monkeypatch):
    """Candidate 1 is a real kernel of the wrong spec (causal for a full spec: faster, wrong);
    candidate 2's library is junk that the server cannot load."""
    port, addrs = servers
    space = search_space(lower(FULL, SMALL, target="tvm").program, "fast")
    faulty, broken = space.candidates[1], space.candidates[2]
    progs = {}

    def build(plans):
        fn, s = tvm_build(CAUSAL if plans == faulty else FULL, SMALL, "float32", {}, plans)
        progs[plans] = fn.program
        return fn, s
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a shared library")
    real = rpc.prepare

    def prepare(prog, bench):
        job = real(prog, bench)
        if prog is progs.get(broken):
            job.libs = [str(junk)] * len(job.libs)
        return job
    monkeypatch.setattr(rpc, "prepare", prepare)
    res = tune(FULL, SMALL, trials=4, build=build, rpc=runner(port), save=False, progress=False, min_time=0.01,
               rounds=1)
    bad = {t.plans: t for t in res.trials if not t.ok}
    assert set(bad) == {faulty, broken}
    assert "wrong output" in bad[faulty].failure and bad[faulty].where in addrs
    assert bad[broken].failure.startswith(f"RemoteError: RPC server {HOST}:") and bad[broken].where in addrs
    assert res.plans not in (faulty, broken) and len(res.trials) == 4
    # the default must work: its remote failure stops the search, naming the server
    progs.clear()
    broken = space.candidates[0]
    with pytest.raises(rpc.RemoteError, match=rf"RPC server {HOST}:\d+: "):
        tune(FULL, SMALL, trials=1, build=build, rpc=runner(port), save=False, progress=False, min_time=0.01)


def test_a_missing_tracker_or_key_says_how_to_start_one(servers):
    port = free_port()
    with pytest.raises(RPCUnavailable, match=rf"no RPC tracker at {HOST}:{port} .*`python -m tvm.exec.rpc_tracker "
                                             rf"--host {HOST} --port {port}`.*--tracker {HOST}:{port} --key {KEY}"):
        tune(CAUSAL, SMALL, trials=2, rpc=(HOST, port, KEY), save=False)
    with pytest.raises(RPCUnavailable, match=rf"no server under key 'nokey' \(its keys: \['{KEY}'\]\).*--key nokey"):
        tune(CAUSAL, SMALL, trials=2, rpc=runner(servers[0], "nokey"), save=False)


def test_cli_tune_through_rpc(servers, tmp_path):
    env = dict(os.environ, ATTNCC_TUNE_DB=str(tmp_path / "records.json"))
    cli = [str(Path(sys.executable).parent / "attncc"), "tune", "causal", "--shape", "1,1,64,16", "--trials", "2"]
    r = subprocess.run(cli + ["--rpc", f"{HOST}:{servers[0]}", "--rpc-key", KEY], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"measured on RPC servers under key '{KEY}'" in r.stdout and "RPC server(s): 127.0.0.1:" in r.stdout
    r = subprocess.run(cli + ["--rpc", f"{HOST}:{free_port()}"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "attncc tune: no RPC tracker at 127.0.0.1:" in r.stderr
    assert "python -m tvm.exec.rpc_tracker" in r.stderr
