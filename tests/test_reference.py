"""The eager reference against the independent dense fp64 oracle, for every pattern,
composition, modifier and normalizer, at fp32 and bf16."""
import numpy as np
import pytest
import torch

import attncc as ac
from attncc.ir.program import Dims
from attncc.ops import CATALOGUE

from oracle import check_against_oracle, make_inputs


def rpb(n, H):
    return {"rpb": 0.5 * torch.randn(n, H)}


CASES = {
    "full_m_ne_n_dv": (ac.Attention(), Dims(2, 2, 33, 47, 16, 24), {}),
    "causal_top_left_m_gt_n": (ac.Attention(ac.causal()), Dims(1, 2, 40, 70, 16, 16), {}),
    "causal_top_left_n_gt_m": (ac.Attention(ac.causal()), Dims(1, 2, 70, 40, 16, 16), {}),
    "causal_bottom_right": (ac.Attention(ac.causal("bottom_right")), Dims(1, 2, 20, 90, 16, 16), {}),
    "causal_bottom_right_empty_rows": (ac.Attention(ac.causal("bottom_right")), Dims(1, 2, 50, 30, 16, 16), {}),
    "sliding_window": (ac.Attention(ac.sliding_window(9, 4)), Dims(1, 2, 150, 150, 16, 16), {}),
    "sliding_causal_scale": (ac.Attention(ac.sliding_window(20), scale=0.3), Dims(1, 1, 100, 100, 8, 8), {}),
    "dilated_m_ne_n": (ac.Attention(ac.dilated(4, 30, 7)), Dims(1, 2, 90, 110, 16, 16), {}),
    "window2d": (ac.Attention(ac.window2d((12, 8), (4, 4))), Dims(2, 2, 96, 96, 16, 16), {}),
    "window2d_partial_edges": (ac.Attention(ac.window2d((11, 9), (4, 5))), Dims(1, 2, 99, 99, 16, 16), {}),
    "window2d_shift_rpb": (ac.Attention(ac.window2d((12, 8), (4, 4), (2, 2)),
                                        score_mods=ac.rel_pos_bias("rpb", (4, 4))),
                           Dims(2, 3, 96, 96, 16, 16), rpb(49, 3)),
    "window2d_rect_shift": (ac.Attention(ac.window2d((6, 12), (3, 4), (1, 2)),
                                         score_mods=ac.rel_pos_bias("rpb", (3, 4))),
                            Dims(1, 2, 72, 72, 8, 8), rpb(35, 2)),
    "window2d_and_causal": (ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)) & ac.causal()),
                            Dims(1, 2, 64, 64, 16, 16), {}),
    "window2d_or_global": (ac.Attention(ac.window2d((8, 8), (4, 4)) | ac.mask(lambda b, h, q, k: k < 3)),
                           Dims(1, 2, 64, 64, 16, 16), {}),
    "neighborhood": (ac.Attention(ac.neighborhood2d((9, 11), (3, 5))), Dims(1, 2, 99, 99, 16, 16), {}),
    "neighborhood_dilated": (ac.Attention(ac.neighborhood2d((10, 9), (3, 3), (3, 2))), Dims(1, 2, 90, 90, 16, 16), {}),
    "neighborhood_even_kernel": (ac.Attention(ac.neighborhood2d((7, 7), (4, 2))), Dims(1, 1, 49, 49, 8, 8), {}),
    "axial_rows": (ac.Attention(ac.axial((6, 7), 1)), Dims(1, 2, 42, 42, 16, 16), {}),
    "axial_cols": (ac.Attention(ac.axial((6, 7), 0)), Dims(1, 2, 42, 42, 16, 16), {}),
    "axial_3d_middle": (ac.Attention(ac.axial((3, 4, 5), 1)), Dims(1, 2, 60, 60, 16, 16), {}),
    "axial_1d": (ac.Attention(ac.axial((30,), 0)), Dims(1, 1, 30, 30, 8, 8), {}),
    "stripes_rows_partial": (ac.Attention(ac.stripes((7, 6), 3, 0)), Dims(1, 2, 42, 42, 16, 16), {}),
    "stripes_cols": (ac.Attention(ac.stripes((7, 6), 2, 1)), Dims(1, 2, 42, 42, 16, 16), {}),
    "routing": (ac.Attention(ac.routing((8, 12), (2, 3), 2)), Dims(2, 2, 96, 96, 16, 16), {}),
    "routing_and_causal": (ac.Attention(ac.routing((8, 8), (4, 4), 3) & ac.causal()), Dims(1, 2, 64, 64, 16, 16), {}),
    "block_sparse_2d": (ac.Attention(ac.block_sparse(np.random.RandomState(0).rand(4, 3) > 0.4, (16, 32))),
                        Dims(1, 2, 64, 96, 16, 16), {}),
    "block_sparse_per_head": (ac.Attention(ac.block_sparse(np.random.RandomState(1).rand(3, 5, 5) > 0.5, (8, 8))),
                              Dims(1, 3, 40, 40, 16, 16), {}),
    "mask_lambda": (ac.Attention(ac.mask(lambda b, h, q, k: ((q + 2 * k) % 5 != 0) & (k <= q + 3))),
                    Dims(1, 2, 50, 50, 16, 16), {}),
    "mask_captured_documents": (ac.Attention(ac.mask(lambda b, h, q, k, doc: (doc[b, q] == doc[b, k]) & (k <= q))),
                                Dims(2, 2, 40, 40, 16, 16),
                                {"doc": torch.sort(torch.randint(0, 4, (2, 40)), dim=1).values}),
    "mask_torch_functions": (ac.Attention(ac.mask(lambda b, h, q, k: torch.logical_or(torch.abs(q - k) < 3, k == 0))),
                             Dims(1, 1, 30, 30, 8, 8), {}),
    "per_head": (ac.Attention(ac.per_head({(0, 2): ac.causal(), (1,): ac.window2d((6, 6), (3, 3)),
                                           (3,): ac.axial((6, 6), 0)})), Dims(1, 4, 36, 36, 16, 16), {}),
    "per_head_and_causal": (ac.Attention(ac.per_head({0: ac.sliding_window(5), 1: ac.full()}) & ac.causal()),
                            Dims(1, 2, 40, 40, 16, 16), {}),
    "alibi": (ac.Attention(ac.causal(), score_mods=ac.alibi()), Dims(1, 4, 60, 60, 16, 16), {}),
    "softcap": (ac.Attention(ac.full(), score_mods=ac.softcap(2.0)), Dims(1, 2, 40, 40, 16, 16), {}),
    "mods_in_order": (ac.Attention(ac.sliding_window(10, 10),
                                   score_mods=(ac.alibi(), ac.score_mod(lambda s, b, h, q, k: s * 2), ac.softcap(3.0))),
                      Dims(1, 2, 40, 40, 16, 16), {}),
    "score_mod_captured": (ac.Attention(ac.causal(), score_mods=ac.score_mod(
        lambda s, b, h, q, k, bias: s + bias[h, q - k + 39])), Dims(1, 2, 40, 40, 16, 16), {"bias": torch.randn(2, 79)}),
    "score_mod_torch_where": (ac.Attention(ac.full(), score_mods=ac.score_mod(
        lambda s, b, h, q, k: torch.where(q > k, s, torch.tanh(s) - 1))), Dims(1, 2, 30, 30, 16, 16), {}),
    "sigmoid_default_bias": (ac.Attention(ac.causal(), normalizer=ac.sigmoid()), Dims(1, 2, 40, 60, 16, 16), {}),
    "sigmoid_bias_window": (ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), normalizer=ac.sigmoid(-1.5)),
                            Dims(1, 2, 64, 64, 16, 16), {}),
    "decay2d": (ac.Attention(ac.full(), post_mods=ac.decay2d((6, 7))), Dims(1, 2, 42, 42, 16, 16),
                {"gamma": torch.tensor([0.9, 0.5])}),
    "clipped": (ac.Attention(ac.causal(), post_mods=ac.clipped(1.05, -0.05)), Dims(1, 2, 40, 40, 16, 16), {}),
    "decay_then_clip_on_window": (ac.Attention(ac.window2d((6, 6), (3, 3)),
                                               post_mods=(ac.decay2d((6, 6)), ac.clipped(1.1, -0.1))),
                                  Dims(1, 2, 36, 36, 16, 16), {"gamma": torch.tensor([0.8, 0.95])}),
    "fully_masked_rows": (ac.Attention(ac.mask(lambda b, h, q, k: (q % 3 != 0) & (k < q))), Dims(1, 2, 30, 30, 16, 16), {}),
    "head_dim_256": (ac.Attention(ac.causal()), Dims(1, 1, 24, 24, 256, 256), {}),
}
for fm in ("elu1", "relu", "focused", "identity"):
    CASES[f"linear_{fm}"] = (ac.Attention(normalizer=ac.linear(fm)), Dims(1, 2, 50, 70, 16, 24), {})
CASES["linear_causal"] = (ac.Attention(ac.causal(), normalizer=ac.linear("relu")), Dims(1, 2, 150, 150, 16, 16), {})
CASES["linear_causal_bottom_right"] = (ac.Attention(ac.causal("bottom_right"), normalizer=ac.linear()),
                                       Dims(1, 2, 30, 100, 16, 16), {})
CASES["linear_window"] = (ac.Attention(ac.window2d((9, 8), (3, 4)), normalizer=ac.linear("focused")),
                          Dims(1, 2, 72, 72, 16, 16), {})
CASES["linear_window_causal"] = (ac.Attention(ac.window2d((8, 8), (4, 4)) & ac.causal(), normalizer=ac.linear()),
                                 Dims(1, 2, 64, 64, 16, 16), {})
# block sparsity with the layout a tensor of the call: shared by the heads (tiles of the 32 x 32
# blocks), per head AND causal, and blocks of 20 x 24 tokens (tiles straddle blocks)
_rt = torch.Generator().manual_seed(3)
CASES["block_sparse_call"] = (ac.Attention(ac.block_sparse("layout", (32, 32))), Dims(2, 2, 200, 180, 16, 16),
                              {"layout": torch.rand(7, 6, generator=_rt) < 0.5})
CASES["block_sparse_call_heads_causal"] = (ac.Attention(ac.block_sparse("layout", (32, 32)) & ac.causal()),
                                           Dims(1, 3, 160, 160, 16, 16),
                                           {"layout": torch.rand(3, 5, 5, generator=_rt) < 0.6})
CASES["block_sparse_call_odd_blocks"] = (ac.Attention(ac.block_sparse("layout", (20, 24)), normalizer=ac.sigmoid()),
                                         Dims(1, 2, 100, 96, 16, 16), {"layout": torch.rand(5, 4, generator=_rt) < 0.5})
# dv wider than one 64-column value block of the Triton kernels, d not a multiple of 8
CASES["linear_causal_wide_dv"] = (ac.Attention(ac.causal(), normalizer=ac.linear("elu1")), Dims(1, 1, 80, 80, 20, 100), {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_matches_dense_oracle(name, dtype):
    spec, dims, tensors = CASES[name]
    q, k, v = make_inputs(dims, dtype)
    if "identity" in name:          # keep phi(q).phi(k) away from zero so the maths is well posed
        q, k = q.abs(), k.abs()
    check_against_oracle(spec, q, k, v, tensors)


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_catalogue_matches_dense_oracle(entry):
    q, k, v, tensors = entry.inputs()
    check_against_oracle(entry.spec, q, k, v, tensors)


def test_fully_masked_rows_give_zero_and_neg_inf_lse():
    spec = ac.Attention(ac.mask(lambda b, h, q, k: q >= 5) & ac.causal())
    q, k, v = make_inputs(Dims(1, 2, 12, 12, 8, 8))
    out, lse = ac.reference(spec)(q, k, v, return_lse=True)
    assert torch.equal(out[:, :, :5], torch.zeros_like(out[:, :, :5]))
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()
    assert not torch.isnan(out).any()


def test_lse_is_natural_log_over_final_scores():
    spec = ac.Attention(ac.causal(), score_mods=ac.softcap(4.0), scale=0.5)
    q, k, v = make_inputs(Dims(1, 1, 8, 8, 4, 4))
    _, lse = ac.reference(spec)(q, k, v, return_lse=True)
    s = 4.0 * torch.tanh(0.5 * q[0, 0] @ k[0, 0].T / 4.0)
    s = s.masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), -float("inf"))
    torch.testing.assert_close(lse[0, 0], torch.logsumexp(s, -1))


def test_output_dtype_follows_input_and_accumulates_in_fp32():
    q, k, v = make_inputs(Dims(1, 2, 64, 64, 32, 32), torch.bfloat16)
    out, lse = ac.reference(ac.Attention())(q, k, v, return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    exact = torch.softmax(q.float() @ k.float().transpose(-1, -2) / 32 ** 0.5, -1) @ v.float()
    assert torch.equal(out, exact.to(torch.bfloat16)) or (out.float() - exact).abs().max() <= 2 ** -7
