"""The TVM backend (CPU kernels generated from the IR, compiled through LLVM) against the
dense fp64 oracle, judged against the error of the same maths in the input dtype; its
gradients, compiled-kernel cache and thread-pool configuration."""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import attncc as ac
from attncc.dsl import patterns as P
from attncc.ir.program import Dims
from attncc.ops import CATALOGUE

from attncc.runtime.inputs import layouts
from oracle import check_against_oracle, make_inputs
from strategies import multi_tile_specs, random_spec_test, specs
from test_reference import CASES


def tvm_can(spec):
    """Routing is generated alone (with modifiers); composed with other patterns it is not."""
    routed = any(isinstance(p, P.Routing) for p in spec.pattern.leaves())
    return not routed or (isinstance(spec.pattern, P.Routing) and not isinstance(spec.normalizer, type(ac.linear())))


TVM_CASES = sorted(n for n, (spec, _, _) in CASES.items() if tvm_can(spec))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", TVM_CASES)
def test_tvm_matches_dense_oracle(name, dtype):
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims, dtype)
    check_against_oracle(spec, q, k, v, tensors, backend="tvm")


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if tvm_can(e.spec)],
                         ids=[e.name for e in CATALOGUE if tvm_can(e.spec)])
def test_tvm_catalogue_matches_dense_oracle(entry):
    q, k, v, tensors = entry.inputs()
    check_against_oracle(entry.spec, q, k, v, tensors, backend="tvm")


@random_spec_test(40)
@given(case=specs(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_tvm_random_specs_match_dense_oracle(case, dtype):
    spec, dims, tensors = case
    assume(tvm_can(spec))
    q, k, v = make_inputs(dims, dtype)
    check_against_oracle(spec, q, k, v, tensors, backend="tvm")


@random_spec_test(60)
@given(case=multi_tile_specs(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_tvm_multi_tile_specs_match_dense_oracle(case, dtype):
    """Groups of three or more 64 x 64 tiles each way: the online rescale across key tiles, the
    tile tables and the padding of partial tiles at random shapes."""
    spec, dims, tensors = case
    assume(tvm_can(spec))
    q, k, v = make_inputs(dims, dtype)
    check_against_oracle(spec, q, k, v, tensors, backend="tvm")


@pytest.mark.parametrize("grid, regions, topk, dims", [
    ((56, 56), (7, 7), 1, Dims(1, 2, 3136, 3136, 32, 32)),       # BiFormer-T's stage shapes (batch 1, 2 heads)
    ((28, 28), (7, 7), 4, Dims(1, 2, 784, 784, 32, 32)),
    ((14, 14), (7, 7), 16, Dims(2, 2, 196, 196, 32, 32)),
    ((6, 10), (3, 2), 5, Dims(2, 3, 60, 60, 16, 24)),            # regions of 2 x 5 tokens, dv != d
])
def test_tvm_routing_matches_the_oracle_at_biformer_shapes(grid, regions, topk, dims):
    spec = ac.Attention(ac.routing(grid, regions, topk), score_mods=ac.softcap(20.0))
    q, k, v = make_inputs(dims)
    check_against_oracle(spec, q, k, v, backend="tvm")


def test_tvm_routing_reads_routed_regions_through_the_kernels_own_table():
    """The prologue writes route_idx inside the kernel; K is packed once per region (no
    topk-fold copy) and every key tile is read through route_idx; the table equals the
    reference routing's top-k set."""
    from attncc.reference.routing import routing_tables
    spec = ac.Attention(ac.routing((8, 8), (4, 4), 3))
    kern = ac.compile(spec, backend="tvm")
    q, k, v = make_inputs(Dims(2, 2, 64, 64, 16, 16))
    kern(q, k, v)
    comp = next(iter(kern._compiled.values()))
    src = comp.source
    assert "route_idx[bs // 16, bs % 16, kk] = best[0]" in src and "rsel = route_idx[b, g, kb]" in src
    assert "kpk = T.alloc_buffer((2, 2, 16, 1, 16, 8)" in src     # [B, H, regions, 1, d, 4 tokens padded to 8]
    assert "kpk[b, hh, rsel, 0, dd" in src and "v[b, h, ktk[rsel, 0, c]" in src
    low = kern.lower(Dims(2, 2, 64, 64, 16, 16)).program
    want = routing_tables(low.prologues[0], q, k, low.scale, ("m", "i"))["i"]
    assert torch.equal(comp.route_idx.long().sort(-1).values, want.sort(-1).values)


def test_return_routing_gives_the_routed_regions_on_every_backend():
    spec = ac.Attention(ac.routing((8, 8), (2, 4), 3))
    q, k, v = make_inputs(Dims(2, 2, 64, 64, 16, 16))
    tables = []
    for backend in ("tvm", "reference"):
        out, lse, idx = ac.compile(spec, backend=backend)(q, k, v, return_lse=True, return_routing=True)
        assert out.shape == (2, 2, 64, 16) and lse.shape == (2, 2, 64) and idx.shape == (2, 8, 3)
        assert idx.dtype == torch.int64 and not idx.requires_grad
        tables.append(idx.sort(-1).values)
    assert torch.equal(*tables)
    with pytest.raises(ValueError, match=r"return_routing=True needs a spec with ac.routing\(...\)"):
        ac.compile(ac.Attention(), backend="tvm")(q, k, v, return_routing=True)


def test_tvm_gradients_recompute_through_the_reference():
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), score_mods=ac.rel_pos_bias("rpb", (4, 4)))
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 64, 64, 16, 16)))
    rpb = torch.randn(49, 2, requires_grad=True)
    grads = []
    for kern in (ac.compile(spec, backend="tvm"), ac.reference(spec)):
        out, lse = kern(q, k, v, return_lse=True, rpb=rpb)
        grads.append(torch.autograd.grad(out.square().sum() + lse.sum(), [q, k, v, rpb]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tvm_explain_shows_the_generated_source_and_compile_time():
    text = ac.compile(ac.Attention(ac.causal()), backend="tvm").explain(dims=Dims(1, 2, 64, 64, 16, 16), file=None)
    assert "=== generated TVMScript" in text and "@T.prim_func" in text and "T.parallel(" in text
    assert "fexp(" in text and "for kk in range(tcnt[g, qi]):" in text


CACHE_SCRIPT = textwrap.dedent("""
    import json, time, attncc as ac
    from attncc.ir.program import Dims
    kern = ac.compile(ac.Attention(ac.sliding_window(7, 2), score_mods=ac.alibi()), backend="tvm")
    t0 = time.perf_counter()
    text = kern.explain(dims=Dims(1, 2, 96, 96, 16, 16), file=None)
    print(json.dumps({"disk": "loaded from the disk cache" in text, "seconds": time.perf_counter() - t0}))
""")


def test_tvm_kernels_are_cached_on_disk_across_processes(tmp_path):
    env = {**os.environ, "ATTNCC_CACHE_DIR": str(tmp_path)}
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert not runs[0]["disk"] and runs[1]["disk"]
    assert list(tmp_path.glob("tvm/*.so"))


def test_tvm_thread_pool_does_not_spin_and_runs_torchs_thread_count():
    from attncc.codegen.tvm import build        # configures the pool before TVM starts it
    assert build.tvm is not None and os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "0"
    # TVM's own default is half the logical CPUs (one thread on a 2-vCPU machine)
    script = "import torch, attncc.codegen.tvm.build, os; print(os.environ['TVM_NUM_THREADS'], torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    got, want = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                               timeout=120).stdout.split()
    assert got == want


SIGMOID_CASES = sorted(n for n in TVM_CASES if isinstance(CASES[n][0].normalizer, type(ac.sigmoid())))


@pytest.mark.parametrize("name", SIGMOID_CASES)
def test_tvm_sigmoid_without_lse_skips_statistics_and_still_matches(name):
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims)
    check_against_oracle(spec, q, k, v, tensors, lse=False, backend="tvm")


@pytest.mark.parametrize("dims", [Dims(2, 2, 100, 100, 16, 16), Dims(1, 2, 150, 300, 32, 48)], ids=str)
def test_tvm_sigmoid_weights_of_full_tiles_come_out_of_the_register_tile(dims):
    # FULL tiles (here with padding keys past the extent) skip the mask and normalizer passes
    spec = ac.Attention(normalizer=ac.sigmoid(-2.0))
    q, k, v = make_inputs(dims)
    check_against_oracle(spec, q, k, v, lse=False, backend="tvm")
    comp = ac.compile(spec, backend="tvm").compiled(dims, "float32", {})
    src = "".join(c.source for c, _ in comp.kernels(False))
    assert "if cls == 2:" in src and "T.Select(cg * " in src


@pytest.mark.parametrize("shift", [0, 2])
def test_tvm_window_bias_is_one_table_per_call_and_token_tables_are_not(shift):
    """Swin's relative position bias reads the same entry in every window: the kernel reads a
    per-call [heads, tile] table of it (hpair) instead of gathering per window; a bias
    indexed by tokens differs between windows and stays a per-pair read."""
    grid, win = (12, 8), (4, 4)
    dims = Dims(2, 3, 96, 96, 16, 16)
    rpb = ac.Attention(ac.window2d(grid, win, (shift, shift)), score_mods=ac.rel_pos_bias("rpb", win))
    tok = ac.Attention(ac.window2d(grid, win, (shift, shift)),
                       score_mods=ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q, k]))
    cases = ((rpb, {"rpb": torch.randn(49, 3)}, True), (tok, {"bias": torch.randn(3, 96, 96)}, False))
    for spec, tensors, tiled in cases:
        q, k, v = make_inputs(dims)
        check_against_oracle(spec, q, k, v, tensors, backend="tvm")
        comp = ac.compile(spec, backend="tvm").compiled(dims, "float32", layouts(spec, tensors, dims))
        src = "".join(c.source for c, _ in comp.kernels(True))
        assert ("hpair0[hh, r, c] = " in src) == tiled


@pytest.mark.parametrize("d, dv", [(16, 16), (32, 48), (64, 64), (96, 20), (128, 128), (256, 256), (256, 40)],
                         ids=lambda x: str(x))
@pytest.mark.parametrize("spec", [ac.Attention(ac.sliding_window(24)),
                                  ac.Attention(ac.window2d((10, 8), (5, 4), (2, 2)), normalizer=ac.sigmoid())],
                         ids=["sliding", "shifted_window_sigmoid"])
def test_tvm_head_dims_16_to_256(spec, d, dv):
    # value dims that are not a multiple of 8 run narrower PV register tiles (V is read in place)
    q, k, v = make_inputs(Dims(1, 2, 80, 80, d, dv))
    check_against_oracle(spec, q, k, v, backend="tvm")


def odd_strided(x, seed):
    """x [B, H, N, d] as a token-major view with padded rows and an odd offset ([B, N, H + 1,
    d + 3] storage), as a packed qkv projection's q, k and v are."""
    B, H, N, d = x.shape
    buf = torch.randn(B, N, H + 1, d + 3, generator=torch.Generator().manual_seed(seed)).to(x.dtype)
    view = buf[:, :, 1:, 2:2 + d].transpose(1, 2)
    view.copy_(x)
    return view


@pytest.mark.parametrize("name", TVM_CASES)
def test_tvm_reads_strided_operands_in_place_and_writes_token_major(name):
    """q, k, v that are views (a packed projection's layout) are read in place by a kernel
    specialised on their strides, with the same results as compact copies, and the output
    comes back token-major ([B, N, H, dv] memory: the output projection's transpose is free)."""
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims)
    kern = ac.compile(spec, backend="tvm")
    lse = not isinstance(spec.normalizer, type(ac.linear()))
    want = kern(q, k, v, return_lse=lse, **tensors)
    qs, ks, vs = (odd_strided(x, i) for i, x in enumerate((q, k, v)))
    got = kern(qs, ks, vs, return_lse=lse, **tensors)
    comp = kern.compiled(dims, "float32", layouts(spec, tensors, dims))
    assert "strides=(" in comp.source, "the strided call did not get a strided kernel"
    for a, b in zip(got if lse else (got,), want if lse else (want,)):
        assert torch.equal(a, b)
    out = got[0] if lse else got
    assert out.transpose(1, 2).is_contiguous()


def test_tvm_parallel_loops_run_on_torchs_openmp_threads():
    """The kernels' parallel launch is pointed at torch's OpenMP runtime (threads.py), unless
    ATTNCC_TVM_THREADS=tvm keeps TVM's pool; both give the same results."""
    script = textwrap.dedent("""
        import torch, attncc as ac
        from attncc.ir.program import Dims
        q, k, v = (torch.randn(2, 4, 512, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
        kern = ac.compile(ac.Attention(ac.causal()), backend="tvm")
        out = kern(q, k, v)
        comp = kern.compiled(Dims(2, 4, 512, 512, 32, 32), "float32", {})
        print([c.omp for c, _ in comp.groups], out.double().sum().item())
    """)
    runs = {}
    for mode in ("omp", "tvm"):
        env = dict(os.environ, ATTNCC_TVM_THREADS=mode)
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        runs[mode] = res.stdout.strip()
    assert runs["omp"].startswith("[True]") and runs["tvm"].startswith("[False]")
    assert runs["omp"].split("]")[1] == runs["tvm"].split("]")[1]


def test_tvm_strided_windows_take_a_windows_heads_one_after_another():
    """Token-major q, k, v views with one query tile per window: consecutive items are the
    heads of one window (items.heads_inner), with the results of the compact kernel, which
    keeps heads before windows."""
    spec = ac.Attention(ac.window2d((14, 14), (7, 7), (3, 3)), score_mods=ac.rel_pos_bias("rpb", (7, 7)))
    dims = Dims(2, 3, 196, 196, 16, 16)
    tensors = {"rpb": torch.randn(169, 3, generator=torch.Generator().manual_seed(1))}
    q, k, v = make_inputs(dims)
    kern = ac.compile(spec, backend="tvm")
    want = kern(q, k, v, **tensors)
    compact = kern.compiled(dims, "float32", layouts(spec, tensors, dims)).source
    got = kern(*(odd_strided(x, i) for i, x in enumerate((q, k, v))), **tensors)
    strided = kern.compiled(dims, "float32", layouts(spec, tensors, dims)).source
    assert torch.equal(got, want)
    check_against_oracle(spec, q, k, v, tensors, backend="tvm")
    assert compact.index("hh = item //") < compact.index("g = item //")
    assert strided.index("g = item //") < strided.index("hh = item //")


@pytest.mark.parametrize("d", [32, 24, 20], ids=["d32", "d24", "d20"])
def test_tvm_key_tiles_transpose_by_shuffles_where_head_dims_allow(d):
    """K's key tile is packed transposed in 16 x 16 (d=32) or 8 x 8 (d=24) blocks of shuffled
    vectors (microkernel.pack_tile); d=20 divides neither and gathers a lane at a time. All
    three match the oracle, on a pattern whose keys are gathered (axial columns)."""
    spec = ac.Attention(ac.axial((12, 12), 0))
    dims = Dims(1, 2, 144, 144, d, d)
    q, k, v = make_inputs(dims)
    check_against_oracle(spec, q, k, v, {}, backend="tvm")
    source = ac.compile(spec, backend="tvm").compiled(dims, "float32", {}).source
    blocks = {32: "T.Ramp(jb * 16, 1, 16)", 24: "T.Ramp(jb * 8, 1, 8)"}
    if d in blocks:
        assert "T.Shuffle(" in source and blocks[d] in source
    else:
        assert "T.Shuffle(" not in source and "kpl[j, c] = k[b, h, ktk[g, kb, c], j]" in source


def test_tvm_gathered_tasks_prefetch_the_next_items_rows():
    """Gathered groups (and one-tile dense ones) prefetch the next item's q, k and v rows
    (items.prefetches); a dense group of many query tiles, whose rows follow each other, does
    not; nor does a task of one item. Results match the oracle either way."""
    cases = [(ac.Attention(ac.window2d((28, 28), (7, 7), (3, 3))), Dims(2, 3, 784, 784, 16, 16), True),
             (ac.Attention(), Dims(8, 8, 100, 100, 16, 16), True),
             (ac.Attention(ac.causal()), Dims(1, 2, 640, 640, 16, 16), False)]
    for spec, dims, want in cases:
        q, k, v = make_inputs(dims)
        check_against_oracle(spec, q, k, v, {}, backend="tvm")
        source = ac.compile(spec, backend="tvm").compiled(dims, "float32", {}).source
        assert ("llvm.prefetch" in source) == want, spec
        if want:
            assert "T.address_of(q[nb, nh, T.max(qtk[ng, nqi, r], 0), 0])" in source
            assert "T.address_of(v[nb, nh, ktk[ng, nkb, r], 0])" in source


_ELEMENTWISE = '''
from tvm.script import tirx as T
from attncc.codegen.tvm.intrin import fexp_any, flog_any, ftanh


def build():
    @T.prim_func
    def main(x: T.Buffer((NN,), "float32"), o: T.Buffer((NN,), "float32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for i0 in range(NN // 16):
            for i1 in T.vectorized(16):
                o[i0 * 16 + i1] = FN(x[i0 * 16 + i1])
    return main
'''


@pytest.mark.parametrize("fn, ref, ulps", [("ftanh", np.tanh, 1.5), ("fexp_any", np.exp, 2.5),
                                           ("flog_any", np.log, 1.0)])
def test_tvm_vectorized_tanh_exp_log_match_libm_with_its_special_values(fn, ref, ulps):
    """intrin.py's tanh, exp and log (what score modifiers' tanh / exp / log print to, so the
    score loop stays vector code) against float64 numpy, in float32 ulps, over random values
    across the float range and the special ones: +-0, +-inf, NaN, subnormals, overflow."""
    from attncc.codegen.tvm.build import compile_source
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 1e-40, 1.17e-38, 88.0, 88.5, 88.72, 88.73, 89.0,
               -87.0, -87.5, -88.0, -103.0, -200.0, 1.0, -1.0, 0.625, -0.625, 0.6249, 1e-8, -1e-8, 3.4e38]
    x = np.concatenate([special, rng.standard_normal(2000) * 5, np.exp(rng.uniform(-90, 88, 2000)),
                        -np.exp(rng.uniform(-90, 88, 500))])
    x = np.concatenate([x, np.ones(-len(x) % 16)]).astype(np.float32)
    src = _ELEMENTWISE.replace("NN", str(len(x))).replace("FN", fn)
    out = torch.empty(len(x))
    compile_source(src, ["test"]).fn(torch.tensor(x), out)        # torch.tensor: 64-byte aligned
    got = out.numpy()
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64))
        want32 = want.astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want32))
    assert np.array_equal(np.isinf(got), np.isinf(want32)) and np.all(got[np.isinf(got)] == want32[np.isinf(got)])
    fin = np.isfinite(want32) & (np.abs(want32) >= np.finfo(np.float32).tiny)
    err = np.abs(got[fin] - want[fin]) / np.spacing(np.abs(want32[fin])).astype(np.float64)
    assert err.max() <= ulps, (fn, x[fin][err.argmax()], got[fin][err.argmax()], want[fin][err.argmax()])
    sub = np.isfinite(want32) & ~fin                               # subnormal results: absolute
    assert np.all(np.abs(got[sub] - want[sub]) <= 1e-43)


def test_tvm_score_modifiers_with_transcendentals_stay_vector_code():
    """Soft-capping's tanh, ALiBi's 2 ** x and a user modifier's exp, log, sqrt and x ** 2 print
    to intrin.py's vectorizable forms inside explicitly vectorized loops (T.tanh / T.exp /
    T.log / T.pow on a vector become scalar libm calls), and match the oracle."""
    dims = Dims(1, 2, 160, 160, 32, 32)
    q, k, v = make_inputs(dims)
    user = ac.score_mod(lambda s, b, h, qi, kj: torch.log(1 + torch.exp(s)) - torch.sqrt(s * s + 1) + s ** 2 / 8)
    for spec in (ac.Attention(ac.causal(), score_mods=(ac.softcap(5.0),)),
                 ac.Attention(ac.causal(), score_mods=(ac.alibi(),)),
                 ac.Attention(score_mods=(user,))):
        check_against_oracle(spec, q, k, v, {}, backend="tvm")
        source = ac.compile(spec, backend="tvm").compiled(dims, "float32", {}).source
        assert not any(f in source for f in ("T.tanh(", "T.exp(", "T.log(", "T.pow(")), spec
        assert re.search(r"for i in T\.vectorized\((\d+)\):\n\s+s\[r, cc \* \1 \+ i\] = ", source), spec
    source = ac.compile(ac.Attention(score_mods=(ac.softcap(5.0),)), backend="tvm").compiled(dims, "float32", {}).source
    assert "* ftanh((T.float32(0.2) * s[r, cc * " in source
