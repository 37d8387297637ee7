"""Every user-facing error of the DSL (argument checks, patterns, modifiers, normalizers, the
spec, lambda tracing), one test per message, each checking the type and that the message names
the offending value and the fix."""
import re

import numpy as np
import pytest
import torch

import attncc as ac
from attncc.dsl.trace import TraceError


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
