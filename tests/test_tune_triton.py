"""Tuning the Triton backend's plans, on the CPU: the search space of the GPU plan targets
("sm_80", "sm_90": tiles, warps, stages; defaults first, snapped to atoms, pruned by the
shared-memory model before anything compiles), the builder's error without a GPU, the search
loop on a GPU target with an injected build (verification, margin rule, records keyed by the
GPU's fingerprint), ac.compile(tune=...) looking GPU records up, and a real Triton candidate
of a non-default plan run by the interpreter and judged by the oracle (never timed)."""
import time
from types import SimpleNamespace

import pytest
import torch

import attncc as ac
from attncc.ir.plan import FAST_MEMORY, TilePlan, fits, shared_memory
from attncc.ir.program import Dims
from attncc.passes.pipeline import lower
from attncc.tune import Database, search_space, tune, workload_hash
from attncc.tune import search
from attncc.tune.search import make_inputs, triton_build
from attncc.tune.space import Untunable
from attncc.tune.verify import Oracle

CAUSAL = ac.Attention(ac.causal())
FULL = ac.Attention()
GPU = "gpu:Test GPU:sm_90"
NO_GPU = "tuning Triton plans for target 'sm_90' needs a CUDA GPU"


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A fresh user database (ATTNCC_TUNE_DB), and a pretend GPU fingerprint for the records."""
    path = tmp_path / "records.json"
    monkeypatch.setenv("ATTNCC_TUNE_DB", str(path))
    monkeypatch.setattr("attncc.tune.device.gpu_fingerprint", lambda device=0: GPU)
    return Database(path)


def knobs(cand):
    return [(p.block_m, p.block_n, p.num_warps, p.num_stages) for p in cand]


# ---- the search space -----------------------------------------------------------------------

@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_triton_space_starts_with_the_default_and_snaps_to_atoms(target):
    prog = lower(CAUSAL, Dims(1, 2, 512, 512, 64, 64), "float16", target).program
    full, fast = search_space(prog, "full"), search_space(prog, "fast")
    (p0,) = default = tuple(g.plan for g in prog.groups)
    assert full.candidates[0] == fast.candidates[0] == default
    assert len(set(full.candidates)) == len(full.candidates) == 96 and not full.pruned
    for (p,) in full.candidates[1:]:
        assert p.block_m in (16, 32, 64, 128) and p.block_n in (16, 32, 64, 128)
        assert p.num_warps in (4, 8) and p.num_stages in (2, 3, 4)
    # fast: the default's neighbours (tiles halved or doubled, stages one less or more), nearest first
    assert 10 < len(fast) < len(full)
    for (p,) in fast.candidates:
        assert p.block_m in (p0.block_m // 2, p0.block_m, 2 * p0.block_m)
        assert p.block_n in (p0.block_n // 2, p0.block_n, 2 * p0.block_n)
        assert abs(p.num_stages - p0.num_stages) <= 1 and p.num_warps in (4, 8)
    assert sum(a != b for a, b in zip(knobs(fast.candidates[1])[0], knobs(default)[0])) == 1
    # a 7x7 window is one atom of 49 tokens: only warps and stages remain
    prog = lower(ac.Attention(ac.window2d((14, 14), (7, 7))), Dims(1, 1, 196, 196, 32, 32), "float16", target).program
    space = search_space(prog, "full")
    assert {(p.block_m, p.block_n) for (p,) in space.candidates} == {(49, 49)}
    assert {(p.num_warps, p.num_stages) for (p,) in space.candidates} >= {(w, s) for w in (4, 8) for s in (2, 3, 4)}
    # linear attention stays untunable, as for tvm
    with pytest.raises(Untunable, match="linear attention"):
        search_space(lower(ac.Attention(normalizer=ac.linear()), Dims(1, 1, 64, 64, 16, 16), "float16",
                           target).program)


def test_triton_space_prunes_what_overflows_shared_memory_before_anything_compiles(db):
    dims = Dims(1, 1, 128, 128, 256, 256)          # head dim 256, fp16: big tiles overflow sm_80's 163 KiB
    prog = lower(FULL, dims, "float16", "sm_80").program
    space = search_space(prog, "full")
    assert space.pruned and FAST_MEMORY["sm_80"].bytes == 163 * 1024
    assert all(shared_memory(p, 256, 256, 2) > 163 * 1024 for cand in space.pruned for p in cand)
    assert ((128, 128, 4, 4),) in [tuple(knobs(c)) for c in space.pruned]
    assert all(fits(p, 256, 256, "sm_80", 2) for cand in space.candidates for p in cand)
    ref = ac.reference(FULL)
    built = []

    def build(plans):
        built.append(plans)
        return (lambda q, k, v, t: ref(q, k, v)), 0.0
    res = tune(FULL, dims, "float16", target="sm_80", mode="full", build=build, save=False, trials=3,
               progress=False, min_time=0.005, rounds=1)
    assert built == list(space.candidates[:3]) and not set(built) & set(space.pruned)
    assert all(t.ok for t in res.trials) and res.pruned == len(space.pruned)


# ---- no GPU: a clear error, never the interpreter's times -----------------------------------

def test_triton_tuning_without_a_gpu_names_the_target_and_what_to_do(db, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("attncc.tune.device.gpu_fingerprint", lambda device=0: pytest.fail("fingerprinted no GPU"))
    plans = (TilePlan(block_m=32, block_n=32),)
    with pytest.raises(RuntimeError, match=NO_GPU) as err:
        triton_build(CAUSAL, Dims(1, 1, 64, 64, 16, 16), "float16", {}, plans, "sm_90")
    assert "bench/gpu_run.sh tune" in str(err.value) and "never in Triton's interpreter" in str(err.value)
    with pytest.raises(RuntimeError, match=NO_GPU):
        tune(CAUSAL, Dims(1, 1, 64, 64, 16, 16), "float16", target="sm_90", db=db)
    assert not db.path.exists()
    # a GPU of another arch: tune the arch it runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ValueError, match="target 'sm_90' does not match this GPU: NVIDIA A100 .* runs 'sm_80' plans"):
        tune(CAUSAL, Dims(1, 1, 64, 64, 16, 16), "float16", target="sm_90", db=db)


# ---- the search loop on a GPU target ----------------------------------------------------------

def test_gpu_target_search_verifies_keeps_the_margin_and_keys_records_by_the_gpu(db):
    """Candidates whose times are set by sleeping: the fastest is wrong (rejected), one as fast
    as the default loses to it by the margin rule; then, retuned, a 3x faster one wins and is
    recorded for target sm_90, the GPU's fingerprint and the dtype."""
    dims = Dims(1, 2, 64, 64, 16, 16)
    space = search_space(lower(CAUSAL, dims, "float16", "sm_90").program, "fast")
    default, wrong, other = space.candidates[:3]
    ref, cache = ac.reference(CAUSAL), {}

    def run(plans, pause):
        def fn(q, k, v, t):
            time.sleep(pause[plans])
            if "out" not in cache:
                cache["out"] = ref(q, k, v)
            return cache["out"] + (1.0 if plans == wrong else 0.0)
        return fn, 0.0

    pause = {default: 0.004, wrong: 0.0, other: 0.004}
    kw = dict(target="sm_90", trials=3, db=db, progress=False, min_time=0.02, rounds=3)
    res = tune(CAUSAL, dims, "float16", build=lambda p: run(p, pause), **kw)
    assert [t.plans for t in res.trials] == [default, wrong, other]
    assert [t.plans for t in res.rejected] == [wrong] and "wrong output" in res.rejected[0].failure
    assert res.plans == default                     # as fast is not 3% faster: the default stays
    pause[other] = 0.0013
    res = tune(CAUSAL, dims, "float16", build=lambda p: run(p, pause), retune=True, **kw)
    assert res.plans == other and res.speedup > 2
    wl = workload_hash(CAUSAL, dims, "sm_90")
    hit = db.lookup(wl, "sm_90", GPU, "float16", (1, 2, 64, 64, 16, 16))
    assert hit.match == "exact" and hit.plans == other and hit.record["target"] == "sm_90"
    assert db.lookup(wl, "sm_90", GPU, "float32", (1, 2, 64, 64, 16, 16)) is None
    assert db.lookup(wl, "tvm", GPU, "float16", (1, 2, 64, 64, 16, 16)) is None
    again = tune(CAUSAL, dims, "float16", build=lambda p: pytest.fail("built a tuned workload"), **kw)
    assert again.from_db and again.plans == other


@pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")
def test_compile_tune_looks_gpu_records_up_and_the_interpreter_is_never_tuned(db, monkeypatch):
    dims = Dims(1, 2, 128, 128, 32, 32)
    plan = TilePlan(block_m=32, block_n=32, num_warps=8, num_stages=3)
    db.add(search.make_record(workload=workload_hash(CAUSAL, dims, "sm_90"), target="sm_90", device=GPU,
                              dtype="float16", dims=dims, plans=(plan,), time_s=1e-4))
    kern = ac.compile(CAUSAL, backend="triton", tune=True)
    assert kern.tuned_plans(dims, "float16", target="sm_90", device=0) == (plan,)
    assert kern.lower(dims, "float16", target="sm_90").program.groups[0].plan == plan
    # a miss with the call's tensors tunes that GPU target
    seen = []
    monkeypatch.setattr("attncc.tune.tune", lambda *a, **kw: seen.append(kw) or search.TuneResult((plan,), 1, 1))
    other = Dims(1, 2, 512, 512, 32, 32)
    assert kern.tuned_plans(other, "float16", {}, target="sm_90") == (plan,)
    assert seen[0]["target"] == "sm_90" and seen[0]["mode"] == "fast"
    # CPU tensors run the interpreter: a warning, the default plans, nothing tuned
    monkeypatch.setattr("attncc.tune.tune", lambda *a, **kw: pytest.fail("tuned the interpreter"))
    q, k, v = make_inputs(Dims(1, 1, 32, 32, 16, 16), torch.float32)
    cpu = ac.compile(CAUSAL, backend="triton", tune=True)
    with pytest.warns(UserWarning, match="tunes Triton plans on a CUDA GPU; Triton's interpreter .* never tuned"):
        out = cpu(q, k, v)
    torch.testing.assert_close(out, ac.reference(CAUSAL)(q, k, v), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend='reference' has nothing to tune"):
        ac.compile(CAUSAL, backend="reference", tune=True)


# ---- a real Triton candidate, through the interpreter ----------------------------------------

@pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")
def test_a_non_default_triton_plan_builds_and_matches_the_oracle_in_the_interpreter():
    dims = Dims(1, 2, 128, 128, 32, 32)
    prog = lower(CAUSAL, dims, "float32", "sm_90").program
    cand = next(c for c in search_space(prog, "full").candidates if knobs(c) == [(32, 32, 8, 3)])
    assert cand != tuple(g.plan for g in prog.groups)
    fn, _ = triton_build(CAUSAL, dims, "float32", {}, cand, "sm_90", interpret=True)
    assert fn.program.prog.target == "sm_90" and tuple(g.grp.plan for g in fn.program.groups) == cand
    q, k, v = make_inputs(dims, torch.float32)
    ok, err = Oracle(lower(CAUSAL, dims, "float32", "sm_90").stages[0][1], q, k, v).check(fn(q, k, v, {}))
    assert ok, err


# ---- GPU timing and the oracle at the GPU bench shapes ------------------------------------------

def test_cuda_inputs_are_timed_with_synchronized_cuda_events(monkeypatch):
    from attncc.tune import runner
    seen = []
    monkeypatch.setattr(runner, "time_cuda", lambda fn, min_time: seen.append(min_time) or 1e-3)
    monkeypatch.setattr(runner, "time_call", lambda fn, min_time: pytest.fail("wall-clock timing of a GPU call"))
    gpu = runner.Bench(SimpleNamespace(is_cuda=True), None, None, {}, None, 0.05)
    assert gpu.time(lambda: None) == 1e-3 and gpu.time(lambda: None, 4) == 1e-3 and seen == [0.05, 0.2]


def test_oracle_judges_the_first_heads_of_each_group_past_its_score_budget(monkeypatch):
    from attncc.tune import verify
    dims = Dims(1, 4, 64, 64, 16, 16)
    monkeypatch.setattr(verify, "MAX_HEAD_SCORES", 2 * 64 * 64)       # two heads' scores
    q, k, v = make_inputs(dims, torch.float32)
    oracle = Oracle(lower(CAUSAL, dims, "float32", "sm_90").stages[0][1], q, k, v)
    assert oracle.heads == [0, 1] and tuple(oracle.gold.shape) == (1, 2, 64, 16)
    out = ac.reference(CAUSAL)(q, k, v)
    assert oracle.check(out)[0]
    assert not oracle.check(out + torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1))[0]     # head 0 is judged
    assert not oracle.check(out[:, :3])[0]                                             # a wrong shape fails


def test_cli_tune_target_runs_the_gpu_search_and_records_for_that_arch(db, monkeypatch, capsys):
    """`attncc tune --target sm_90` on a (pretend) sm_90 GPU: the GPU target, float16 by default,
    the Triton knobs in the report and a record keyed by the GPU; each candidate is built by the
    target's builder (here one that runs the oracle, on the CPU) and verified."""
    from attncc.cli import main
    from attncc.tune import cli
    ref, built = ac.reference(CAUSAL), []

    def builder(spec, dims, dtype, tensors, plans, target):
        built.append((target, dtype, plans))
        return (lambda q, k, v, t: ref(q, k, v)), 0.0

    monkeypatch.setitem(search.BUILDERS, "sm_90", builder)
    for mod in (search, cli):       # the GPU check passes; the inputs stay on the CPU
        monkeypatch.setattr(mod, "need_gpu", lambda target: torch.device("cpu"))
    assert main(["tune", "causal", "--shape", "1,2,64,16", "--target", "sm_90", "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "float16, target sm_90" in out and "num_warps=" in out and "2 of" in out
    assert [b[:2] for b in built] == [("sm_90", "float16")] * 2
    dims = Dims(1, 2, 64, 64, 16, 16)
    hit = Database(db.path).lookup(workload_hash(CAUSAL, dims, "sm_90"), "sm_90", GPU, "float16",
                                   (1, 2, 64, 64, 16, 16))
    assert hit is not None and hit.record["target"] == "sm_90" and hit.plans in [b[2] for b in built]
