"""Every user-facing error attncc raises at its public boundary, one test per message.

Each test makes the mistake through the public API (``import attncc as ac``) and checks the
exception type and that the message names the offending value and the fix. Compiler bugs
(internal asserts, VerifyError) are tested elsewhere.
"""
import re

import numpy as np
import pytest
import torch

import attncc as ac
from attncc.dsl.trace import TraceError
from attncc.ir.evaluate import EvalError


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
# argument checks shared by the DSL constructors (attncc/dsl/_check.py)
# --------------------------------------------------------------------------------------------

def test_float_where_int_expected():
    with pytest.raises(TypeError, match=re.escape("sliding_window: left must be an int, got float (2.5)")):
        ac.sliding_window(2.5)


def test_bool_where_int_expected():
    with pytest.raises(TypeError, match=re.escape("axial: axis must be an int, got bool (True)")):
        ac.axial((4, 4), axis=True)


def test_negative_window_size():
    with pytest.raises(ValueError, match="sliding_window: right must be >= 0, got -1"):
        ac.sliding_window(4, right=-1)


def test_dilation_rate_zero():
    with pytest.raises(ValueError, match="dilated: rate must be >= 1, got 0"):
        ac.dilated(0, 8)


def test_string_where_number_expected():
    with pytest.raises(TypeError, match=re.escape("softcap: c must be a number, got str ('30')")):
        ac.softcap("30")


def test_grid_not_a_tuple():
    with pytest.raises(TypeError, match=re.escape("window2d: grid must be a tuple of ints, got str ('44')")):
        ac.window2d("44", 2)


def test_grid_with_wrong_number_of_entries():
    with pytest.raises(ValueError, match=re.escape("window2d: grid must have 2 entries, got 3: (4, 4, 4)")):
        ac.window2d((4, 4, 4), 2)


def test_tuple_entry_not_an_int():
    with pytest.raises(TypeError, match=re.escape("window2d: window[1] must be an int, got float (2.5)")):
        ac.window2d((4, 4), (2, 2.5))


def test_empty_grid():
    with pytest.raises(ValueError, match="axial: grid must not be empty"):
        ac.axial(())


def test_tensor_name_not_a_string():
    with pytest.raises(TypeError, match=re.escape("rel_pos_bias: name must be a str naming a tensor, got int (3)")):
        ac.rel_pos_bias(3, (2, 2))


def test_tensor_name_not_an_identifier():
    with pytest.raises(ValueError, match=r"rel_pos_bias: name must be a Python identifier not starting with "
                                         r"'__' \(it becomes a keyword argument of the kernel call\), got 'rel-pos'"):
        ac.rel_pos_bias("rel-pos", (2, 2))


def test_captured_tensor_name_with_double_underscore():
    with pytest.raises(ValueError, match="score_mod: captured tensor must be a Python identifier not "
                                         "starting with '__'.*got '__bias'"):
        ac.score_mod(lambda s, b, h, q, k, __bias: s + __bias[h])


def test_unknown_causal_alignment():
    with pytest.raises(ValueError, match="causal: align must be one of 'top_left', 'bottom_right', got 'left'"):
        ac.causal(align="left")


def test_unknown_feature_map():
    with pytest.raises(ValueError, match="linear: feature_map must be one of 'elu1', 'relu', 'focused', "
                                         "'identity', got 'cos'"):
        ac.linear(feature_map="cos")


# --------------------------------------------------------------------------------------------
# patterns (attncc/dsl/patterns.py)
# --------------------------------------------------------------------------------------------

def test_and_with_a_non_pattern():
    with pytest.raises(TypeError, match=re.escape("`&` combines attention patterns, got int (3)")):
        ac.full() & 3


def test_or_with_a_normalizer():
    with pytest.raises(TypeError, match=re.escape("`|` combines attention patterns, got Softmax (softmax())")):
        ac.causal() | ac.softmax()


def test_patterns_on_different_grids():
    with pytest.raises(ValueError, match=re.escape("patterns of one spec must share a grid, got [(4, 4), (8, 2)]")):
        ac.Attention(pattern=ac.window2d((4, 4), 2) & ac.window2d((8, 2), 2))


def test_window_larger_than_grid():
    with pytest.raises(ValueError, match=re.escape("window2d: window (8, 8) is larger than the grid (4, 8); "
                                                   "use a window no larger than the grid")):
        ac.window2d((4, 8), 8)


def test_shift_not_smaller_than_window():
    with pytest.raises(ValueError, match=re.escape("window2d: shift (4, 4) must be smaller than the window "
                                                   "(4, 4) (Swin uses window // 2)")):
        ac.window2d((8, 8), 4, shift=4)


def test_shifted_window_not_dividing_grid():
    with pytest.raises(ValueError, match=re.escape("window2d: a shifted window must divide the grid, got grid "
                                                   "(6, 8), window (4, 4), shift (2, 2); pad the map")):
        ac.window2d((6, 8), 4, shift=2)


def test_neighborhood_kernel_times_dilation_exceeds_grid():
    with pytest.raises(ValueError, match=re.escape("neighborhood2d: kernel (3, 3) times dilation (2, 2) exceeds "
                                                   "the grid (8, 5) along axis 1; use kernel * dilation <= grid")):
        ac.neighborhood2d((8, 5), 3, dilation=2)


def test_axial_axis_out_of_range():
    with pytest.raises(ValueError, match=re.escape("axial: axis 2 is out of range for a 2-D grid (4, 4)")):
        ac.axial((4, 4), axis=2)


def test_stripes_axis_out_of_range():
    with pytest.raises(ValueError, match=re.escape("stripes: axis -3 is out of range for a 2-D grid (4, 4)")):
        ac.stripes((4, 4), 2, axis=-3)


def test_stripe_wider_than_grid():
    with pytest.raises(ValueError, match="stripes: width 5 exceeds the grid's size 4 along axis 1"):
        ac.stripes((8, 4), 5, axis=1)


def test_routing_regions_not_dividing_grid():
    with pytest.raises(ValueError, match=re.escape("routing: regions (3, 2) must divide the grid (4, 4); "
                                                   "pad the map")):
        ac.routing((4, 4), (3, 2), 1)


def test_routing_topk_exceeds_regions():
    with pytest.raises(ValueError, match="routing: topk 5 exceeds the number of regions 2 x 2 = 4"):
        ac.routing((4, 4), (2, 2), 5)


def test_routing_in_a_union():
    with pytest.raises(ValueError, match=r"routing cannot be combined with `\|` \(in \(routing\(grid=\(4, 4\).*"
                                         r"combine it with `&`"):
        ac.Attention(pattern=ac.routing((4, 4), (2, 2), 1) | ac.full())


def test_block_sparse_ragged_layout():
    with pytest.raises(ValueError, match="block_sparse: the layout's rows have different lengths"):
        ac.block_sparse([[1], [1, 0]], (8, 8))


def test_block_sparse_layout_values_not_zero_one():
    with pytest.raises(ValueError, match=re.escape("block_sparse: layout must hold bools (or 0/1), got the values [2]")):
        ac.block_sparse([[1, 2], [0, 1]], (8, 8))


def test_block_sparse_float_layout():
    with pytest.raises(TypeError, match="block_sparse: layout must hold bools \\(or 0/1\\), got dtype float64"):
        ac.block_sparse(np.ones((2, 2)), (8, 8))


def test_block_sparse_one_dimensional_layout():
    with pytest.raises(ValueError, match=re.escape("block_sparse: layout must be [N/bq, M/bk] or [H, N/bq, M/bk], "
                                                   "got shape (4,)")):
        ac.block_sparse([True, False, True, True], (8, 8))


def test_mask_returning_a_number():
    with pytest.raises(TypeError, match=re.escape("mask: the function must return a boolean expression "
                                                  "(comparisons, & | ~), got i - j")):
        ac.mask(lambda b, h, q, k: q - k)


def test_per_head_not_a_dict():
    with pytest.raises(TypeError, match=re.escape("per_head takes a non-empty dict {(head, ...): pattern}, "
                                                  "got [full()]")):
        ac.per_head([ac.full()])


def test_per_head_empty_dict():
    with pytest.raises(TypeError, match=re.escape("per_head takes a non-empty dict {(head, ...): pattern}, got {}")):
        ac.per_head({})


def test_per_head_key_not_a_head_index():
    with pytest.raises(TypeError, match=re.escape("per_head: heads[0] must be an int, got str ('a')")):
        ac.per_head({"a": ac.full()})


def test_per_head_value_not_a_pattern():
    with pytest.raises(TypeError, match=re.escape("per_head: heads (0, 1) map to str ('causal'), not a pattern")):
        ac.per_head({(0, 1): "causal"})


def test_nested_per_head():
    with pytest.raises(ValueError, match=re.escape("per_head: heads (1,) map to another per_head; flatten them "
                                                   "into one dict")):
        ac.per_head({0: ac.full(), 1: ac.per_head({1: ac.causal()})})


def test_head_in_two_per_head_groups():
    with pytest.raises(ValueError, match=re.escape("per_head: head 1 appears in both (0, 1) and (1, 2); "
                                                   "each head belongs to one group")):
        ac.per_head({(0, 1): ac.full(), (1, 2): ac.causal()})


def test_two_per_heads_in_one_pattern():
    a, b = ac.per_head({0: ac.full(), 1: ac.causal()}), ac.per_head({(0, 1): ac.sliding_window(4)})
    with pytest.raises(ValueError, match="only one per_head may appear in a pattern, got 2 in"):
        ac.Attention(pattern=a & b)


def test_per_head_inside_a_union():
    with pytest.raises(ValueError, match=re.escape("per_head must be at the top of a pattern or combined with `&`: "
                                                   "(per_head({(0,): full()}) | causal(")):
        ac.Attention(pattern=ac.per_head({0: ac.full()}) | ac.causal())


# --------------------------------------------------------------------------------------------
# modifiers and normalizers (attncc/dsl/modifiers.py, normalizers.py)
# --------------------------------------------------------------------------------------------

def test_rel_pos_bias_window_differs_from_pattern():
    with pytest.raises(ValueError, match=re.escape("rel_pos_bias(window=(4, 4)) needs a window2d pattern with the "
                                                   "same window in the spec, found window2d(grid=(4, 4), "
                                                   "window=(2, 2)")):
        ac.Attention(pattern=ac.window2d((4, 4), 2), score_mods=ac.rel_pos_bias("rpb", (4, 4)))


def test_rel_pos_bias_without_window2d():
    with pytest.raises(ValueError, match=re.escape("rel_pos_bias(window=(2, 2)) needs a window2d pattern with the "
                                                   "same window in the spec, found None")):
        ac.Attention(pattern=ac.full(), score_mods=ac.rel_pos_bias("rpb", (2, 2)))


def test_softcap_not_positive():
    with pytest.raises(ValueError, match="softcap: c must be > 0, got -1.0"):
        ac.softcap(-1)


def test_score_mod_returning_a_boolean():
    with pytest.raises(TypeError, match="score_mod: the function must return a number, got the boolean "
                                        "score > 0; use ac.mask for masks"):
        ac.score_mod(lambda s, b, h, q, k: s > 0)


def test_decay2d_grid_differs_from_pattern():
    with pytest.raises(ValueError, match=re.escape("decay2d(grid=(2, 8)) does not match the pattern's grid (4, 4)")):
        ac.Attention(pattern=ac.window2d((4, 4), 2), post_mods=ac.decay2d((2, 8)))


def test_clipped_zeta_not_above_gamma():
    with pytest.raises(ValueError, match=re.escape("clipped: zeta (0.0) must be greater than gamma (0.5)")):
        ac.clipped(0.0, 0.5)


def test_linear_eps_not_positive():
    with pytest.raises(ValueError, match="linear: eps must be > 0, got 0.0"):
        ac.linear(eps=0)


def test_sigmoid_bias_not_a_number():
    with pytest.raises(TypeError, match=re.escape("sigmoid: bias must be a number, got str ('auto')")):
        ac.sigmoid(bias="auto")


# --------------------------------------------------------------------------------------------
# the spec (attncc/dsl/spec.py)
# --------------------------------------------------------------------------------------------

def test_spec_pattern_not_a_pattern():
    with pytest.raises(TypeError, match=re.escape("Attention: pattern must be an attncc pattern (ac.full(), "
                                                  "ac.window2d(...) ...), got str ('causal')")):
        ac.Attention(pattern="causal")


def test_spec_normalizer_not_a_normalizer():
    with pytest.raises(TypeError, match=re.escape("Attention: normalizer must be ac.softmax(), ac.sigmoid(...) or "
                                                  "ac.linear(...), got str ('softmax')")):
        ac.Attention(normalizer="softmax")


def test_spec_score_mods_not_a_tuple():
    with pytest.raises(TypeError, match=re.escape("Attention: score_mods must be a ScoreMod or a tuple of them, "
                                                  "got Softmax (softmax())")):
        ac.Attention(score_mods=ac.softmax())


def test_post_mod_passed_as_score_mod():
    with pytest.raises(TypeError, match=re.escape("Attention: score_mods must hold ScoreMod values (ac.alibi() ...), "
                                                  "got Clipped (clipped(zeta=1.1, gamma=-0.1))")):
        ac.Attention(score_mods=(ac.clipped(1.1, -0.1),))


def test_score_mod_passed_as_post_mod():
    with pytest.raises(TypeError, match=re.escape("Attention: post_mods must hold PostMod values "
                                                  "(ac.clipped(...) ...), got Alibi (alibi())")):
        ac.Attention(post_mods=[ac.alibi()])


@pytest.mark.parametrize("scale", [0, -0.5], ids=["zero", "negative"])
def test_scale_not_a_positive_number(scale):
    with pytest.raises(ValueError, match=re.escape(f"Attention: scale must be a positive number or None "
                                                   f"(d ** -0.5), got {scale!r}")):
        ac.Attention(scale=scale)


@pytest.mark.parametrize("scale", [True, "0.1"], ids=["bool", "str"])
def test_scale_not_a_number(scale):
    with pytest.raises(TypeError, match=re.escape(f"Attention: scale must be a number or None (d ** -0.5), got "
                                                  f"{type(scale).__name__} ({scale!r})")):
        ac.Attention(scale=scale)


def test_linear_attention_with_unsupported_pattern():
    with pytest.raises(ValueError, match=re.escape("linear attention composes only with full, causal and window2d "
                                                   "(joined by &), got sliding_window(left=4, right=0)")):
        ac.Attention(pattern=ac.sliding_window(4), normalizer=ac.linear())


def test_linear_attention_with_score_mods():
    with pytest.raises(ValueError, match=re.escape("linear attention has no scores or weights to modify; remove "
                                                   "score_mods (alibi(),) and post_mods ()")):
        ac.Attention(normalizer=ac.linear(), score_mods=ac.alibi())


def test_linear_attention_with_scale():
    with pytest.raises(ValueError, match="linear attention applies its feature map to the raw q and k and takes "
                                         "no scale; got scale=0.5"):
        ac.Attention(normalizer=ac.linear(), scale=0.5)


def test_captured_tensor_named_like_a_kernel_argument():
    with pytest.raises(ValueError, match=re.escape("Attention: captured tensor names ['v'] clash with the kernel's "
                                                   "own arguments ('q', 'k', 'v', 'return_lse'); rename them")):
        ac.Attention(score_mods=ac.score_mod(lambda s, b, h, q, k, v: s + v[h]))


# --------------------------------------------------------------------------------------------
# tracing user lambdas (attncc/dsl/trace.py)
# --------------------------------------------------------------------------------------------

def test_python_and_on_symbolic_index():
    with pytest.raises(TraceError, match=re.escape("Python `if`/`and`/`or`/`not` on the symbolic value i >= j "
                                                   "cannot be traced; use `&`, `|`, `~` or torch.where(cond, a, b)")):
        ac.mask(lambda b, h, q, k: q >= k and q - k < 4)


def test_python_if_on_symbolic_index():
    def fn(s, b, h, q, k):
        if q > k:
            return s - 1
        return s

    with pytest.raises(TraceError, match=re.escape("Python `if`/`and`/`or`/`not` on the symbolic value i > j")):
        ac.score_mod(fn)


@pytest.mark.parametrize("op, fn", [
    ("float()", lambda s, b, h, q, k: s * float(q)),
    ("int()", lambda s, b, h, q, k: s * int(q)),
    ("using as a Python index", lambda s, b, h, q, k: s * [1, 2, 3][q]),
    ("iterating", lambda s, b, h, q, k: s * sum(q)),
    ("len()", lambda s, b, h, q, k: s * len(q)),
    ("round()", lambda s, b, h, q, k: s * round(q)),
    ("indexing", lambda s, b, h, q, k: s * q[0]),
], ids=["float", "int", "index", "iter", "len", "round", "getitem"])
def test_python_builtin_on_symbolic_index(op, fn):
    with pytest.raises(TraceError, match=re.escape(f"{op} of the symbolic value i cannot be traced; attncc traces "
                                                   "arithmetic, comparisons")):
        ac.score_mod(fn)


def test_math_function_on_symbolic_index():
    import math
    with pytest.raises(TraceError, match=re.escape("float() of the symbolic value i + 1 cannot be traced")):
        ac.score_mod(lambda s, b, h, q, k: s - math.log(q + 1))


def test_unsupported_torch_function():
    with pytest.raises(TraceError, match="torch.sin is not supported in a traced attncc expression; supported: "
                                         "torch.abs, .*torch.tanh"):
        ac.score_mod(lambda s, b, h, q, k: torch.sin(s))


def test_captured_tensor_indexed_with_a_slice():
    with pytest.raises(TraceError, match=re.escape("captured tensor 'bias' must be indexed by scalar expressions, "
                                                   "not slice(None, None, None)")):
        ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, :])


def test_captured_tensor_used_without_an_index():
    with pytest.raises(TraceError, match=re.escape("captured tensor 'bias' used without an index; write bias[...]")):
        ac.score_mod(lambda s, b, h, q, k, bias: s + bias)


def test_mask_returning_an_unindexed_captured_tensor():
    with pytest.raises(TraceError, match=re.escape("captured tensor 'keep' used without an index; write keep[...]")):
        ac.mask(lambda b, h, q, k, keep: keep)


def test_captured_tensor_used_as_a_truth_value():
    with pytest.raises(TraceError, match=re.escape("captured tensor 'bias' used as a truth value; index it first")):
        ac.score_mod(lambda s, b, h, q, k, bias: s + 1 if bias else s)


def test_unsupported_value_in_traced_expression():
    with pytest.raises(TraceError, match=re.escape("a traced expression cannot use a value of type NoneType (None); "
                                                   "use Python numbers, the lambda's arguments and captured tensors")):
        ac.score_mod(lambda s, b, h, q, k: s + None)


def test_traced_function_failing_on_symbolic_input():
    per_head_scale = {0: 1.0, 1: 0.5}
    with pytest.raises(TraceError, match="score_mod: tracing the function failed with TypeError: unhashable type: "
                                         "'Sym'. attncc traces arithmetic"):
        ac.score_mod(lambda s, b, h, q, k: s * per_head_scale[h])


def test_mask_not_a_function():
    with pytest.raises(TypeError, match=re.escape("mask takes a function, got str ('q >= k')")):
        ac.mask("q >= k")


def test_mask_lambda_with_too_few_parameters():
    with pytest.raises(TypeError, match=re.escape("mask takes a function of (b, h, q, k[, captured tensors]), "
                                                  "got one with 2 parameter(s): ['q', 'k']")):
        ac.mask(lambda q, k: q >= k)


def test_score_mod_lambda_missing_the_score_parameter():
    with pytest.raises(TypeError, match=re.escape("score_mod takes a function of (score, b, h, q, k[, captured "
                                                  "tensors]), got one with 4 parameter(s): ['b', 'h', 'q', 'k']")):
        ac.score_mod(lambda b, h, q, k: -abs(q - k))


def test_lambda_with_keyword_only_parameter():
    with pytest.raises(TypeError, match=re.escape("mask: parameters ['keep'] are not plain positional parameters; "
                                                  "write lambda b, h, q, k[, captured tensor names]: ...")):
        ac.mask(lambda b, h, q, k, *, keep: keep[q, k])


def test_function_without_a_readable_signature():
    with pytest.raises(TypeError, match=re.escape("score_mod: cannot read the signature of <class 'int'>") +
                       ".*pass a def or lambda"):
        ac.score_mod(int)


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


def test_backend_not_built():
    with pytest.raises(NotImplementedError, match=re.escape("backend 'triton' is not available in this version "
                                                            "of attncc (available: reference, tvm); use "
                                                            "backend='reference'")):
        ac.compile(ac.Attention(), backend="triton")


@pytest.mark.parametrize("spec, why", [
    (ac.Attention(normalizer=ac.linear()), "backend='tvm' does not generate linear attention yet"),
    (ac.Attention(ac.routing((4, 4), (2, 2), 1)), "backend='tvm' does not generate content-dependent routing yet"),
], ids=["linear", "routing"])
def test_tvm_backend_refuses_what_it_cannot_generate(spec, why):
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(NotImplementedError, match=re.escape(why)):
        ac.compile(spec, backend="tvm")(q, q, q)


def test_tune_requested():
    with pytest.raises(NotImplementedError, match=re.escape("tune=True: the autotuner is not part of this version "
                                                            "of attncc; use tune=False (default plans)")):
        ac.compile(ac.Attention(), backend="reference", tune=True)


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
# evaluating captured tensors (attncc/ir/evaluate.py)
# --------------------------------------------------------------------------------------------

def test_captured_tensor_too_small():
    with pytest.raises(EvalError, match=re.escape("tensor 'bias' is indexed out of range on dim 1 (size 15): "
                                                  "indices span [0, 15] for pairs that are not masked "
                                                  "(in bias[h, i]); give it the shape the expression needs")):
        run(bias_spec(), *qkv(), bias=torch.zeros(2, 15))


def test_captured_tensor_constant_index_out_of_range():
    spec = ac.Attention(score_mods=ac.score_mod(lambda s, b, h, q, k, t: s + t[5]))
    with pytest.raises(EvalError, match=re.escape("tensor 't' is indexed out of range: index 5 on dim 0 of size 3 "
                                                  "(in t[5])")):
        run(spec, *qkv(), t=torch.zeros(3))


def test_captured_tensor_wrong_number_of_indices():
    with pytest.raises(EvalError, match=re.escape("tensor 'bias' has 3 dims (2, 16, 1) but the expression indexes "
                                                  "it with 2: bias[h, i]")):
        run(bias_spec(), *qkv(), bias=torch.zeros(2, 16, 1))


def test_out_of_range_error_is_a_value_error():
    with pytest.raises(ValueError, match="out of range"):
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
