"""The Triton backend (kernels generated from the IR) under Triton's interpreter on CPU
tensors, against the dense fp64 oracle, judged against the error of the same maths in the
input dtype; its runtime wiring (explicit opt-in, warning, auto never picks it on CPU), the
kernel structure it generates, and the ahead-of-time GPU compile check."""
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import attncc as ac
from attncc.dsl import patterns as P
from attncc.ir.program import Dims
from attncc.ops import CATALOGUE
from attncc.runtime.autograd import BackwardWarning
from attncc.runtime.kernel import InterpreterWarning

from oracle import check_against_oracle, make_inputs
from strategies import multi_tile_specs, random_spec_test, specs
from test_reference import CASES

# every test here runs the interpreter on purpose; the warning has its own test
pytestmark = pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")


def triton_can(spec):
    """Routing is generated alone (with modifiers); composed with other patterns it is not."""
    routed = any(isinstance(p, P.Routing) for p in spec.pattern.leaves())
    return not routed or isinstance(spec.pattern, P.Routing)


TRITON_CASES = sorted(n for n, (spec, _, _) in CASES.items() if triton_can(spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", TRITON_CASES)
def test_triton_matches_dense_oracle(name, dtype):
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims, dtype)
    check_against_oracle(spec, q, k, v, tensors, backend="triton")


FP16_CASES = ["full_m_ne_n_dv", "causal_bottom_right_empty_rows", "window2d_shift_rpb", "neighborhood_dilated",
              "sigmoid_bias_window", "decay_then_clip_on_window", "head_dim_256", "per_head"]


@pytest.mark.parametrize("name", FP16_CASES)
def test_triton_fp16_matches_dense_oracle(name):
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims, torch.float16)
    check_against_oracle(spec, q, k, v, tensors, backend="triton")


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if triton_can(e.spec)],
                         ids=[e.name for e in CATALOGUE if triton_can(e.spec)])
def test_triton_catalogue_matches_dense_oracle(entry):
    q, k, v, tensors = entry.inputs()
    check_against_oracle(entry.spec, q, k, v, tensors, backend="triton")


@random_spec_test(60)
@given(case=specs(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_triton_random_specs_match_dense_oracle(case, dtype):
    spec, dims, tensors = case
    assume(triton_can(spec))
    q, k, v = make_inputs(dims, dtype)
    check_against_oracle(spec, q, k, v, tensors, backend="triton")


@random_spec_test(40)
@given(case=multi_tile_specs(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_triton_multi_tile_specs_match_dense_oracle(case, dtype):
    """Groups of three or more of sm_80's 128 x 64 tiles each way, under the interpreter."""
    spec, dims, tensors = case
    assume(triton_can(spec))
    q, k, v = make_inputs(dims, dtype)
    check_against_oracle(spec, q, k, v, tensors, backend="triton")


SIGMOID_CASES = sorted(n for n in TRITON_CASES if isinstance(CASES[n][0].normalizer, type(ac.sigmoid())))


@pytest.mark.parametrize("name", SIGMOID_CASES)
def test_triton_sigmoid_without_lse_skips_statistics_and_still_matches(name):
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims)
    check_against_oracle(spec, q, k, v, tensors, lse=False, backend="triton")


def test_triton_fully_masked_rows_give_zero_and_neg_inf_lse():
    spec = ac.Attention(ac.mask(lambda b, h, q, k: q >= 5) & ac.causal())
    q, k, v = make_inputs(Dims(1, 2, 40, 40, 16, 16), torch.bfloat16)
    out, lse = ac.compile(spec, backend="triton")(q, k, v, return_lse=True)
    assert torch.equal(out[:, :, :5], torch.zeros_like(out[:, :, :5]))
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()
    assert not torch.isnan(out.float()).any() and out.dtype == torch.bfloat16 and lse.dtype == torch.float32


def test_triton_gradients_are_generated_and_match_the_reference():
    """The generated backward kernels (no BackwardWarning), the relative position bias's
    gradient included, against the reference's autograd (tests/test_grad_triton.py judges
    them against the fp64 oracle)."""
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), score_mods=ac.rel_pos_bias("rpb", (4, 4)))
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 64, 64, 16, 16)))
    rpb = torch.randn(49, 2, requires_grad=True)
    grads = []
    for kern in (ac.compile(spec, backend="triton"), ac.reference(spec)):
        out, lse = kern(q, k, v, return_lse=True, rpb=rpb)
        with warnings.catch_warnings():
            warnings.simplefilter("error", BackwardWarning)
            grads.append(torch.autograd.grad(out.square().sum() + lse.sum(), [q, k, v, rpb]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---- the generated kernel's structure ---------------------------------------------------------

def triton_source(spec, dims, dtype=torch.float32, **tensors):
    kern = ac.compile(spec, backend="triton")
    q, k, v = make_inputs(dims, dtype)
    kern(q, k, v, **tensors)
    return kern.explain(file=None)


def test_triton_explain_shows_a_flash_kernel_over_the_tile_table():
    text = triton_source(ac.Attention(ac.causal()), Dims(1, 2, 200, 200, 16, 16))
    assert "=== generated Triton source" in text and "plans for sm_80" in text
    src = text.split("=== generated Triton source", 1)[1]
    # FULL tiles first, swept without masks; then the others, the residual only on PARTIAL tiles
    full, rest = src.split("for kk in range(0, nfull):", 1)[1].split("for kk in range(nfull, ntiles):")
    assert "kb = tl.load(tlist + item" in full and "tl.where" not in full
    assert re.search(r"if tl\.load\(tcls \+ item \* \d+ \+ kk\) == 1:", rest)
    # the online softmax in log2 units, the scale folded into one multiply-add before exp2; the
    # accumulator rescaled; no N x M buffer
    assert re.search(r"m_new = tl\.maximum\(m_i, tl\.max\(s, 1\) \* [0-9.]+\)", src)
    assert re.search(r"p = tl\.math\.exp2\(s \* [0-9.]+ - m_new\[:, None\]\)", src)
    assert "acc = acc * alpha[:, None]" in src
    # fp32 inputs multiply as three tf32 products (fp32 accuracy; not plain tf32)
    assert "input_precision=\"tf32x3\"" in src


def test_triton_linear_attention_is_states_prefix_and_apply_kernels():
    """Causal linear attention: a state per key chunk, their prefix sums, and per query chunk one
    prefix read for the chunks below the diagonal plus the masked quadratic form on the diagonal
    chunk only; the tables say so (the FULL chunks 0..qi-1 first, then the diagonal)."""
    from attncc.codegen.triton.linear import linear_tables
    from attncc.passes.pipeline import lower
    spec, dims = ac.Attention(ac.causal(), normalizer=ac.linear()), Dims(1, 2, 256, 256, 16, 16)
    src = triton_source(spec, dims).split("=== generated Triton source", 1)[1]
    assert src.count("def attncc_group(") == 3
    states, prefix, apply = src.split("def attncc_group(")[1:]
    assert "s_t = tl.dot(tl.trans(kf), vt" in states and "tl.store(st +" in states
    assert "for kb in range(0, 4):" in prefix and "tl.store(pst +" in prefix
    pre, quad = apply.split("for kk in range(nfull, ntiles):")
    assert "ssum = tl.load(pst + (gi * 5 + nfull)" in pre and "acc = tl.dot(qf, ssum" in pre
    assert "a = tl.dot(qf, tl.trans(kf)" in quad and "a = tl.where(" in quad
    grp = lower(spec, dims, "float32", target="sm_80").program.groups[0]
    assert (grp.plan.block_m, grp.plan.block_n) == (64, 64)
    cnt, lst, cls = linear_tables(grp)
    assert cnt[0].tolist() == [[1, 0, 1], [2, 1, 1], [3, 2, 1], [4, 3, 1]]
    assert lst[0, 3].tolist() == [0, 1, 2, 3] and cls[0, 3].tolist() == [2, 2, 2, 1]


def test_triton_sweeps_full_tiles_first_and_loads_atom_classes_per_atom():
    """The tile list puts the FULL tiles that end inside the keys first (their count is the
    second column of tcnt); a 128x64 PARTIAL tile reads one class per 16x16 atom."""
    from attncc.codegen.triton.backend import sweep_tables
    from attncc.ir.program import FULL, PARTIAL
    low = ac.compile(ac.Attention(ac.causal()), backend="triton").lower(Dims(1, 1, 1000, 1000, 64, 64), "float16")
    grp = low.program.groups[0]
    cnt, lst, cls = sweep_tables(grp)
    for qi in range(cnt.shape[1]):
        n, nfull = cnt[0, qi]
        assert (cls[0, qi, :nfull] == FULL).all() and ((lst[0, qi, :nfull] + 1) * grp.plan.block_n <= 1000).all()
        assert sorted(lst[0, qi, :n]) == list(range(n))             # every visited tile once
        assert not ((cls[0, qi, nfull:n] == FULL) & ((lst[0, qi, nfull:n] + 1) * grp.plan.block_n <= 1000)).any()
    assert (cls == PARTIAL).any()
    src = triton_source(ac.Attention(ac.causal()), Dims(1, 1, 1024, 1024, 64, 64), dtype=torch.float16)
    assert "tl.reshape(tl.broadcast_to(ac[:, None, :, None], [8, 16, 4, 16]), [128, 64])" in src


def test_triton_window_kernel_reads_tokens_through_the_index_maps():
    """Shifted windows: q, k, v are read from [B, H, N, d] through the maps (no roll, no
    partition copy); the shifted-region mask and the bias index are hoisted per row/column."""
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), score_mods=ac.rel_pos_bias("rpb", (4, 4)))
    src = triton_source(spec, Dims(1, 2, 64, 64, 16, 16), rpb=torch.randn(49, 2))
    assert "qtok = " in src and "ktok = " in src and "tl.load(q + plane" in src
    assert "hrow0 = " in src and "hcol0 = " in src
    assert "tl.load(tab_rpb + " in src


def test_triton_per_query_gathers_tile_a_dense_source_and_skip_empty_tiles():
    low = ac.compile(ac.Attention(ac.neighborhood2d((16, 16), (3, 3))), backend="triton").lower(
        Dims(1, 1, 256, 256, 16, 16))
    grp = low.program.groups[0]
    assert grp.gather.kind == "dense" and not grp.gather.per_query
    counts = grp.blocks.counts()
    assert counts["empty"] > counts["partial"] > 0          # most key tiles are never visited


def test_triton_two_pass_for_softmax_with_post_modifiers():
    src = triton_source(ac.Attention(ac.causal(), post_mods=ac.clipped(1.05, -0.05)), Dims(1, 1, 40, 40, 16, 16))
    assert src.count("for kk in range(0, nfull):") == 2 and src.count("for kk in range(nfull, ntiles):") == 2
    assert "inv = tl.where(l_i > 0.0" in src


# ---- runtime wiring -------------------------------------------------------------------------------

def test_triton_on_cpu_warns_that_it_is_the_interpreter():
    q, k, v = make_inputs(Dims(1, 1, 16, 16, 16, 16))
    kern = ac.compile(ac.Attention(), backend="triton")
    with pytest.warns(InterpreterWarning, match="runs Triton's interpreter: correct but slow, for testing only"):
        kern(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kern(q, k, v)                                   # once per kernel


def test_auto_never_picks_triton_on_cpu():
    kern = ac.compile(ac.Attention(), backend="auto")
    assert kern.backend == "tvm"
    q, k, v = make_inputs(Dims(1, 1, 16, 16, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InterpreterWarning)
        kern(q, k, v)
    assert not any(key[0] == "triton" for key in kern._compiled)


def test_triton_backend_refuses_what_it_cannot_generate():
    spec = ac.Attention(ac.routing((4, 4), (2, 2), 1) & ac.causal())
    why = ("backend='triton' generates routing alone (with any score or post modifiers), not routing composed with "
           "other patterns or per head; use backend='reference'")
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(NotImplementedError, match=re.escape(why)):
        ac.compile(spec, backend="triton")(q, q, q)


def test_triton_routing_prologue_and_routed_tiles_match_the_reference_routing():
    """Bi-level routing: the generated prologue (region sums, affinity, top-k) writes the
    routing table the routed kernel reads; it equals the reference routing's top-k sets, and
    the kernel reads K and V through it (no gathered copy)."""
    spec = ac.Attention(ac.routing((8, 8), (4, 2), 3), score_mods=ac.softcap(20.0))
    q, k, v = make_inputs(Dims(2, 2, 64, 64, 16, 16), torch.bfloat16)
    out, idx = ac.compile(spec, backend="triton")(q, k, v, return_routing=True)
    ref, want = ac.compile(spec, backend="reference")(q, k, v, return_routing=True)
    assert torch.equal(idx.sort(-1).values, want.sort(-1).values)
    src = ac.compile(spec, backend="triton").explain(Dims(2, 2, 64, 64, 16, 16), "bfloat16", file=None)
    assert "best = tl.min(tl.where(aff == top, r2, 8), 0)" in src
    assert "rsel = tl.load(route_idx + (b * 8 + g) * 3 + kb)" in src and "tl.load(k + plane" in src


def test_triton_interpreter_names_the_triton_it_needs(monkeypatch):
    import triton
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    q = torch.randn(1, 1, 16, 16)
    with pytest.raises(NotImplementedError, match=re.escape(
            "needs triton >= 3.9 for attncc's kernels, but triton 3.6.0 is installed; upgrade triton")):
        ac.compile(ac.Attention(), backend="triton")(q, q, q)


def test_triton_backend_refuses_other_devices():
    q = torch.randn(1, 1, 16, 8, device="meta")
    with pytest.raises(ValueError, match=re.escape("backend='triton' runs on CUDA tensors (or CPU tensors under "
                                                   "Triton's interpreter, for testing) but q is on meta")):
        ac.compile(ac.Attention(), backend="triton")(q, q, q)


def test_triton_backend_without_the_triton_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)        # import triton raises ImportError
    with pytest.raises(NotImplementedError, match=re.escape("backend 'triton' is not available in this installation "
                                                            "of attncc (available: reference, tvm); pip install "
                                                            "triton, or use backend='reference'")):
        ac.compile(ac.Attention(), backend="triton")


INTERPRET_SCRIPT = textwrap.dedent("""
    import sys, warnings
    sys.path.insert(0, {tests!r})
    {first}
    import torch, attncc as ac
    from attncc.ir.program import Dims
    from oracle import check_against_oracle, make_inputs
    warnings.simplefilter("ignore")
    q, k, v = make_inputs(Dims(1, 2, 40, 40, 16, 16), torch.bfloat16)
    check_against_oracle(ac.Attention(ac.causal()), q, k, v, backend="triton")
    print("ok")
""")


@pytest.mark.parametrize("first", ["import triton", "import os; os.environ['TRITON_INTERPRET'] = '1'; import triton",
                                   ""], ids=["triton-imported-first", "TRITON_INTERPRET-set", "attncc-first"])
def test_triton_interpreter_runs_whatever_the_import_order(first, tmp_path):
    """The interpreter needs no TRITON_INTERPRET=1 before triton is imported, and still works
    when it was set."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["ATTNCC_CACHE_DIR"] = str(tmp_path)
    script = INTERPRET_SCRIPT.format(tests=os.path.dirname(__file__), first=first)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
    assert list(tmp_path.glob("triton/attncc_triton_*.py"))          # the source is a real file


# ---- ahead-of-time compiles for NVIDIA GPUs (no GPU needed) ----------------------------------------

@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_check_gpu_compiles_a_subset_for_both_arches(arch, tmp_path):
    """`python -m attncc check-gpu` on a few patterns (a dense mask, shifted windows with a
    captured bias table and a tanh helper, routing with its prologue, causal linear attention with its states and prefix
    kernels), bf16 and fp32 (whose dots once tripped an assertion in Triton's lowering): every kernel builds and fits,
    the generated backward's dq and dkv too where it serves the pattern (not routing, not linear), the table says so."""
    env = {**os.environ, "ATTNCC_CACHE_DIR": str(tmp_path), "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    res = subprocess.run([sys.executable, "-m", "attncc", "check-gpu", "--arch", arch, "--dtype", "bfloat16", "float32",
                          "--head-dim", "64", "--only", "softcap_causal", "swin_shifted", "biformer_routing", "linear_causal",
                          "--jobs", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("| ") and f"| {arch} |" in ln]
    assert len(rows) == 16 and not any("FAILED" in ln for ln in rows)
    assert sum("| biformer_routing |" in ln for ln in rows) == 2          # its prologue kernels build too
    for kernel in ("dq", "dkv"):        # softcap_causal and swin_shifted (its rel_pos_bias gradient), 2 dtypes
        assert sum(f"| {kernel} |" in ln for ln in rows) == 4
    assert "16 of 16 kernels compiled and fit; 0 failed" in res.stdout


def test_check_gpu_exits_non_zero_when_a_kernel_does_not_fit(monkeypatch, capsys):
    from attncc import cli
    from attncc.ir import plan as ir_plan
    # (successful compiles run in a subprocess above: triton's LLVM must not meet TVM's in one process)
    monkeypatch.setitem(ir_plan.FAST_MEMORY, "sm_80", ir_plan.FastMemory("tiny", 1024, "smem"))
    rows = cli.gpu_job("causal", "sm_80", "float16", 64)
    assert "no tile of head dims d=64, dv=64 fits tiny (1024 bytes)" in rows[0]["error"]
    assert "FAILED" in cli.gpu_table(rows)


def test_default_gpu_plans_come_from_the_shared_memory_model():
    from attncc.ir.plan import FAST_MEMORY, shared_memory
    want = {  # (block_m, block_n, warps, stages) for d <= 64, d = 128 (bench/results/gpu_plans.md for sm_90)
        "sm_80": ((128, 64, 4, 3), (128, 64, 8, 3)),
        "sm_90": ((64, 64, 4, 2), (128, 64, 4, 2)),
    }
    for arch in ("sm_80", "sm_90"):
        for d, dtype in ((64, "float16"), (128, "bfloat16"), (256, "float16"), (256, "float32")):
            kern = ac.compile(ac.Attention(ac.causal()), backend="triton")
            p = kern.lower(Dims(1, 1, 4096, 4096, d, d), dtype, target=arch).program.groups[0].plan
            assert shared_memory(p, d, d, 4 if dtype == "float32" else 2) <= FAST_MEMORY[arch].bytes
            if d <= 128 and dtype != "float32":
                assert (p.block_m, p.block_n, p.num_warps, p.num_stages) == want[arch][d > 64]
    # gathered sources with PARTIAL tiles (shifted windows) run 8 warps on sm_90, others 4
    for shift, warps in ((3, 8), (0, 4)):
        kern = ac.compile(ac.Attention(ac.window2d((56, 56), (7, 7), (shift, shift))), backend="triton")
        grp = kern.lower(Dims(1, 1, 3136, 3136, 64, 64), "float16", target="sm_90").program.groups[0]
        assert grp.gather.kind != "dense" and grp.plan.num_warps == warps


@pytest.mark.parametrize("grid,window", [((18, 16), (17, 16)), ((9, 32), (8, 32))])
def test_triton_linear_over_multi_tile_partial_windows(grid, window):
    """Found by make fuzz (seed 4096008613): a key tile of FULL and EMPTY atoms (the partial
    window's) is PARTIAL, though no atom is; the quadratic-form loop was not generated."""
    spec = ac.Attention(ac.window2d(grid, window), normalizer=ac.linear("elu1"))
    n = grid[0] * grid[1]
    q, k, v = make_inputs(Dims(1, 1, n, n, 8, 8))
    check_against_oracle(spec, q, k, v, backend="triton")


def test_tvm_linear_over_multi_tile_partial_windows():
    """The same case on TVM (the fuzz failure above is Triton's alone)."""
    spec = ac.Attention(ac.window2d((18, 16), (17, 16)), normalizer=ac.linear("elu1"))
    q, k, v = make_inputs(Dims(1, 1, 288, 288, 8, 8))
    check_against_oracle(spec, q, k, v, backend="tvm")
