"""The autotuner and the schedule database: the search space and its fast-memory pruning,
verification of candidates (a wrong kernel never wins), database keys and fallback,
corruption, version mismatch, concurrent writers, ac.compile(tune=...) and the CLI.
Real TVM compiles and real timing, at tiny shapes with few candidates."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import attncc as ac
from attncc.ir.plan import TilePlan, fits
from attncc.ir.program import Dims
from attncc.passes.pipeline import lower
from attncc.tune import Database, DatabaseWarning, lookup, search_space, shape_bucket, tune, workload_hash
from attncc.tune import db as tdb
from attncc.tune.device import cpu_fingerprint
from attncc.tune.search import tvm_build

VENV_BIN = Path(sys.executable).parent
CAUSAL = ac.Attention(ac.causal())
FULL = ac.Attention()
TINY = Dims(1, 2, 64, 64, 16, 16)


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A fresh user database for the test (ATTNCC_TUNE_DB), empty."""
    path = tmp_path / "records.json"
    monkeypatch.setenv("ATTNCC_TUNE_DB", str(path))
    return Database(path)


def record(spec=CAUSAL, dims=TINY, plans=(TilePlan(block_m=32, block_n=32),), dtype="float32", **kw):
    base = dict(workload=workload_hash(spec, dims, "tvm"), target="tvm", device=cpu_fingerprint(),
                dtype=dtype, dims=dims, plans=plans, time_s=1e-3)
    base.update(kw)
    return tdb.make_record(**base)


# ---- search space and pruning ---------------------------------------------------------------

def test_space_starts_with_default_and_snaps_to_atoms():
    prog = lower(CAUSAL, Dims(1, 1, 200, 200, 16, 16), target="tvm").program
    space = search_space(prog, "full")
    assert space.candidates[0] == tuple(g.plan for g in prog.groups)
    assert len(set(space.candidates)) == len(space.candidates) > 20
    for (p,) in space.candidates:
        assert p.block_m % 16 == 0 and p.block_n % 16 == 0 and max(p.block_m, p.block_n) <= 208
        assert p.unroll in (4, 5, 6) and p.vector in (8, 16)
    # a 7x7 window is one atom of 49 keys: only the micro-kernel knobs remain
    prog = lower(ac.Attention(ac.window2d((14, 14), (7, 7))), Dims(1, 1, 196, 196, 16, 16), target="tvm").program
    space = search_space(prog, "full")
    assert prog.groups[0].blocks.atom == (49, 49)
    assert {(p.block_m, p.block_n) for (p,) in space.candidates} == {(49, 49)}
    assert {(p.unroll, p.vector) for (p,) in space.candidates} == {(u, v) for u in (4, 5, 6) for v in (8, 16)}


def test_fast_space_is_a_neighbourhood_of_the_default():
    prog = lower(CAUSAL, Dims(1, 1, 512, 512, 64, 64), target="tvm").program
    fast, full = search_space(prog, "fast"), search_space(prog, "full")
    assert 4 <= len(fast) < len(full)
    p0 = fast.candidates[0][0]
    assert all(p.block_m in (p0.block_m // 2, p0.block_m, 2 * p0.block_m) for (p,) in fast.candidates)


def test_pruning_drops_what_cannot_fit_before_anything_compiles(db):
    dims = Dims(1, 1, 256, 256, 256, 256)          # big head dims: large tiles overflow L2
    prog = lower(FULL, dims, target="tvm").program
    space = search_space(prog, "full")
    assert space.pruned, "some 256-dim tiles must exceed 1 MiB"
    assert all(not fits(p, 256, 256, "tvm") for cand in space.pruned for p in cand)
    assert all(fits(p, 256, 256, "tvm") for cand in space.candidates for p in cand)
    built = []

    def build(plans):
        built.append(plans)
        return tvm_build(FULL, dims, "float32", {}, plans)
    res = tune(FULL, dims, mode="full", build=build, save=False, trials=2, progress=False, min_time=0.01, rounds=1)
    assert built == list(space.candidates[:2]) and all(t.ok for t in res.trials)
    assert res.pruned == len(space.pruned) and not set(built) & set(space.pruned)


# ---- the tuner ------------------------------------------------------------------------------

def test_tune_rejects_a_wrong_candidate_and_records_the_winner(db):
    """The second candidate is a real TVM kernel of the wrong spec (causal, half the work, so
    it is the fastest): verification must reject it."""
    dims = TINY
    plans_seen = []
    space = search_space(lower(FULL, dims, target="tvm").program, "fast")
    faulty = space.candidates[1]

    def build(plans):
        plans_seen.append(plans)
        return tvm_build(CAUSAL if plans == faulty else FULL, dims, "float32", {}, plans)

    res = tune(FULL, dims, trials=3, build=build, db=db, progress=False, min_time=0.01, rounds=2)
    assert plans_seen == list(space.candidates[:3])
    bad = [t for t in res.trials if not t.ok]
    assert [t.plans for t in bad] == [faulty] and "wrong output" in bad[0].failure
    assert res.plans != faulty and res.seconds > 0 and res.default_seconds > 0
    hit = db.lookup(workload_hash(FULL, dims, "tvm"), "tvm", cpu_fingerprint(), "float32",
                    (1, 2, 64, 64, 16, 16))
    assert hit.match == "exact" and hit.plans == res.plans
    assert hit.record["rejected"] == 1 and hit.record["trials"] == 3
    # asking again answers from the database without building anything
    again = tune(FULL, dims, build=lambda p: pytest.fail("built a candidate for a tuned workload"), db=db)
    assert again.from_db and again.plans == res.plans


def test_final_rounds_are_judged_by_paired_ratios():
    """A slow spell of the machine in the rounds where only the default was slow (the medians
    say the candidate is 33% faster) does not make the candidate win; the rounds' ratios do."""
    from attncc.tune.runner import alternate
    from attncc.tune.search import pick
    spell = {"default": [1.0, 1.0, 1.5, 1.5, 1.5], "cand": [1.0, 1.0, 1.0, 1.5, 1.5]}
    assert pick(spell, "default") == "default"
    faster = {"default": [1.0, 1.5, 1.0, 1.2, 1.0], "cand": [0.9, 1.4, 0.95, 1.1, 0.96], "other": [1.0] * 5}
    assert pick(faster, "default") == "cand"
    near = {"default": [1.0] * 5, "cand": [0.98] * 5}           # 2% is within the margin: the default stays
    assert pick(near, "default") == "default"
    assert pick({"cand": [2.0, 1.0, 1.0], "other": [1.5, 1.5, 1.5]}, "default") == "cand"   # no default rounds
    assert alternate("abc", 0) == list("abc") and alternate("abc", 1) == list("cba")


def test_compile_tune_true_tunes_once_then_reads_the_database(db, monkeypatch):
    spec = ac.Attention(ac.sliding_window(16))
    q, k, v = (torch.randn(1, 1, 48, 16) for _ in range(3))
    kern = ac.compile(spec, tune=True)
    out = kern(q, k, v)
    torch.testing.assert_close(out, ac.reference(spec)(q, k, v), atol=1e-5, rtol=1e-5)
    db._load()
    assert len(db.records) == 1 and db.records[0]["mode"] == "fast"
    tuned = tuple(TilePlan(**p) for p in db.records[0]["plans"])
    # a new kernel (a new process would do the same) finds the record: no tuning, its plans
    monkeypatch.setattr("attncc.tune.tune", lambda *a, **kw: pytest.fail("tuned a tuned workload"))
    kern2 = ac.compile(spec, tune="fast")
    torch.testing.assert_close(kern2(q, k, v), out)
    assert tuple(g.plan for g in kern2.lower(Dims(1, 1, 48, 48, 16, 16)).program.groups) == tuned


def test_compile_uses_a_bucket_record_and_ignores_one_that_does_not_fit(db, monkeypatch):
    monkeypatch.setattr("attncc.tune.tune", lambda *a, **kw: pytest.fail("tuned despite a record"))
    db.add(record(dims=Dims(1, 2, 100, 100, 16, 16), plans=(TilePlan(block_m=32, block_n=48, unroll=6),)))
    low = ac.compile(CAUSAL, tune=True).lower(Dims(1, 2, 120, 120, 16, 16))      # same bucket (128)
    assert low.program.groups[0].plan == TilePlan(block_m=32, block_n=48, unroll=6)
    # N=50 shares bucket 64 with a record at N=40, but its atom is 50 (a short extent that is
    # not a multiple of 16 is one atom), so 32-token tiles do not apply: the default plan
    db.add(record(dims=Dims(1, 2, 40, 40, 16, 16), plans=(TilePlan(block_m=32, block_n=32),)))
    assert db.lookup(workload_hash(CAUSAL, TINY, "tvm"), "tvm", cpu_fingerprint(), "float32",
                     (1, 2, 50, 50, 16, 16)).match == "bucket"
    low = ac.compile(CAUSAL, tune=True).lower(Dims(1, 2, 50, 50, 16, 16))
    assert low.program.groups[0].plan == lower(CAUSAL, Dims(1, 2, 50, 50, 16, 16), target="tvm").program.groups[0].plan


def test_tune_argument_errors():
    with pytest.raises(ValueError, match="tune must be False, True, 'fast' or 'full', got 'fastest'"):
        ac.compile(FULL, tune="fastest")
    with pytest.raises(ValueError, match="backend='reference' has nothing to tune"):
        ac.compile(FULL, backend="reference", tune=True)
    with pytest.raises(ValueError, match="budget_s must be a positive number of seconds, got -1"):
        tune(FULL, TINY, budget_s=-1)
    with pytest.raises(ValueError, match="trials must be a positive int .* got 0"):
        tune(FULL, TINY, trials=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        tune(FULL, TINY, mode="slow")


# ---- database -------------------------------------------------------------------------------

def test_lookup_falls_back_exact_then_bucket_then_none(tmp_path):
    user, shipped = Database(tmp_path / "u.json"), Database(tmp_path / "s.json")
    shipped.add(record(dims=Dims(1, 2, 200, 200, 16, 16), plans=(TilePlan(block_m=16, block_n=16),)))
    shipped.readonly = True
    user.add(record(dims=Dims(1, 2, 256, 256, 16, 16), plans=(TilePlan(block_m=64, block_n=64),)))
    user.add(record(dims=Dims(4, 2, 200, 200, 16, 16), plans=(TilePlan(block_m=32, block_n=32),)))
    wl, dev = workload_hash(CAUSAL, TINY, "tvm"), cpu_fingerprint()
    get = lambda shape, dtype="float32", device=dev, wl=wl: lookup(wl, "tvm", device, dtype, shape, [user, shipped])
    hit = get((1, 2, 200, 200, 16, 16))          # exact in the shipped file beats a user bucket record
    assert (hit.match, hit.plans[0].block_m, hit.path) == ("exact", 16, shipped.path)
    hit = get((4, 2, 200, 200, 16, 16))
    assert (hit.match, hit.plans[0].block_m) == ("exact", 32)
    hit = get((4, 2, 180, 180, 16, 16))           # bucket 256: the nearest tuned shape (N=200, B=4)
    assert (hit.match, hit.plans[0].block_m, hit.path) == ("bucket", 32, user.path)
    assert get((1, 2, 300, 300, 16, 16)) is None              # bucket 512: default plan
    assert get((1, 2, 200, 200, 32, 32)) is None              # head dims are exact
    assert get((1, 2, 200, 200, 16, 16), dtype="float16") is None
    assert get((1, 2, 200, 200, 16, 16), device="cpu:other:avx2:2c") is None
    assert get((1, 2, 200, 200, 16, 16), wl=workload_hash(FULL, TINY, "tvm")) is None
    assert shape_bucket((3, 5, 200, 129, 48, 40)) == (256, 256, 48, 40)
    with pytest.raises(PermissionError, match="read-only"):
        shipped.add(record())


def test_workload_hash_ignores_shapes_and_tells_specs_apart():
    a = workload_hash(CAUSAL, Dims(1, 2, 64, 64, 16, 16), "tvm")
    assert a == workload_hash(CAUSAL, Dims(8, 4, 4096, 4096, 64, 64), "tvm")
    assert a != workload_hash(FULL, TINY, "tvm") != workload_hash(ac.Attention(ac.sliding_window(8)), TINY, "tvm")
    assert a != workload_hash(ac.Attention(ac.causal(), score_mods=ac.softcap(20.0)), TINY, "tvm")


def test_corrupt_file_is_ignored_with_a_warning_then_moved_aside(tmp_path):
    path = tmp_path / "records.json"
    path.write_text('{"format": "attncc-schedules", "records": [ {"attncc": ')
    db = Database(path)
    with pytest.warns(DatabaseWarning, match="it is corrupt"):
        assert db.lookup("x", "tvm", "d", "float32", (1, 1, 1, 1, 1, 1)) is None
    with pytest.warns(DatabaseWarning, match="moved it to"):
        db.add(record())
    assert list(tmp_path.glob("records.json.corrupt-*"))
    assert len(json.loads(path.read_text())["records"]) == 1


def test_corrupt_records_are_ignored_and_good_ones_kept(tmp_path):
    path = tmp_path / "records.json"
    good = record()
    bad_plan = dict(record(dims=Dims(1, 2, 32, 32, 16, 16)), plans=[{"block_m": 32, "tile": 8}])
    no_time = {k: v for k, v in record(dims=Dims(1, 2, 16, 16, 16, 16)).items() if k != "time_s"}
    neg = dict(record(dims=Dims(1, 2, 8, 8, 16, 16)), time_s=-1.0)
    path.write_text(json.dumps({"format": "attncc-schedules", "records": [bad_plan, good, no_time, "junk", neg]}))
    db = Database(path)
    with pytest.warns(DatabaseWarning, match="ignoring 4 corrupt record"):
        db._load()
    assert db.records == [good]
    with pytest.raises(ValueError, match="refusing to store a bad tuning record: bad plan"):
        db.add(bad_plan)


def test_records_of_another_version_are_ignored_with_a_warning(tmp_path):
    path = tmp_path / "records.json"
    old = dict(record(), attncc="0.0.1")
    path.write_text(json.dumps({"format": "attncc-schedules", "records": [old]}))
    db = Database(path)
    with pytest.warns(DatabaseWarning, match=r"written by attncc 0.0.1 \(this is "):
        assert db.lookup(old["workload"], "tvm", old["device"], "float32", old["shape"]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # an unchanged file is not re-read, nor warned about again
        db.lookup(old["workload"], "tvm", old["device"], "float32", old["shape"])
    db.add(record())                              # this version's record joins; the old one is kept, unused
    assert len(json.loads(path.read_text())["records"]) == 2


WRITER = """
import sys
from attncc.ir.plan import TilePlan
from attncc.ir.program import Dims
from attncc.tune.db import Database, make_record
db, who = Database(sys.argv[1]), int(sys.argv[2])
for n in range(20):
    db.add(make_record(workload=f"w{who}", target="tvm", device="cpu:test:avx2:2c", dtype="float32",
                       dims=Dims(1, 1, 16 * (n + 1), 16 * (n + 1), 16, 16), plans=[TilePlan(block_m=16)],
                       time_s=1e-3 * (n + 1)))
"""


def test_four_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "records.json"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    recs = json.loads(path.read_text())["records"]
    assert len(recs) == 80
    assert {(r["workload"], r["shape"][2]) for r in recs} == {(f"w{w}", 16 * (n + 1)) for w in range(4)
                                                               for n in range(20)}
    assert not list(tmp_path.glob("*.tmp"))


# ---- CLI (the venv's console script) --------------------------------------------------------

def _cli(*args, env=None, **kw):
    return subprocess.run([str(VENV_BIN / "attncc"), *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_cli_tune_and_db_commands(tmp_path):
    env = dict(os.environ, ATTNCC_TUNE_DB=str(tmp_path / "records.json"))
    spec_file = tmp_path / "mine.py"
    spec_file.write_text("import attncc as ac\nspec = ac.Attention(ac.sliding_window(8), score_mods=ac.alibi())\n"
                         "dims = (1, 2, 32, 32, 16, 16)\n")
    r = _cli("tune", str(spec_file), "--trials", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert "2 of" in r.stdout and "recorded in" in r.stdout and "best" in r.stderr
    r = _cli("tune", "causal", "--shape", "1,1,32,16", "--trials", "2", "--jobs", "2", env=env)
    assert r.returncode == 0, r.stderr
    r = _cli("tune", "causal", "--shape", "1,1,32,16", env=env)
    assert r.returncode == 0 and "already tuned" in r.stdout
    r = _cli("db", "list", env=env)
    assert r.returncode == 0 and r.stdout.count("| user |") == 2 and "1,1,32,32,16,16" in r.stdout
    r = _cli("db", "show", "0", env=env)
    assert json.loads(r.stdout)[0]["shape"] == [1, 2, 32, 32, 16, 16]
    out = tmp_path / "export.json"
    r = _cli("db", "export", "-o", str(out), env=env)
    assert r.returncode == 0 and len(json.loads(out.read_text())["records"]) == 2
    assert Database(out).lookup(json.loads(out.read_text())["records"][0]["workload"], "tvm", cpu_fingerprint(),
                                "float32", (1, 2, 32, 32, 16, 16)) is not None
    r = _cli("db", "clear", env=env)
    assert r.returncode == 0 and "removed 2 record(s)" in r.stdout
    assert "| user |" not in _cli("db", "list", env=env).stdout


def test_cli_errors_name_the_values_and_the_fix(tmp_path):
    env = dict(os.environ, ATTNCC_TUNE_DB=str(tmp_path / "records.json"))
    r = _cli("tune", "causal", "--shape", "1,2,3", env=env)
    assert r.returncode != 0 and "--shape must be B,H,N,M,d,dv or B,H,N,d (positive ints), got '1,2,3'" in r.stderr
    r = _cli("tune", "causal", "--shape", "1,2,64,16", "--target", "sm_90", env=env)
    assert r.returncode != 0 and "needs a CUDA GPU, and torch sees none" in r.stderr
    assert "bench/gpu_run.sh tune" in r.stderr and not (tmp_path / "records.json").exists()
    r = _cli("tune", "causal", "--target", "sm_80", "--rpc", "127.0.0.1:9190", env=env)
    assert r.returncode != 0 and "not --target sm_80" in r.stderr and "without --rpc" in r.stderr
    r = _cli("tune", "no_such_pattern", env=env)
    assert r.returncode != 0 and "neither a Python file nor a catalogue entry" in r.stderr and "causal" in r.stderr
    r = _cli("db", "show", "zzz", env=env)
    assert r.returncode != 0 and "no record 'zzz'" in r.stderr


def test_cli_ctrl_c_keeps_the_best_found(tmp_path):
    path = tmp_path / "records.json"
    env = dict(os.environ, ATTNCC_TUNE_DB=str(path))
    p = subprocess.Popen([str(VENV_BIN / "attncc"), "tune", "causal", "--shape", "1,1,64,16", "--mode", "full"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = ""
    deadline = time.time() + 240
    while time.time() < deadline:          # wait until the progress bar shows two candidates measured
        chunk = os.read(p.stderr.fileno(), 4096).decode(errors="replace")
        seen += chunk
        # the bar's states are separated by carriage returns (tqdm) into a pipe
        if not chunk or any(s.startswith("tuning [") and " 2/" in s for s in re.split("[\r\n]", seen)):
            break
    p.send_signal(signal.SIGINT)
    out, err = (x.decode() for x in p.communicate(timeout=120))
    assert p.returncode == 0, seen + err
    assert "interrupted: kept the best found" in out
    rec, = json.loads(path.read_text())["records"]
    assert rec["interrupted"] is True and rec["trials"] >= 2
