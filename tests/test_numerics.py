"""Numerical edge cases, the same on every backend (README, "Guarantees"): NaN and inf
propagate as SDPA's do and stay inside their batch element and head, fully masked rows give
0 and lse -inf, huge scores keep their maximum, half-precision extremes stay finite, and the
generated kernels' outputs are the same bits run to run and at 1 and 2 threads."""
import pytest
import torch
import torch.nn.functional as F

import attncc as ac
from oracle import check_against_oracle, make_inputs
from attncc.ir.program import Dims

pytestmark = pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")
BACKENDS = ["reference", "tvm", "triton"]
SPECS = {
    "full": ac.Attention(ac.full()),
    "causal": ac.Attention(ac.causal()),
    "window": ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2))),
    "neighborhood": ac.Attention(ac.neighborhood2d((8, 8), (3, 3))),
    "sigmoid": ac.Attention(ac.sliding_window(20, 5), normalizer=ac.sigmoid()),
    "softcap": ac.Attention(ac.causal(), score_mods=(ac.softcap(20.0),)),
}


def qkv(B=2, H=2, N=64, d=16, seed=0):
    return make_inputs(Dims(B, H, N, N, d, d), torch.float32, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SPECS)
def test_nan_query_gives_a_nan_row_and_nothing_else(name, backend):
    q, k, v = qkv()
    q[1, 0, 37, 5] = float("nan")
    out, lse = ac.compile(SPECS[name], backend=backend)(q, k, v, return_lse=True)
    nan = out.isnan()
    assert nan[1, 0, 37].all() and lse[1, 0, 37].isnan(), "a NaN query must give a NaN row (and lse)"
    nan[1, 0, 37] = False
    assert not nan.any() and not lse.isnan().sum() > 1, "the NaN must not reach another row, head or batch"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["full", "causal"])
def test_infinite_key_gives_sdpa_nan_rows(name, backend):
    """k = +inf in one place: rows whose score is +inf get exp(inf - inf), NaN, exactly as SDPA's
    rows do; a -inf score weighs 0; other heads and batch elements stay finite."""
    q, k, v = qkv()
    k[0, 1, 20, 3] = float("inf")
    out = ac.compile(SPECS[name], backend=backend)(q, k, v)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=name == "causal")
    assert torch.equal(out.isnan(), want.isnan()) and want.isnan().any()
    assert out[1].isfinite().all() and out[0, 0].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_value_stays_in_its_head(backend):
    q, k, v = qkv()
    v[1, 1, 3, 0] = float("nan")
    out = ac.compile(SPECS["window"], backend=backend)(q, k, v)
    assert out[1, 1].isnan().any()
    assert out[0].isfinite().all() and out[1, 0].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_give_zero_and_minus_inf(backend):
    spec = ac.Attention(ac.mask(lambda b, h, q, k: q >= 10) & ac.causal())
    q, k, v = qkv()
    out, lse = ac.compile(spec, backend=backend)(q, k, v, return_lse=True)
    assert (out[:, :, :10] == 0).all() and torch.isneginf(lse[:, :, :10]).all()
    assert out[:, :, 10:].isfinite().all() and lse[:, :, 10:].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["full", "window", "sigmoid"])
def test_scores_of_magnitude_1e4(name, backend):
    """Scores up to ~1e4 (q and k scaled by 25): the maximum is kept (no overflow in exp, no
    lost row max), judged against the fp64 oracle like every other case."""
    q, k, v = qkv(seed=3)
    out, _ = check_against_oracle(SPECS[name], q * 25, k * 25, v, backend=backend)
    assert out.isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_extremes(dtype, backend):
    """Values near the dtype's largest: v at 0.9 x max (the output is a convex combination, so
    it fits) and q, k whose dot products overflow the dtype itself (fp16: scores ~1e5; bf16:
    ~1e24; kernels accumulate in float32). Scores at or below -5e29 count as masked (the
    kernels' mask sentinel is -1e30), so the bf16 case stays above that."""
    big = torch.finfo(dtype).max
    q, k, v = qkv(seed=5)
    v = (v.sign() * 0.9 * big).to(dtype)
    mq, mk = (200.0, 200.0) if dtype == torch.float16 else (1e18, 1e6)
    q, k = (q * mq).to(dtype), (k * mk).to(dtype)
    out, _ = check_against_oracle(SPECS["causal"], q, k, v, backend=backend)
    assert out.isfinite().all()


@pytest.mark.parametrize("name", ["full", "window", "neighborhood", "sigmoid"])
def test_tvm_bits_run_to_run_and_across_threads(name):
    q, k, v = qkv(B=2, H=3, seed=7)
    kern = ac.compile(SPECS[name], backend="tvm")
    first, lse = kern(q, k, v, return_lse=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, lse1 = kern(q, k, v, return_lse=True)
    finally:
        torch.set_num_threads(threads)
    again, lse2 = kern(q, k, v, return_lse=True)
    for a, b in ((first, one), (first, again), (lse, lse1), (lse, lse2)):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
