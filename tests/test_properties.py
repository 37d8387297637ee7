"""Property tests: random specs (patterns, compositions, per-head groups, modifiers,
normalizers, grids, shapes) through the whole pipeline, reference against the dense oracle."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracle import check_against_oracle, make_inputs
from strategies import specs

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


@SETTINGS
@given(case=specs(), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 100))
def test_random_specs_match_dense_oracle(case, dtype, seed):
    spec, dims, tensors = case
    q, k, v = make_inputs(dims, dtype, seed)
    check_against_oracle(spec, q, k, v, tensors)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=specs())
def test_random_specs_are_hashable_printable_and_stable(case):
    spec, dims, _ = case
    assert hash(spec) == hash(spec) and spec == spec
    assert repr(spec).startswith("Attention(")
    from attncc.passes.pipeline import lower
    assert lower(spec, dims).program.digest() == lower(spec, dims).program.digest()
