"""The DSL's values (not its errors, see test_errors.py): every constructor gives a frozen,
hashable, printable value; equal constructions are equal; composition flattens and carries the
grid, leaves, per-head groups and captured tensor names."""
import dataclasses

import numpy as np
import pytest
import torch

import attncc as ac
from attncc.dsl.patterns import And, Or, split_heads



# --------------------------------------------------------------------------------------------
# 1. values: immutable, hashable, equal by construction, readable repr
# --------------------------------------------------------------------------------------------

LAYOUT = [[1, 0, 1], [0, 1, 1]]
LAYOUT3 = [[[True, False], [True, True]], [[False, True], [True, False]]]

VALUES = {
    "full": lambda: ac.full(),
    "causal_top_left": lambda: ac.causal(),
    "causal_bottom_right": lambda: ac.causal(align="bottom_right"),
    "sliding_window": lambda: ac.sliding_window(3, 1),
    "dilated": lambda: ac.dilated(2, 4, 1),
    "window2d": lambda: ac.window2d((8, 8), (4, 4)),
    "window2d_shifted": lambda: ac.window2d((8, 8), (4, 4), (2, 2)),
    "neighborhood2d": lambda: ac.neighborhood2d((8, 8), (3, 3)),
    "neighborhood2d_dilated": lambda: ac.neighborhood2d((8, 8), (3, 3), (2, 2)),
    "axial_2d": lambda: ac.axial((4, 6), 0),
    "axial_3d_negative_axis": lambda: ac.axial((2, 3, 4), -1),
    "stripes_axis0": lambda: ac.stripes((4, 6), 2),
    "stripes_axis1": lambda: ac.stripes((4, 6), 3, axis=1),
    "routing": lambda: ac.routing((8, 8), (2, 2), 2),
    "block_sparse_2d": lambda: ac.block_sparse(LAYOUT, (4, 4)),
    "block_sparse_3d": lambda: ac.block_sparse(LAYOUT3, (2, 8)),
    "block_sparse_torch_bool": lambda: ac.block_sparse(torch.tensor(LAYOUT, dtype=torch.bool), (4, 4)),
    "mask": lambda: ac.mask(lambda b, h, q, k: q >= k),
    "mask_captured": lambda: ac.mask(lambda b, h, q, k, doc: doc[q] == doc[k]),
    "per_head_int_keys": lambda: ac.per_head({0: ac.full(), 1: ac.causal()}),
    "per_head_tuple_keys": lambda: ac.per_head({(0, 1): ac.stripes((4, 6), 2), (2, 3): ac.stripes((4, 6), 2, 1)}),
    "and": lambda: ac.window2d((8, 8), (4, 4)) & ac.causal(),
    "or": lambda: ac.sliding_window(2) | ac.dilated(4, 16),
    "rel_pos_bias": lambda: ac.rel_pos_bias("rpb", (4, 4)),
    "alibi": lambda: ac.alibi(),
    "softcap": lambda: ac.softcap(30),
    "score_mod": lambda: ac.score_mod(lambda s, b, h, q, k: s * 2),
    "score_mod_captured": lambda: ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q, k]),
    "softmax": lambda: ac.softmax(),
    "sigmoid_default": lambda: ac.sigmoid(),
    "sigmoid_bias": lambda: ac.sigmoid(-2.0),
    "linear_elu1": lambda: ac.linear(),
    "linear_relu": lambda: ac.linear("relu"),
    "linear_focused": lambda: ac.linear("focused", eps=1e-5),
    "linear_identity": lambda: ac.linear("identity"),
    "decay2d": lambda: ac.decay2d((8, 8)),
    "clipped": lambda: ac.clipped(1.1, -0.1),
    "attention_default": lambda: ac.Attention(),
    "attention_full": lambda: ac.Attention(
        pattern=ac.window2d((8, 8), (4, 4), (2, 2)), normalizer=ac.softmax(),
        score_mods=(ac.rel_pos_bias("rpb", (4, 4)), ac.softcap(50)), post_mods=ac.decay2d((8, 8)), scale=0.25),
}


@pytest.mark.parametrize("make", VALUES.values(), ids=VALUES.keys())
def test_value_is_frozen(make):
    x = make()
    fields = dataclasses.fields(x)
    name = fields[0].name if fields else "anything"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(x, name, None)


@pytest.mark.parametrize("make", VALUES.values(), ids=VALUES.keys())
def test_equal_constructions_are_equal_and_hash_equal(make):
    a, b = make(), make()
    assert a is not b
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1


UNEQUAL = {
    "causal_align": (ac.causal(), ac.causal("bottom_right")),
    "sliding_left": (ac.sliding_window(3), ac.sliding_window(4)),
    "sliding_right": (ac.sliding_window(3), ac.sliding_window(3, 1)),
    "dilated_rate": (ac.dilated(2, 4), ac.dilated(3, 4)),
    "dilated_right": (ac.dilated(2, 4), ac.dilated(2, 4, 2)),
    "window2d_shift": (ac.window2d((8, 8), (4, 4)), ac.window2d((8, 8), (4, 4), (2, 2))),
    "window2d_window": (ac.window2d((8, 8), (4, 4)), ac.window2d((8, 8), (2, 4))),
    "window2d_grid": (ac.window2d((8, 8), (4, 4)), ac.window2d((8, 12), (4, 4))),
    "neighborhood_dilation": (ac.neighborhood2d((8, 8), (3, 3)), ac.neighborhood2d((8, 8), (3, 3), (2, 2))),
    "neighborhood_kernel": (ac.neighborhood2d((8, 8), (3, 3)), ac.neighborhood2d((8, 8), (3, 5))),
    "axial_axis": (ac.axial((4, 6), 0), ac.axial((4, 6), 1)),
    "axial_grid": (ac.axial((4, 6)), ac.axial((1, 4, 6))),
    "stripes_axis": (ac.stripes((6, 6), 2, 0), ac.stripes((6, 6), 2, 1)),
    "stripes_width": (ac.stripes((6, 6), 2), ac.stripes((6, 6), 3)),
    "routing_topk": (ac.routing((8, 8), (2, 2), 1), ac.routing((8, 8), (2, 2), 2)),
    "block_sparse_layout": (ac.block_sparse(LAYOUT, (4, 4)), ac.block_sparse([[1, 1, 1], [0, 1, 1]], (4, 4))),
    "block_sparse_block": (ac.block_sparse(LAYOUT, (4, 4)), ac.block_sparse(LAYOUT, (4, 8))),
    "mask_expr": (ac.mask(lambda b, h, q, k: q >= k), ac.mask(lambda b, h, q, k: q > k)),
    "mask_tensor_name": (ac.mask(lambda b, h, q, k, x: x[q] == x[k]), ac.mask(lambda b, h, q, k, y: y[q] == y[k])),
    "per_head_heads": (ac.per_head({0: ac.full(), 1: ac.causal()}), ac.per_head({1: ac.full(), 0: ac.causal()})),
    "and_vs_or": (ac.causal() & ac.sliding_window(2), ac.causal() | ac.sliding_window(2)),
    "rel_pos_bias_name": (ac.rel_pos_bias("a", (4, 4)), ac.rel_pos_bias("b", (4, 4))),
    "rel_pos_bias_window": (ac.rel_pos_bias("a", (4, 4)), ac.rel_pos_bias("a", (2, 4))),
    "softcap": (ac.softcap(30), ac.softcap(50)),
    "score_mod": (ac.score_mod(lambda s, b, h, q, k: s * 2), ac.score_mod(lambda s, b, h, q, k: s * 3)),
    "sigmoid_bias": (ac.sigmoid(), ac.sigmoid(-2.0)),
    "linear_feature_map": (ac.linear("elu1"), ac.linear("relu")),
    "linear_eps": (ac.linear(eps=1e-6), ac.linear(eps=1e-5)),
    "decay2d_gamma": (ac.decay2d((8, 8)), ac.decay2d((8, 8), "g")),
    "clipped": (ac.clipped(1.1, -0.1), ac.clipped(1.0, -0.1)),
    "full_vs_causal": (ac.full(), ac.causal()),
    "alibi_vs_softmax": (ac.alibi(), ac.softmax()),      # two field-less values of different kinds
    "full_vs_alibi": (ac.full(), ac.alibi()),
    "attention_scale": (ac.Attention(), ac.Attention(scale=0.5)),
    "attention_normalizer": (ac.Attention(), ac.Attention(normalizer=ac.sigmoid())),
    "attention_pattern": (ac.Attention(), ac.Attention(ac.causal())),
    "attention_score_mods": (ac.Attention(), ac.Attention(score_mods=ac.alibi())),
    "attention_post_mods": (ac.Attention(), ac.Attention(post_mods=ac.clipped(1.0, 0.0))),
}


@pytest.mark.parametrize("a, b", UNEQUAL.values(), ids=UNEQUAL.keys())
def test_different_arguments_compare_unequal(a, b):
    assert a != b and b != a
    assert len({a, b}) == 2


def test_two_different_lambdas_tracing_to_one_expression_are_equal():
    def causal_fn(b, h, q, k):
        return q >= k

    masks = [ac.mask(lambda b, h, q, k: q >= k), ac.mask(lambda b, h, x, y: ~(x < y)), ac.mask(causal_fn)]
    assert len(set(masks)) == 1 and masks[0] == masks[1] == masks[2]
    mods = [ac.score_mod(lambda s, b, h, q, k: s * 2), ac.score_mod(lambda s, b, h, q, k: s + s)]
    assert mods[0] == mods[1] and hash(mods[0]) == hash(mods[1])
    specs = [ac.Attention(m, score_mods=sm) for m, sm in zip(masks, mods)]
    assert specs[0] == specs[1] and hash(specs[0]) == hash(specs[1])


def test_equivalent_argument_forms_are_equal():
    assert ac.axial((2, 3, 4), -1) == ac.axial((2, 3, 4), 2)
    assert ac.axial([4, 6]) == ac.axial((4, 6), 1)
    assert ac.stripes((4, 6), 2, -1) == ac.stripes((4, 6), 2, 1)
    assert ac.window2d([8, 8], 4, 2) == ac.window2d((8, 8), (4, 4), (2, 2))
    assert ac.sigmoid(-2) == ac.sigmoid(-2.0)
    assert ac.softcap(30) == ac.softcap(30.0)
    assert ac.Attention(scale=1) == ac.Attention(scale=1.0)
    assert ac.Attention() == ac.Attention(ac.full(), ac.softmax())
    assert ac.Attention(score_mods=ac.alibi()) == ac.Attention(score_mods=[ac.alibi()])
    layouts = [LAYOUT, np.array(LAYOUT, dtype=bool), torch.tensor(LAYOUT, dtype=torch.bool),
               torch.tensor(LAYOUT), [[True, False, True], [False, True, True]]]
    pats = [ac.block_sparse(x, (4, 4)) for x in layouts]
    assert len(set(pats)) == 1
    assert pats[0].layout == ((True, False, True), (False, True, True))
    p3 = ac.block_sparse(torch.tensor(LAYOUT3), [2, 8])
    assert p3 == ac.block_sparse(np.array(LAYOUT3, dtype=np.int64), (2, 8))
    assert p3.array.shape == (2, 2, 2) and p3.block == (2, 8)


def test_per_head_keys_are_normalised():
    a, b = ac.causal(), ac.sliding_window(2)
    ph = ac.per_head({0: a, 1: b})
    assert ph.branches == (((0,), a), ((1,), b))
    assert ph == ac.per_head({(1,): b, (0,): a})
    ph2 = ac.per_head({(3, 2): b, (1, 0): a})
    assert ph2.branches == (((0, 1), a), ((2, 3), b))
    assert ph2 == ac.per_head({(0, 1): a, (2, 3): b})


def test_constructors_store_normalised_arguments():
    assert ac.sigmoid().bias is None and ac.sigmoid(-3).bias == -3.0
    assert [ac.linear(f).feature_map for f in ("elu1", "relu", "focused", "identity")] == [
        "elu1", "relu", "focused", "identity"]
    assert ac.linear().eps == 1e-6
    assert ac.causal().align == "top_left" and ac.causal("bottom_right").align == "bottom_right"
    w = ac.window2d([8, 8], [4, 4], [2, 2])
    assert (w.grid, w.window, w.shift) == ((8, 8), (4, 4), (2, 2))
    n = ac.neighborhood2d((8, 8), 3, 2)
    assert (n.grid, n.kernel, n.dilation) == ((8, 8), (3, 3), (2, 2))
    assert ac.axial((2, 3, 4), -1).axis == 2 and ac.axial((2, 3, 4), -3).axis == 0
    assert ac.stripes((4, 6), 2, -2).axis == 0
    assert ac.softcap(30).cap == 30.0 and isinstance(ac.softcap(30).cap, float)
    c = ac.clipped(1, 0)
    assert (c.zeta, c.gamma) == (1.0, 0.0)
    assert ac.decay2d((8, 8)).gamma == "gamma"
    spec = ac.Attention(score_mods=ac.alibi(), post_mods=[ac.clipped(1, 0)], scale=1)
    assert spec.score_mods == (ac.alibi(),) and spec.post_mods == (c,) and spec.scale == 1.0
    assert ac.Attention().pattern == ac.full() and ac.Attention().normalizer == ac.softmax()
    assert ac.Attention().scale is None


REPRS = {
    "full": (ac.full(), "full()"),
    "causal": (ac.causal(), "causal(align='top_left')"),
    "causal_bottom_right": (ac.causal("bottom_right"), "causal(align='bottom_right')"),
    "sliding_window": (ac.sliding_window(3), "sliding_window(left=3, right=0)"),
    "dilated": (ac.dilated(2, 4, 1), "dilated(rate=2, left=4, right=1)"),
    "window2d": (ac.window2d((5, 7), (2, 3)), "window2d(grid=(5, 7), window=(2, 3), shift=(0, 0))"),
    "window2d_shifted": (ac.window2d((8, 8), (4, 4), (2, 2)),
                         "window2d(grid=(8, 8), window=(4, 4), shift=(2, 2))"),
    "neighborhood2d": (ac.neighborhood2d((8, 8), (3, 3), (2, 2)),
                       "neighborhood2d(grid=(8, 8), kernel=(3, 3), dilation=(2, 2))"),
    "axial": (ac.axial((2, 3, 4), -2), "axial(grid=(2, 3, 4), axis=1)"),
    "stripes": (ac.stripes((4, 6), 3, 1), "stripes(grid=(4, 6), width=3, axis=1)"),
    "routing": (ac.routing((8, 8), (2, 2), 3), "routing(grid=(8, 8), regions=(2, 2), topk=3)"),
    "per_head": (ac.per_head({(1, 0): ac.full(), 2: ac.causal()}),
                 "per_head({(0, 1): full(), (2,): causal(align='top_left')})"),
    "and": (ac.full() & ac.causal() & ac.sliding_window(1), "(full() & causal(align='top_left') & "
                                                            "sliding_window(left=1, right=0))"),
    "or": (ac.causal() | ac.sliding_window(1, 1),
           "(causal(align='top_left') | sliding_window(left=1, right=1))"),
    "rel_pos_bias": (ac.rel_pos_bias("rpb", (4, 4)), "rel_pos_bias('rpb', window=(4, 4))"),
    "alibi": (ac.alibi(), "alibi()"),
    "softcap": (ac.softcap(30), "softcap(30.0)"),
    "softmax": (ac.softmax(), "softmax()"),
    "sigmoid_default": (ac.sigmoid(), "sigmoid(bias=None)"),
    "sigmoid_bias": (ac.sigmoid(-2), "sigmoid(bias=-2.0)"),
    "linear": (ac.linear("focused", 1e-5), "linear(feature_map='focused', eps=1e-05)"),
    "decay2d": (ac.decay2d((8, 8), "g"), "decay2d(grid=(8, 8), gamma='g')"),
    "clipped": (ac.clipped(1.1, -0.1), "clipped(zeta=1.1, gamma=-0.1)"),
    "attention_default": (ac.Attention(), "Attention(pattern=full(), normalizer=softmax())"),
    "attention": (
        ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), ac.softmax(),
                     score_mods=(ac.rel_pos_bias("rpb", (4, 4)), ac.alibi()),
                     post_mods=ac.clipped(1.0, 0.0), scale=0.5),
        "Attention(pattern=window2d(grid=(8, 8), window=(4, 4), shift=(2, 2)), normalizer=softmax(), "
        "score_mods=(rel_pos_bias('rpb', window=(4, 4)), alibi()), post_mods=(clipped(zeta=1.0, gamma=0.0),), "
        "scale=0.5)"),
}


@pytest.mark.parametrize("value, text", REPRS.values(), ids=REPRS.keys())
def test_repr_round_trips(value, text):
    assert repr(value) == text
    assert eval(text, vars(ac)) == value


@pytest.mark.parametrize("value, text", [
    (ac.block_sparse(LAYOUT, (4, 4)), "block_sparse(layout=<2x3 bool, 4 set>, block=(4, 4))"),
    (ac.block_sparse(LAYOUT3, (2, 8)), "block_sparse(layout=<2x2x2 bool, 5 set>, block=(2, 8))"),
    (ac.mask(lambda b, h, q, k: q >= k), "mask(i >= j)"),
    (ac.mask(lambda b, h, q, k, doc: doc[q] == doc[k]), "mask(Eq(doc[i], doc[j]))"),
    (ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q, k]), "score_mod(score + bias[h, i, j])"),
], ids=["block_sparse_2d", "block_sparse_3d", "mask", "mask_captured", "score_mod"])
def test_repr_of_traced_and_table_values_is_readable(value, text):
    assert repr(value) == text


def test_attention_repr_shows_its_parts():
    spec = ac.Attention(ac.causal() & ac.mask(lambda b, h, q, k: q - k < 8), ac.sigmoid(),
                        score_mods=ac.softcap(20), post_mods=ac.clipped(1.5, -0.5), scale=0.125)
    text = repr(spec)
    for part in ("pattern=(causal(align='top_left') & mask(i - j < 8))", "normalizer=sigmoid(bias=None)",
                 "score_mods=(softcap(20.0),)", "post_mods=(clipped(zeta=1.5, gamma=-0.5),)", "scale=0.125"):
        assert part in text


# --------------------------------------------------------------------------------------------
# 2. composition
# --------------------------------------------------------------------------------------------

A, B, C = ac.causal(), ac.sliding_window(4), ac.dilated(2, 8)


@pytest.mark.parametrize("pat, kind, parts", [
    (A & B & C, And, (A, B, C)),
    ((A & B) & C, And, (A, B, C)),
    (A & (B & C), And, (A, B, C)),
    ((A & B) & (C & A), And, (A, B, C, A)),
    (A | B | C, Or, (A, B, C)),
    (A | (B | C), Or, (A, B, C)),
    ((A & B) | C, Or, (A & B, C)),
    ((A | B) & C, And, (A | B, C)),
], ids=["and3", "and_left", "and_right", "and_of_ands", "or3", "or_right", "or_of_and", "and_of_or"])
def test_composition_flattens(pat, kind, parts):
    assert type(pat) is kind
    assert pat.parts == parts
    assert all(type(p) is not kind for p in pat.parts)


def test_flattened_compositions_are_equal():
    assert (A & B) & C == A & (B & C) and hash((A & B) & C) == hash(A & (B & C))
    assert (A | B) | C == A | (B | C)


W = ac.window2d((8, 8), (4, 4), (2, 2))


@pytest.mark.parametrize("pat, grid", [
    (ac.full(), None),
    (A & B | C, None),
    (ac.mask(lambda b, h, q, k: q >= k), None),
    (ac.block_sparse(LAYOUT, (4, 4)), None),
    (W, (8, 8)),
    (W & ac.causal(), (8, 8)),
    (ac.causal() & (ac.axial((8, 8), 0) | ac.axial((8, 8), 1)), (8, 8)),
    (ac.neighborhood2d((6, 8), (3, 3)), (6, 8)),
    (ac.axial((2, 3, 4), 0), (2, 3, 4)),
    (ac.stripes((2, 3, 4), 2, 2), (2, 3, 4)),
    (ac.routing((8, 8), (2, 2), 1) & W, (8, 8)),
    (ac.per_head({0: ac.stripes((6, 6), 2), 1: ac.full()}), (6, 6)),
], ids=["full", "one_d_composition", "mask", "block_sparse", "window2d", "window_and_causal",
        "criss_cross", "neighborhood", "axial_3d", "stripes_3d", "routing_and_window", "per_head"])
def test_grid_is_the_shared_grid(pat, grid):
    assert pat.grid == grid


def test_leaves_iterate_in_order():
    s0, s1 = ac.stripes((6, 6), 2, 0), ac.stripes((6, 6), 3, 1)
    assert list(A.leaves()) == [A]
    assert list(((A & B) | C).leaves()) == [A, B, C]
    assert list((A & (B | C) & W).leaves()) == [A, B, C, W]
    assert list(ac.per_head({1: s1, 0: s0 & A}).leaves()) == [s0, A, s1]


def test_per_head_distributes_over_and():
    s0, s1 = ac.stripes((6, 6), 2, 0), ac.stripes((6, 6), 3, 1)
    ph = ac.per_head({(2, 3): s1, (0, 1): s0 & A})
    assert split_heads(ph) == [((0, 1), s0 & A), ((2, 3), s1)]
    assert split_heads(ph & B) == [((0, 1), s0 & A & B), ((2, 3), s1 & B)]
    assert split_heads(B & ph & C) == [((0, 1), s0 & A & B & C), ((2, 3), s1 & B & C)]
    assert split_heads(A & B) == [(None, A & B)]
    assert split_heads(A | B) == [(None, A | B)]


def test_captured_lists_tensor_names_in_order_without_duplicates():
    spec = ac.Attention(
        pattern=ac.mask(lambda b, h, q, k, doc, keep: (doc[q] == doc[k]) & (keep[k] != 0)) & W,
        score_mods=(ac.score_mod(lambda s, b, h, q, k, bias, doc: s + bias[h, q, k] * doc[q]),
                    ac.rel_pos_bias("rpb", (4, 4)), ac.alibi()),
        post_mods=(ac.decay2d((8, 8), "gam"),))
    assert spec.captured() == ("doc", "keep", "bias", "rpb", "gam")
    assert ac.Attention().captured() == ()
    assert ac.Attention(ac.causal(), score_mods=ac.softcap(3), post_mods=ac.decay2d((4, 4))).captured() == ("gamma",)
    m = ac.score_mod(lambda s, b, h, q, k, x, y: s + y[q] + x[k])
    assert m.captured == ("x", "y")
    assert ac.Attention(score_mods=(m, m)).captured() == ("x", "y")


def test_context_holds_grid_and_window():
    spec = ac.Attention(W & ac.causal(), score_mods=ac.rel_pos_bias("rpb", (4, 4)))
    ctx = spec.context()
    assert ctx.grid == (8, 8) and ctx.window2d == W
    assert ac.Attention().context().grid is None and ac.Attention().context().window2d is None
