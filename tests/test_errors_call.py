"""Every user-facing error of compiling and calling a kernel (backend choice, call validation,
call-time shape checks, captured tensors, TilePlan), one test per message, each checking the
type and that the message names the offending value and the fix."""
import re

import numpy as np
import pytest
import torch

import attncc as ac
from attncc.dsl.trace import TraceError


def qkv(B=1, H=2, N=16, M=None, d=8, dv=None, dtype=torch.float32):
    M = N if M is None else M
    dv = d if dv is None else dv
    return (torch.randn(B, H, N, d, dtype=dtype), torch.randn(B, H, M, d, dtype=dtype),
            torch.randn(B, H, M, dv, dtype=dtype))


def run(spec, *args, **kw):
    return ac.reference(spec)(*args, **kw)


def bias_spec():
    return ac.Attention(score_mods=ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q]))


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# ac.compile / ac.reference (attncc/runtime/kernel.py)
# --------------------------------------------------------------------------------------------

def test_compile_a_pattern_instead_of_a_spec():
    with pytest.raises(TypeError, match=re.escape("compile takes an ac.Attention spec, got Causal "
                                                  "(causal(align='top_left')); wrap a pattern as "
                                                  "ac.Attention(pattern=...)")):
        ac.compile(ac.causal(), backend="reference")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'tvm', 'triton', 'reference', got 'nope'"):
        ac.compile(ac.Attention(), backend="nope")


@pytest.mark.parametrize("spec, why", [
    (ac.Attention(ac.routing((4, 4), (2, 2), 1) & ac.causal()),
     "backend='tvm' generates routing alone (with any score or post modifiers), not routing composed with other "
     "patterns or per head; use backend='reference'"),
], ids=["routing_and_causal"])
def test_tvm_backend_refuses_what_it_cannot_generate(spec, why):
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(NotImplementedError, match=re.escape(why)):
        ac.compile(spec, backend="tvm")(q, q, q)


# --------------------------------------------------------------------------------------------
# kernel call validation (attncc/runtime/inputs.py)
# --------------------------------------------------------------------------------------------

def test_k_not_a_tensor():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got ndarray"):
        run(ac.Attention(), q, k.numpy(), v)


def test_q_three_dimensional():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=re.escape("q must be 4-D [B, H, tokens, head_dim], got shape (2, 16, 8); "
                                                   "reshape [B, N, H*d] inputs to [B, H, N, d] first")):
        run(ac.Attention(), q[0], k, v)


def test_integer_dtype():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="v has dtype torch.int64; attncc takes float16, bfloat16, float32 or float64"):
        run(ac.Attention(), q, k, v.long())


def test_empty_dimension():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=re.escape("q has an empty dimension: shape (1, 2, 0, 8)")):
        run(ac.Attention(), q[:, :, :0], k, v)


def test_mismatched_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="q, k, v must share a dtype, got torch.float64, torch.float32, "
                                        "torch.float32; cast them to one"):
        run(ac.Attention(), q.double(), k, v)


def test_q_k_v_on_different_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q, k, v must be on one device, got cpu, meta, cpu"):
        run(ac.Attention(), q, k.to("meta"), v)


def test_mismatched_heads():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=re.escape("q, k, v must share batch and heads: q (1, 2, 16, 8), "
                                                   "k (1, 1, 16, 8), v (1, 1, 16, 8)")):
        run(ac.Attention(), q, k[:, :1], v[:, :1])


def test_mismatched_head_dim():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q and k must share the head dim: q has d=8, k has 4"):
        run(ac.Attention(), q, k[..., :4], v)


def test_k_and_v_token_counts_differ():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k and v must have the same number of tokens: k has M=16, v has 8"):
        run(ac.Attention(), q, k, v[:, :, :8])


def test_missing_captured_tensor():
    with pytest.raises(TypeError, match=re.escape("the spec reads tensors ['bias'] passed by keyword; "
                                                  "call kern(q, k, v, bias=...)")):
        run(bias_spec(), *qkv())


def test_unexpected_keyword_tensor():
    with pytest.raises(TypeError, match=re.escape("unexpected keyword tensors ['bias']; this spec reads none")):
        run(ac.Attention(), *qkv(), bias=torch.zeros(2, 16))


def test_misspelled_keyword_tensor():
    # the missing name is reported first, so the typo is visible in the fix it suggests
    with pytest.raises(TypeError, match=re.escape("the spec reads tensors ['bias'] passed by keyword; "
                                                  "call kern(q, k, v, bias=...)")):
        run(bias_spec(), *qkv(), bais=torch.zeros(2, 16))


def test_captured_tensor_not_a_tensor():
    with pytest.raises(TypeError, match="captured tensor 'bias' must be a torch.Tensor, got list"):
        run(bias_spec(), *qkv(), bias=[[0.0] * 16] * 2)


def test_captured_tensor_on_another_device():
    with pytest.raises(ValueError, match="captured tensor 'bias' is on meta but q is on cpu"):
        run(bias_spec(), *qkv(), bias=torch.zeros(2, 16, device="meta"))


def test_return_lse_with_linear_attention():
    with pytest.raises(ValueError, match=re.escape("return_lse=True: linear attention has no log-sum-exp (it never "
                                                   "forms scores); drop return_lse or use softmax/sigmoid")):
        run(ac.Attention(normalizer=ac.linear()), *qkv(), return_lse=True)


# --------------------------------------------------------------------------------------------
# call-time shape checks while lowering (attncc/passes/canonicalize.py, passes/plan.py)
# --------------------------------------------------------------------------------------------

def test_grid_pattern_with_wrong_token_count():
    with pytest.raises(ValueError, match=re.escape("the pattern lives on grid (4, 4) (16 tokens) but q has N=20 "
                                                   "and k has M=20 tokens; pass q and k with N = M = 16")):
        run(ac.Attention(pattern=ac.window2d((4, 4), 2)), *qkv(N=20))


def test_per_head_missing_a_head():
    spec = ac.Attention(pattern=ac.per_head({0: ac.full(), 1: ac.causal()}))
    with pytest.raises(ValueError, match=re.escape("per_head covers heads [0, 1] but the call has H=3 heads "
                                                   "(missing [2], out of range []); map every head 0..2 once")):
        run(spec, *qkv(H=3))


def test_per_head_head_out_of_range():
    spec = ac.Attention(pattern=ac.per_head({(0, 1): ac.full(), 2: ac.causal()}))
    with pytest.raises(ValueError, match=re.escape("per_head covers heads [0, 1, 2] but the call has H=2 heads "
                                                   "(missing [], out of range [2]); map every head 0..1 once")):
        run(spec, *qkv(H=2))


def test_block_sparse_layout_wrong_for_call():
    spec = ac.Attention(pattern=ac.block_sparse(np.ones((2, 2), bool), (8, 8)))
    with pytest.raises(ValueError, match=re.escape("block_sparse layout has shape (2, 2) but N=32, M=32, H=2 with "
                                                   "block (8, 8) need (4, 4); build the layout for the call's shapes")):
        run(spec, *qkv(N=32))


def test_per_head_block_sparse_layout_wrong_head_count():
    spec = ac.Attention(pattern=ac.block_sparse(np.ones((3, 2, 2), bool), (8, 8)))
    with pytest.raises(ValueError, match=re.escape("block_sparse layout has shape (3, 2, 2) but N=16, M=16, H=2 "
                                                   "with block (8, 8) need (2, 2, 2)")):
        run(spec, *qkv(N=16))


def test_two_different_routings_in_one_spec():
    with pytest.raises(ValueError, match=re.escape("Attention: one spec may route only one way, got "
                                                   "routing(grid=(4, 4), regions=(2, 2), topk=1), "
                                                   "routing(grid=(4, 4), regions=(2, 2), topk=2)")):
        ac.Attention(pattern=ac.routing((4, 4), (2, 2), 1) & ac.routing((4, 4), (2, 2), 2))


def test_head_dim_too_large_for_any_tile():
    with pytest.raises(ValueError, match=re.escape("no tile of head dims d=4096, dv=4096 fits reference (L2 per "
                                                   "core) (1048576 bytes) for target 'reference'")):
        run(ac.Attention(), *qkv(H=1, N=32, d=4096))


# --------------------------------------------------------------------------------------------
# captured tensors against what the spec reads (attncc/runtime/inputs.py check_tables; every
# backend: tests/test_errors_tables.py)
# --------------------------------------------------------------------------------------------

def test_captured_tensor_too_small():
    with pytest.raises(ValueError, match=re.escape(
            "captured tensor 'bias' of shape (2, 15) is too small for score_mod(score + bias[h, i]) at B=1, H=2, "
            "N=16, M=16: dim 1 needs at least 16 entries (its index spans 0..15, read as bias[h, i]); pass a tensor "
            "of shape at least (2, 16) (a larger one is fine)")):
        run(bias_spec(), *qkv(), bias=torch.zeros(2, 15))


def test_captured_tensor_constant_index_out_of_range():
    spec = ac.Attention(score_mods=ac.score_mod(lambda s, b, h, q, k, t: s + t[5]))
    with pytest.raises(ValueError, match=re.escape("captured tensor 't' of shape (3,) is too small for score_mod("
                                                   "score + t[5]) at B=1, H=2, N=16, M=16: dim 0 needs at least 6 "
                                                   "entries (its index spans 5..5, read as t[5])")):
        run(spec, *qkv(), t=torch.zeros(3))


def test_captured_tensor_wrong_number_of_indices():
    with pytest.raises(ValueError, match=re.escape("captured tensor 'bias' has 3 dims (2, 16, 1) but score_mod(score "
                                                   "+ bias[h, i]) reads it with 2 indices: bias[h, i]")):
        run(bias_spec(), *qkv(), bias=torch.zeros(2, 16, 1))


def test_out_of_range_error_is_a_value_error():
    with pytest.raises(ValueError, match="is too small"):
        run(bias_spec(), *qkv(), bias=torch.zeros(1, 16))


# --------------------------------------------------------------------------------------------
# TilePlan (attncc/ir/plan.py)
# --------------------------------------------------------------------------------------------

def test_tile_plan_field_not_positive():
    with pytest.raises(ValueError, match=re.escape("TilePlan.block_m must be a positive int, got 0")):
        ac.TilePlan(block_m=0)


@pytest.mark.parametrize("field, value", [("block_n", 32.0), ("num_warps", True)])
def test_tile_plan_field_not_an_int(field, value):
    with pytest.raises(TypeError, match=re.escape(f"TilePlan.{field} must be a positive int, got "
                                                  f"{type(value).__name__} ({value!r})")):
        ac.TilePlan(**{field: value})


def test_tile_plan_json_not_an_object():
    with pytest.raises(ValueError, match=re.escape("TilePlan JSON must be an object of knobs, got 'null'")):
        ac.TilePlan.from_json("null")


def test_captured_tensor_indexed_by_a_fraction():
    with pytest.raises(TraceError, match=re.escape("captured tensor 't' is indexed by i/2, which is not an integer "
                                                   "expression; use // for integer division")):
        ac.score_mod(lambda s, b, h, q, k, t: s + t[q / 2])


def test_expression_dividing_by_zero():
    with pytest.raises(TraceError, match=re.escape("score_mod: the expression zoo*score divides by zero or takes log(0)")):
        ac.score_mod(lambda s, b, h, q, k: s / 0)


def test_tile_plan_json_with_unknown_key():
    with pytest.raises(ValueError, match=re.escape("TilePlan JSON has unknown keys ['blockm']; known: ['block_m', "
                                                   "'block_n', 'chunk', 'key_split', 'num_stages', 'num_warps', "
                                                   "'unroll', 'vector']")):
        ac.TilePlan.from_json('{"block_m": 64, "blockm": 32}')


def test_tvm_backend_with_tensors_off_the_cpu():
    q = torch.randn(1, 1, 16, 8, device="meta")
    with pytest.raises(ValueError, match=re.escape("backend='tvm' generates CPU kernels but q is on meta; move the "
                                                   "tensors to the CPU or use backend='reference'")):
        ac.compile(ac.Attention(), backend="tvm")(q, q, q)


# --------------------------------------------------------------------------------------------
# resources (attncc/passes/resources.py)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_tables_that_cannot_fit_memory_fail_before_allocating(backend):
    """4M tokens, causal: the block classification would need 640 GiB; it fails at once."""
    q = torch.randn(1, 1, 1 << 22, 8)
    with pytest.raises(MemoryError, match=re.escape(
            "attncc: the block classification of N=4194304 queries against M=4194304 keys (1 x 262144 x 262144 "
            "tiles of 16 x 16: classes and pair counts) needs 640.0 GiB, more than the ")) as err:
        ac.compile(ac.Attention(ac.causal()), backend=backend)(q, q, q)
    assert str(err.value).endswith("GiB of memory available; call the kernel on shorter sequences (the tables "
                                   "grow with N x M / 256 for a dense key source)")
