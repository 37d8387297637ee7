"""Gradients of the generated kernels (issue 23) against the float64 autograd of the dense
oracle, judged like the forward: the parametrized suite, the catalogue, multi-tile shapes
and random specs; the generated backward's determinism; which specs it serves."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import attncc as ac
from attncc.ir.program import Dims
from attncc.ops import CATALOGUE
from attncc.runtime.autograd import BackwardWarning

from oracle import check_grads_against_oracle, make_inputs
from strategies import multi_tile_specs, random_spec_test, specs
from test_reference import CASES
from test_tvm import TVM_CASES, tvm_can


def generated(spec, dims, tensors, backend="tvm"):
    """Whether the backend runs its generated backward for this call (no BackwardWarning)."""
    q, k, v = (x.requires_grad_() for x in make_inputs(dims))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        ac.compile(spec, backend=backend)(q, k, v, **tensors).sum().backward()
    return not any(issubclass(w.category, BackwardWarning) for w in got)


# linear attention's backward is not generated yet: it recomputes through the reference, whose
# fp32 gradient for the identity feature map (denominators near 0, gradients up to 2e4) is off
# by 3.6x the same-dtype yardstick (0.97 vs 0.26); the generated one must meet the bar
GRAD_CASES = [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="linear backward not generated yet; "
                                                                           "the reference's recompute misses the bar"))
              if n == "linear_identity" else n for n in TVM_CASES]


def recomputes(spec):
    """Whether a spec's backward still recomputes through the reference: linear attention
    (issue 23's open item)."""
    return isinstance(spec.normalizer, type(ac.linear()))


def check_generated_grads(spec, q, k, v, tensors, **kw):
    """check_grads_against_oracle, and the backward is generated unless `recomputes` says not."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        check_grads_against_oracle(spec, q, k, v, tensors, backend="tvm", **kw)
    warned = [str(w.message) for w in got if issubclass(w.category, BackwardWarning)]
    assert bool(warned) == recomputes(spec), warned or "the backward should recompute"


@pytest.mark.parametrize("name", GRAD_CASES)
def test_tvm_gradients_match_dense_oracle(name):
    spec, dims, tensors = CASES[name]
    check_generated_grads(spec, *make_inputs(dims), tensors)


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if tvm_can(e.spec)],
                         ids=[e.name for e in CATALOGUE if tvm_can(e.spec)])
def test_tvm_catalogue_gradients_match_dense_oracle(entry):
    q, k, v, tensors = entry.inputs()
    check_generated_grads(entry.spec, q, k, v, tensors)


# several tiles each way (the transposed tables, partial tiles, fully masked rows), every
# normalizer the generated backward serves, with and without score modifiers
MULTI_TILE = {
    "causal": (ac.Attention(ac.causal()), Dims(2, 2, 300, 300, 16, 16)),
    "causal_bottom_right_softcap": (ac.Attention(ac.causal("bottom_right"), score_mods=ac.softcap(5.0)),
                                    Dims(1, 2, 260, 390, 16, 16)),
    "sliding_sigmoid": (ac.Attention(ac.sliding_window(40), normalizer=ac.sigmoid()), Dims(1, 2, 300, 300, 16, 24)),
    "shifted_windows_alibi": (ac.Attention(ac.window2d((14, 14), (7, 7), (3, 3)), score_mods=ac.alibi()),
                              Dims(2, 2, 196, 196, 32, 32)),
    "axial_columns": (ac.Attention(ac.axial((20, 18), 0)), Dims(1, 1, 360, 360, 8, 8)),
    "partial_window_of_many_tiles": (ac.Attention(ac.window2d((18, 16), (17, 16))), Dims(1, 1, 288, 288, 8, 8)),
    "neighborhood_dilated": (ac.Attention(ac.neighborhood2d((20, 18), (5, 3), (2, 1)), score_mods=ac.softcap(4.0)),
                             Dims(1, 1, 360, 360, 8, 8)),
    "routing_biformer_28": (ac.Attention(ac.routing((28, 28), (7, 7), 4), score_mods=ac.softcap(20.0)),
                            Dims(2, 2, 784, 784, 16, 16)),
    "full_m_ne_n": (ac.Attention(ac.full(), score_mods=ac.score_mod(lambda s, b, h, q, k: s * 0.5 + (q - k) * 0.01)),
                    Dims(1, 2, 310, 420, 16, 8)),
}


@pytest.mark.parametrize("name", sorted(MULTI_TILE))
def test_tvm_multi_tile_gradients_are_generated_and_match(name):
    spec, dims = MULTI_TILE[name]
    assert generated(spec, dims, {}), "the generated backward should serve this spec"
    check_grads_against_oracle(spec, *make_inputs(dims), backend="tvm")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_tvm_gradients_in_half_precision(dtype):
    """q, k, v in half precision, the bias table in float32: its gradient comes back in float32."""
    spec = ac.Attention(ac.window2d((16, 16), (8, 8), (4, 4)), score_mods=(ac.rel_pos_bias("rpb", (8, 8)),
                                                                           ac.softcap(10.0)))
    rpb = torch.randn(225, 2, generator=torch.Generator().manual_seed(3)) * 0.5
    check_grads_against_oracle(spec, *make_inputs(Dims(1, 2, 256, 256, 16, 16), dtype), {"rpb": rpb}, backend="tvm",
                               table_grads=True)


@random_spec_test(10)
@given(case=specs())
def test_tvm_random_spec_gradients_match_dense_oracle(case):
    spec, dims, tensors = case
    assume(tvm_can(spec))
    check_generated_grads(spec, *make_inputs(dims), tensors)


@random_spec_test(6)
@given(case=multi_tile_specs())
def test_tvm_multi_tile_random_spec_gradients_match_dense_oracle(case):
    spec, dims, tensors = case
    assume(tvm_can(spec))
    check_generated_grads(spec, *make_inputs(dims), tensors)


def _grads(spec, dims, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v = (x.requires_grad_() for x in make_inputs(dims))
        out, lse = ac.compile(spec, backend="tvm")(q, k, v, return_lse=True)
        (out.square().sum() + lse.sum()).backward()
        return q.grad, k.grad, v.grad
    finally:
        torch.set_num_threads(before)


def test_tvm_gradients_are_bit_identical_across_runs_and_thread_counts():
    spec = ac.Attention(ac.causal(), score_mods=ac.alibi())
    dims = Dims(2, 2, 300, 300, 16, 16)
    first = _grads(spec, dims, 2)
    for threads in (2, 1):
        for a, b in zip(first, _grads(spec, dims, threads)):
            assert torch.equal(a, b), f"gradients differ at {threads} threads"


@pytest.mark.parametrize("spec, why", [
    (ac.Attention(ac.causal(), normalizer=ac.linear()), "linear attention"),
])
def test_specs_without_a_generated_backward_warn_and_still_differentiate(spec, why):
    dims = Dims(1, 2, 64, 64, 16, 16)
    tensors = {"gamma": torch.rand(2)} if "gamma" in repr(spec) else {}
    q, k, v = (x.requires_grad_() for x in make_inputs(dims))
    out = ac.compile(spec, backend="tvm")(q, k, v, **tensors)
    with pytest.warns(BackwardWarning, match=why):
        out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


CAPTURED = {
    "swin_rpb": (ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), score_mods=ac.rel_pos_bias("rpb", (4, 4))),
                 Dims(2, 2, 64, 64, 16, 16), {"rpb": (49, 2)}),
    "swin_rpb_multi_tile_softcap": (ac.Attention(ac.window2d((32, 32), (16, 16), (8, 8)),
                                                 score_mods=(ac.rel_pos_bias("rpb", (16, 16)), ac.softcap(8.0))),
                                    Dims(1, 2, 1024, 1024, 16, 16), {"rpb": (961, 2)}),
    "score_mod_reads_two_tables": (ac.Attention(ac.causal(), score_mods=ac.score_mod(
        lambda s, b, h, q, k, slope, gate: s * gate[h] - slope[h] * (q - k))),
        Dims(1, 3, 300, 300, 16, 16), {"slope": (3,), "gate": (3,)}),
    "decay2d_gamma_multi_tile": (ac.Attention(ac.window2d((24, 24), (12, 12)), post_mods=ac.decay2d((24, 24), "gamma")),
                                 Dims(1, 2, 576, 576, 16, 16), {"gamma": (2,)}),
    "sigmoid_decay_then_clip": (ac.Attention(ac.causal(), normalizer=ac.sigmoid(),
                                             post_mods=(ac.decay2d((15, 20), "gamma"), ac.clipped(1.1, -0.1))),
                                Dims(1, 2, 300, 300, 16, 16), {"gamma": (2,)}),
    "sigmoid_bias_table": (ac.Attention(ac.sliding_window(20), normalizer=ac.sigmoid(), score_mods=ac.score_mod(
        lambda s, b, h, q, k, bias: s + bias[h, q - k])), Dims(1, 2, 100, 100, 8, 8), {"bias": (2, 100)}),
}


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_tvm_captured_tensor_gradients_are_generated_and_match(name):
    spec, dims, shapes = CAPTURED[name]
    gen = torch.Generator().manual_seed(3)
    tensors = {n: torch.randn(s, generator=gen) * 0.5 for n, s in shapes.items()}
    q, k, v = (x.requires_grad_() for x in make_inputs(dims))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackwardWarning)         # generated, not recomputed
        ac.compile(spec, backend="tvm")(q, k, v, **{n: x.clone().requires_grad_() for n, x in tensors.items()}) \
            .sum().backward()
    check_grads_against_oracle(spec, *make_inputs(dims), tensors, backend="tvm", table_grads=True)


def test_tvm_captured_tensor_gradients_are_bit_identical_across_thread_counts():
    spec, dims, shapes = CAPTURED["swin_rpb_multi_tile_softcap"]
    rpb = torch.randn(shapes["rpb"], generator=torch.Generator().manual_seed(3))
    got = []
    for threads in (2, 1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            table = rpb.clone().requires_grad_()
            q, k, v = make_inputs(dims)
            ac.compile(spec, backend="tvm")(q, k, v, rpb=table).square().sum().backward()
            got.append(table.grad)
        finally:
            torch.set_num_threads(before)
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])


def test_double_backward_raises_naming_the_op():
    spec = ac.Attention(ac.causal())
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 40, 40, 16, 16)))
    out = ac.compile(spec, backend="tvm")(q, k, v)
    with pytest.raises(RuntimeError, match="attncc::attention .*double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_training_step_runs_the_generated_backward(compiler):
    """torch.compile(fullgraph=True) over a training step: the custom op's backward runs the
    generated kernels (no BackwardWarning), rpb's gradient included."""
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), score_mods=ac.rel_pos_bias("rpb", (4, 4)))
    kern = ac.compile(spec, backend="tvm")
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(2, 2, 64, 64, 16, 16)))
    rpb = torch.randn(49, 2, requires_grad=True)

    def step(q, k, v, rpb):
        out, lse = kern(q, k, v, return_lse=True, rpb=rpb)
        return out.square().sum() + lse.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error", BackwardWarning)
        got = torch.autograd.grad(torch.compile(step, fullgraph=True, backend=compiler)(q, k, v, rpb), [q, k, v, rpb])
    out, lse = ac.reference(spec)(q, k, v, return_lse=True, rpb=rpb)
    want = torch.autograd.grad(out.square().sum() + lse.sum(), [q, k, v, rpb])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


TRAIN_MEMORY = textwrap.dedent("""
    import json, resource, sys, torch
    import attncc as ac
    torch.set_num_threads(1)
    B, H, N, d = 1, 8, 4096, 64
    kern = ac.compile(ac.Attention(ac.sliding_window(256)), backend="tvm")
    q, k, v = (torch.randn(B, H, N, d, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, N, d)
    from attncc.ir.program import Dims
    comp = kern.compiled(Dims(B, H, N, N, d, d), "float32", {})
    assert comp.backward_why_not() is None                  # loads (or compiles) the backward kernels
    if sys.argv[1] == "measure":
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kern(q, k, v).backward(g)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth": (peak - base) * 1024, "dense": B * H * N * N * 4, "tensor": q.numel() * 4}))
""")


def test_tvm_training_memory_has_no_n_by_m_buffer(tmp_path):
    """Peak RSS growth of a forward + backward at N=4096, sliding window 256 (B1 H8 d64), in a
    fresh process whose kernels an earlier process compiled into the disk cache (an LLVM
    compile's own peak would hide the run's): O(N d), far below one N x M score matrix."""
    env = {**os.environ, "ATTNCC_CACHE_DIR": str(tmp_path)}
    for step in ("compile", "measure"):
        res = subprocess.run([sys.executable, "-c", TRAIN_MEMORY, step],
                             capture_output=True, text=True, timeout=900, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    # q, k, v, their gradients, out, lse, dO and the packed K and V tiles: about 12 tensors of q's size
    assert m["growth"] < 16 * m["tensor"] and m["growth"] < 0.25 * m["dense"], m


def test_explain_shows_the_backward_kernels():
    spec = ac.Attention(ac.causal(), score_mods=ac.softcap(5.0))
    kern = ac.compile(spec, backend="tvm")
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 300, 300, 16, 16)))
    assert "compiled at the first backward" in kern.explain(file=None)
    kern(q, k, v).sum().backward()
    text = kern.explain(file=None)
    assert "=== generated backward TVMScript" in text and "(backward: dQ)" in text and "(backward: dK, dV)" in text
    # one query tile and one key tile per window: one kernel computes dQ, dK and dV
    win = ac.compile(ac.Attention(ac.window2d((8, 8), (4, 4))), backend="tvm")
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 64, 64, 16, 16)))
    win(q, k, v).sum().backward()
    assert "(backward: dQ, dK, dV)" in win.explain(file=None)
    lin = ac.compile(ac.Attention(ac.causal(), normalizer=ac.linear()), backend="tvm")
    lin(*make_inputs(Dims(1, 2, 64, 64, 16, 16)))
    assert "backward: recomputes through the eager reference (linear attention's" in lin.explain(file=None)


def test_torch_compile_routed_training_step_reads_the_forward_routes():
    """Under torch.compile the backward op has no routing table from the forward: it reruns
    the forward kernel for it (the top-k selection is not differentiated)."""
    spec = ac.Attention(ac.routing((8, 8), (4, 4), 3))
    kern = ac.compile(spec, backend="tvm")
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(2, 2, 64, 64, 16, 16)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackwardWarning)
        got = torch.autograd.grad(torch.compile(lambda q, k, v: kern(q, k, v).square().sum(), fullgraph=True,
                                                backend="aot_eager")(q, k, v), [q, k, v])
    want = torch.autograd.grad(ac.reference(spec)(q, k, v).square().sum(), [q, k, v])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
