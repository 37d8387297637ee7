"""Gradients of the generated Triton backward kernels (codegen/triton/backward.py) under
Triton's interpreter, against the float64 autograd of the dense oracle, judged like the
forward: a representative part of the parametrized suite, multi-tile shapes, random specs,
half precision, captured tensors; fully masked rows and NaN queries; determinism; which
specs it serves."""
import warnings

import pytest
import torch
from hypothesis import assume, given

import attncc as ac
from attncc.codegen.triton import backward as triton_backward
from attncc.ir.program import Dims
from attncc.runtime.autograd import BackwardWarning

from oracle import check_grads_against_oracle, make_inputs
from strategies import multi_tile_specs, random_spec_test, specs
from test_grad import generated
from test_reference import CASES
from test_triton import triton_can

# every test here runs the interpreter on purpose; the warning has its own test in test_triton.py
pytestmark = pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")

# every pattern family, composition, modifier and normalizer the generated backward serves:
# dense and gathered sources, empty and fully masked rows, M != N, dv != d, d = 256
GRAD_CASES = ["full_m_ne_n_dv", "causal_top_left_m_gt_n", "causal_bottom_right_empty_rows", "sliding_window",
              "dilated_m_ne_n", "window2d_partial_edges", "window2d_and_causal", "window2d_or_global", "neighborhood",
              "axial_3d_middle", "stripes_rows_partial", "block_sparse_per_head", "block_sparse_call_heads_causal",
              "block_sparse_call_odd_blocks",
              "mask_captured_documents", "per_head", "alibi", "mods_in_order", "score_mod_torch_where",
              "sigmoid_default_bias", "sigmoid_bias_window", "fully_masked_rows", "head_dim_256"]


@pytest.mark.parametrize("name", GRAD_CASES)
def test_triton_gradients_are_generated_and_match_dense_oracle(name):
    spec, dims, tensors = CASES[name]
    assert generated(spec, dims, tensors, backend="triton"), "the generated backward should serve this spec"
    check_grads_against_oracle(spec, *make_inputs(dims), tensors, backend="triton")


# several tiles each way at the interpreter's plans (sm_80's 128 x 64): the transposed tables,
# PARTIAL tiles, tiles past the end of the keys, every normalizer with and without modifiers
MULTI_TILE = {
    "causal": (ac.Attention(ac.causal()), Dims(2, 2, 300, 300, 16, 16)),
    "causal_bottom_right_softcap": (ac.Attention(ac.causal("bottom_right"), score_mods=ac.softcap(5.0)),
                                    Dims(1, 2, 260, 390, 16, 16)),
    "sliding_sigmoid_dv_ne_d": (ac.Attention(ac.sliding_window(40), normalizer=ac.sigmoid()),
                                Dims(1, 2, 300, 300, 16, 24)),
    "partial_window_of_many_tiles": (ac.Attention(ac.window2d((18, 16), (17, 16))), Dims(1, 1, 288, 288, 8, 8)),
    "full_m_ne_n_score_mod": (ac.Attention(ac.full(), score_mods=ac.score_mod(
        lambda s, b, h, q, k: s * 0.5 + (q - k) * 0.01)), Dims(1, 2, 310, 420, 16, 8)),
}


@pytest.mark.parametrize("name", sorted(MULTI_TILE))
def test_triton_multi_tile_gradients_are_generated_and_match(name):
    spec, dims = MULTI_TILE[name]
    assert generated(spec, dims, {}, backend="triton"), "the generated backward should serve this spec"
    check_grads_against_oracle(spec, *make_inputs(dims), backend="triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_gradients_in_half_precision(dtype):
    """Multi-tile shifted windows (a gathered source with PARTIAL tiles), softcap, and the
    relative position bias's gradient in the same dtype: the dots take p and dS in it."""
    spec = ac.Attention(ac.window2d((16, 16), (16, 8), (8, 4)),
                        score_mods=(ac.rel_pos_bias("rpb", (16, 8)), ac.softcap(10.0)))
    rpb = (torch.randn(31 * 15, 2, generator=torch.Generator().manual_seed(3)) * 0.5).to(dtype)
    check_grads_against_oracle(spec, *make_inputs(Dims(1, 2, 256, 256, 16, 16), dtype), {"rpb": rpb},
                               backend="triton", table_grads=True)


@random_spec_test(8)
@given(case=specs())
def test_triton_random_spec_gradients_match_dense_oracle(case):
    spec, dims, tensors = case
    assume(triton_can(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackwardWarning)
        check_grads_against_oracle(spec, *make_inputs(dims), tensors, backend="triton")


@random_spec_test(3)
@given(case=multi_tile_specs())
def test_triton_multi_tile_random_spec_gradients_match_dense_oracle(case):
    spec, dims, tensors = case
    assume(triton_can(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackwardWarning)
        check_grads_against_oracle(spec, *make_inputs(dims), tensors, backend="triton")


# ---- gradients of captured tensors ----------------------------------------------------------

CAPTURED = {
    # a read per pair (many pairs of a tile read one entry): the distinct-offset loop
    "swin_rpb_multi_tile": (ac.Attention(ac.window2d((16, 16), (16, 16), (8, 8)),
                                         score_mods=ac.rel_pos_bias("rpb", (16, 16))),
                            Dims(1, 2, 256, 256, 8, 8), {"rpb": (961, 2)}),
    "sigmoid_bias_table": (ac.Attention(ac.sliding_window(20), normalizer=ac.sigmoid(), score_mods=ac.score_mod(
        lambda s, b, h, q, k, bias: s + bias[h, q - k])), Dims(1, 2, 100, 100, 8, 8), {"bias": (2, 100)}),
    # reads of one entry per tile (one sum), whose coefficient is the raw score (gate)
    "score_mod_reads_two_tables": (ac.Attention(ac.causal(), score_mods=ac.score_mod(
        lambda s, b, h, q, k, slope, gate: s * gate[h] - slope[h] * (q - k))),
        Dims(1, 3, 300, 300, 16, 16), {"slope": (3,), "gate": (3,)}),
    # reads of one entry per row and one per column (summed over the other side first)
    "row_and_column_tables": (ac.Attention(ac.causal(), score_mods=ac.score_mod(
        lambda s, b, h, q, k, qb, kb: s + qb[q // 2] * kb[h, k])),
        Dims(1, 2, 200, 200, 16, 16), {"qb": (100,), "kb": (2, 200)}),
}


def _tables(shapes, dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    return {n: (torch.randn(s, generator=gen) * 0.5).to(dtype) for n, s in shapes.items()}


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_triton_captured_tensor_gradients_are_generated_and_match(name):
    spec, dims, shapes = CAPTURED[name]
    tensors = _tables(shapes)
    q, k, v = (x.requires_grad_() for x in make_inputs(dims))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackwardWarning)         # generated, not recomputed
        out = ac.compile(spec, backend="triton")(q, k, v, **{n: x.clone().requires_grad_() for n, x in tensors.items()})
        out.sum().backward()
    check_grads_against_oracle(spec, *make_inputs(dims), tensors, backend="triton", table_grads=True)


def test_triton_captured_tensor_gradients_with_fewer_slots_than_programs(monkeypatch):
    """A slot's programs run one after the other (here 3 slots for 8 query tiles: the last
    slot has fewer), so a slot's float64 copy has one writer."""
    monkeypatch.setattr(triton_backward, "SLOTS", 3)
    spec, dims, shapes = CAPTURED["sigmoid_bias_table"]
    dims = Dims(1, 2, 500, 500, 8, 8)
    check_grads_against_oracle(spec, *make_inputs(dims), _tables(shapes), backend="triton", table_grads=True)


def _run_grads(spec, dims, shapes):
    q, k, v = (x.requires_grad_() for x in make_inputs(dims))
    tabs = {n: x.requires_grad_() for n, x in _tables(shapes).items()}
    out, lse = ac.compile(spec, backend="triton")(q, k, v, return_lse=True, **tabs)
    (out.square().sum() + lse.sum()).backward()
    return [q.grad, k.grad, v.grad, *(x.grad for x in tabs.values())]


def test_triton_gradients_are_bit_identical_across_runs():
    spec = ac.Attention(ac.window2d((16, 16), (16, 8), (8, 4)),
                        score_mods=(ac.rel_pos_bias("rpb", (16, 8)), ac.softcap(10.0)))
    dims, shapes = Dims(1, 2, 256, 256, 16, 16), {"rpb": (31 * 15, 2)}
    first, second = _run_grads(spec, dims, shapes), _run_grads(spec, dims, shapes)
    for name, a, b in zip(["q", "k", "v", "rpb"], first, second):
        assert torch.equal(a, b), f"d{name} differs between two runs"


# ---- edge cases (README, "Guarantees") -----------------------------------------------------

def test_triton_fully_masked_rows_and_unseen_keys_get_zero_gradients():
    """Rows 0-4 see no key (lse -inf), keys 30-39 are seen by no query: their gradients are 0,
    whatever the lse's gradient on those rows."""
    spec = ac.Attention(ac.mask(lambda b, h, q, k: (q >= 5) & (k < 30)) & ac.causal())
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 40, 40, 16, 16)))
    out, lse = ac.compile(spec, backend="triton")(q, k, v, return_lse=True)
    assert torch.isneginf(lse[:, :, :5]).all()
    dq, dk, dv = torch.autograd.grad([out, lse], [q, k, v], [torch.ones_like(out), torch.ones_like(lse)])
    assert torch.equal(dq[:, :, :5], torch.zeros_like(dq[:, :, :5]))
    assert torch.equal(dk[:, :, 30:], torch.zeros_like(dk[:, :, 30:]))
    assert torch.equal(dv[:, :, 30:], torch.zeros_like(dv[:, :, 30:]))
    assert all(torch.isfinite(x).all() for x in (dq, dk, dv))
    assert dq[:, :, 5:].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("normalizer", [ac.softmax(), ac.sigmoid()], ids=["softmax", "sigmoid"])
def test_triton_nan_query_reaches_its_own_row_of_dq_and_stays_in_its_head(normalizer):
    """As the forward: a NaN in q[1, 0, 37] makes that row of dQ NaN and no other row of dQ;
    dK and dV may be NaN only in (batch 1, head 0), as in SDPA's backward."""
    spec = ac.Attention(ac.causal(), normalizer=normalizer)
    q, k, v = make_inputs(Dims(2, 2, 70, 70, 16, 16))
    q[1, 0, 37, 5] = float("nan")
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out, lse = ac.compile(spec, backend="triton")(q, k, v, return_lse=True)
    gen = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    nan = q.grad.isnan().any(-1)
    assert nan[1, 0, 37] and nan.sum() == 1, "a NaN query must give exactly its own row of dQ NaN"
    for x in (k, v):
        bad = x.grad.isnan()
        bad[1, 0] = False
        assert not bad.any(), "the NaN must stay inside its batch element and head"


# ---- what the generated backward serves ------------------------------------------------------

@pytest.mark.parametrize("spec, tensors, why", [
    (ac.Attention(ac.causal(), normalizer=ac.linear()), {}, "linear attention"),
    (ac.Attention(ac.window2d((8, 8), (4, 4)), post_mods=ac.decay2d((8, 8), "gamma")), {"gamma": torch.rand(2)},
     "post modifiers"),
    (ac.Attention(ac.routing((8, 8), (2, 2), 2)), {}, "routed attention"),
])
def test_triton_specs_without_a_generated_backward_warn_and_still_differentiate(spec, tensors, why):
    q, k, v = (x.requires_grad_() for x in make_inputs(Dims(1, 2, 64, 64, 16, 16)))
    out = ac.compile(spec, backend="triton")(q, k, v, **tensors)
    with pytest.warns(BackwardWarning, match=why):
        out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
