"""Before/after tests for each pass of the pipeline, and the verifier catching broken IR."""
import dataclasses
import json

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import attncc as ac
from attncc.ir import symbols as S
from attncc.ir.evaluate import evaluate
from attncc.ir.intervals import bound
from attncc.ir.plan import FAST_MEMORY, TilePlan, fits, working_set
from attncc.ir.program import EMPTY, FULL, PARTIAL, Dims
from attncc.ir.verify import VerifyError, verify
from attncc.passes.canonicalize import canonicalize
from attncc.passes.classify_blocks import classify_blocks
from attncc.passes.gather import gather
from attncc.passes.pipeline import lower
from attncc.passes.plan import plan
from attncc.passes.reads import exact_ranges, reads
from attncc.passes.simplify_masks import simplify_masks

i, j = S.i, S.j


def canon(spec, N=64, M=None, H=2, d=16):
    return canonicalize(spec, Dims(1, H, N, M or N, d, d))


def through(prog, *passes):
    for p in passes:
        prog = p(prog)
        verify(prog)
    return prog


# ---- canonicalize -------------------------------------------------------------------------

def test_canonicalize_binds_sizes_in_predicates():
    prog = canon(ac.Attention(ac.causal("bottom_right")), N=10, M=30)
    (grp,) = prog.groups
    assert grp.heads == (0, 1)
    assert [p.kind for p in grp.preds] == ["causal"]
    assert sympy.simplify(grp.preds[0].expr.lhs - grp.preds[0].expr.rhs - (j - i - 20)) == 0


def test_canonicalize_defaults_scale_and_sigmoid_bias():
    prog = canon(ac.Attention(normalizer=ac.sigmoid()), N=16, M=32, d=64)
    assert prog.scale == pytest.approx(64 ** -0.5)
    assert prog.norm.kind == "sigmoid" and prog.norm.bias == pytest.approx(-np.log(32))
    assert canon(ac.Attention(scale=0.25)).scale == 0.25
    assert canon(ac.Attention(normalizer=ac.linear())).scale == 1.0


def _same(a, b):
    return all(abs(float((a - b).subs(S.score, x))) < 1e-12 for x in (-3.0, 0.1, 2.5))


def test_canonicalize_applies_score_mods_in_order():
    prog = canon(ac.Attention(score_mods=(ac.softcap(2.0), ac.score_mod(lambda s, b, h, q, k: s + 1))))
    assert _same(prog.score, 2 * sympy.tanh(S.score / 2) + 1)
    prog = canon(ac.Attention(score_mods=(ac.score_mod(lambda s, b, h, q, k: s + 1), ac.softcap(2.0))))
    assert _same(prog.score, 2 * sympy.tanh((S.score + 1) / 2))


def test_canonicalize_splits_per_head_and_distributes_and():
    spec = ac.Attention(ac.per_head({(0, 2): ac.full(), (1,): ac.sliding_window(3)}) & ac.causal())
    prog = canon(spec, H=3)
    assert [g.heads for g in prog.groups] == [(0, 2), (1,)]
    assert [[p.kind for p in g.preds] for g in prog.groups] == [["full", "causal"], ["sliding_window", "causal"]]


def test_canonicalize_records_captured_constants_and_prologues():
    layout = np.eye(4, dtype=bool)
    spec = ac.Attention(ac.block_sparse(layout, (16, 16)) & ac.mask(lambda b, h, q, k, doc: doc[q] == doc[k]),
                        score_mods=ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h]))
    prog = canon(spec)
    assert prog.captured == ("doc", "bias")
    assert len(prog.constants) == 1 and np.array_equal(prog.constants[0].array, layout)
    prog = canon(ac.Attention(ac.routing((8, 8), (2, 2), 1)))
    assert prog.prologues[0].kind == "routing" and prog.prologues[0].outputs == ("__route_mask", "__route_idx")


# ---- gather -------------------------------------------------------------------------------

def _tokens(gat):
    g, t = np.arange(gat.G)[:, None], np.arange(gat.Lq)[None, :]
    tok = np.broadcast_to(evaluate(gat.q_token, {S.g: g, S.t: t}), (gat.G, gat.Lq))
    ok = np.broadcast_to(np.asarray(evaluate(gat.q_valid, {S.g: g, S.t: t}), bool), (gat.G, gat.Lq))
    return np.where(ok, tok, -1)


def test_gather_dense_source_is_identity():
    prog = through(canon(ac.Attention(ac.causal())), gather)
    gat = prog.groups[0].gather
    assert (gat.kind, gat.G, gat.Lq, gat.Lk) == ("dense", 1, 64, 64)
    assert gat.q_token == S.t and gat.k_token == S.u
    assert prog.groups[0].residual == sympy.Le(S.u, S.t)


def test_gather_window2d_maps_windows_without_copies():
    prog = through(canon(ac.Attention(ac.window2d((4, 6), (2, 3))), N=24), gather)
    gat = prog.groups[0].gather
    assert (gat.kind, gat.G, gat.Lq, gat.Lk) == ("window2d", 4, 6, 6)
    assert _tokens(gat).tolist() == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11],
                                     [12, 13, 14, 18, 19, 20], [15, 16, 17, 21, 22, 23]]
    assert prog.groups[0].residual == sympy.true          # the window equality is implied


def test_gather_shifted_window_rolls_by_index_arithmetic():
    prog = through(canon(ac.Attention(ac.window2d((4, 4), (2, 2), (1, 1))), N=16), gather)
    gat = prog.groups[0].gather
    # window 0 of the map rolled by -1 holds original tokens (1,1) (1,2) (2,1) (2,2)
    assert _tokens(gat)[0].tolist() == [5, 6, 9, 10]
    # the last window wraps around: shifted rows/cols 2,3 -> original 3,0
    assert _tokens(gat)[3].tolist() == [15, 12, 3, 0]
    assert prog.groups[0].residual != sympy.true          # Swin's region mask stays


def test_gather_picks_the_fewest_keys_and_keeps_the_rest():
    spec = ac.Attention(ac.axial((8, 8), 1) & ac.window2d((8, 8), (2, 2)) & ac.causal())
    prog = through(canon(spec), gather)
    gat = prog.groups[0].gather
    assert gat.kind == "window2d" and gat.Lk == 4
    assert S.free_index_symbols(prog.groups[0].residual) <= {S.g, S.t, S.u}


def test_gather_neighborhood_is_per_query_and_dilated_by_residue():
    prog = through(canon(ac.Attention(ac.neighborhood2d((5, 6), (3, 3))), N=30), gather)
    gat = prog.groups[0].gather
    assert gat.per_query and (gat.G, gat.Lq, gat.Lk) == (5, 6, 9)
    keys = [int(evaluate(gat.k_token, {S.g: 0, S.t: 0, S.u: u})) for u in range(9)]
    assert keys == [0, 1, 2, 6, 7, 8, 12, 13, 14]            # corner query: box clamped inside
    prog = through(canon(ac.Attention(ac.dilated(3, 9)), N=10), gather)
    gat = prog.groups[0].gather
    assert (gat.kind, gat.G, gat.Lq) == ("dilated", 3, 4)
    assert _tokens(gat).tolist() == [[0, 3, 6, 9], [1, 4, 7, -1], [2, 5, 8, -1]]


def test_gather_axial_stripes_routing():
    g = through(canon(ac.Attention(ac.axial((2, 3, 4), 0)), N=24), gather).groups[0].gather
    assert (g.G, g.Lq) == (12, 2) and _tokens(g)[5].tolist() == [5, 17]
    g = through(canon(ac.Attention(ac.stripes((5, 2), 2, 0)), N=10), gather).groups[0].gather
    assert _tokens(g).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]]
    g = through(canon(ac.Attention(ac.routing((4, 4), (2, 2), 2)), N=16), gather).groups[0].gather
    assert (g.kind, g.G, g.Lq, g.Lk) == ("routing", 4, 4, 8)
    assert "__route_idx" in S.tables_in(g.k_token)


# ---- classify_blocks ----------------------------------------------------------------------

def test_classify_causal_lower_triangle_full_diagonal_partial():
    prog = through(canon(ac.Attention(ac.causal()), N=64), gather, classify_blocks)
    c = prog.groups[0].blocks.coarsen(16, 16)[0]
    expect = np.where(np.tri(4, k=-1, dtype=bool), FULL, EMPTY)
    np.fill_diagonal(expect, PARTIAL)
    assert np.array_equal(c, expect)
    assert int(prog.groups[0].blocks.pairs.sum()) == 64 * 65 // 2


def test_classify_sliding_window_band_and_block_sparse_layout():
    prog = through(canon(ac.Attention(ac.sliding_window(16)), N=64), gather, classify_blocks)
    c = prog.groups[0].blocks.classes[0]
    assert (c[np.triu_indices(4, 1)] == EMPTY).all() and (c[np.tril_indices(4, -2)] == EMPTY).all()
    layout = np.array([[1, 0], [1, 1]], bool)
    prog = through(canon(ac.Attention(ac.block_sparse(layout, (32, 32))), N=64), gather, classify_blocks)
    c = prog.groups[0].blocks.coarsen(32, 32)[0]
    assert np.array_equal(c, np.where(layout, FULL, EMPTY))


def test_classify_shifted_windows_only_edge_windows_partial():
    prog = through(canon(ac.Attention(ac.window2d((8, 8), (2, 2), (1, 1))), N=64), gather, classify_blocks)
    c = prog.groups[0].blocks.classes[:, 0, 0].reshape(4, 4)
    partial = np.zeros((4, 4), bool)
    partial[3, :] = partial[:, 3] = True
    assert np.array_equal(c == PARTIAL, partial) and (c[~partial] == FULL).all()


def test_classify_runtime_tensor_mask_is_partial_not_full():
    spec = ac.Attention(ac.causal() & ac.mask(lambda b, h, q, k, doc: doc[q] == doc[k]))
    prog = through(canon(spec, N=32), gather, classify_blocks)
    c = prog.groups[0].blocks.coarsen(16, 16)[0]
    assert c.tolist() == [[PARTIAL, EMPTY], [PARTIAL, PARTIAL]]


# ---- simplify_masks -----------------------------------------------------------------------

def test_simplify_drops_what_holds_on_partial_tiles():
    spec = ac.Attention(ac.causal() & ac.sliding_window(1000))   # the window never binds at N=64
    prog = through(canon(spec, N=64), gather, classify_blocks)
    assert len(prog.groups[0].residual.args) >= 2
    after = through(prog, simplify_masks)
    assert after.groups[0].residual == sympy.Le(S.u, S.t)


def test_simplify_removes_mask_when_no_partial_tiles():
    prog = through(canon(ac.Attention(ac.window2d((8, 8), (4, 4))), N=64), gather, classify_blocks, simplify_masks)
    assert prog.groups[0].residual == sympy.true
    prog = through(canon(ac.Attention(ac.stripes((7, 4), 3)), N=28), gather, classify_blocks)
    before = prog.groups[0].residual
    after = through(prog, simplify_masks).groups[0].residual
    assert before != sympy.true and after != sympy.true       # the short last stripe keeps its validity mask


# ---- plan ---------------------------------------------------------------------------------

def test_plan_json_round_trip_and_validation():
    p = TilePlan(block_m=32, block_n=128, num_warps=8, num_stages=3)
    assert TilePlan.from_json(p.to_json()) == p
    assert json.loads(p.to_json())["block_n"] == 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.block_m = 1
    with pytest.raises(ValueError, match="unknown keys"):
        TilePlan.from_json('{"block_m": 16, "warps": 2}')


def test_plan_tiles_are_atom_multiples_and_fit_fast_memory():
    prog = through(canon(ac.Attention(ac.causal()), N=1000), gather, classify_blocks, simplify_masks, plan)
    p = prog.groups[0].plan
    assert (p.block_m, p.block_n) == (64, 64)
    prog = through(canon(ac.Attention(ac.window2d((14, 14), (7, 7))), N=196), gather, classify_blocks,
                   simplify_masks, plan)
    assert (prog.groups[0].plan.block_m, prog.groups[0].plan.block_n) == (49, 49)
    big = TilePlan(block_m=128, block_n=256)
    assert working_set(big, 256, 256) > FAST_MEMORY["sm_80"].bytes and not fits(big, 256, 256, "sm_80")
    prog = lower(ac.Attention(), Dims(1, 1, 512, 512, 256, 256), target="sm_80").program
    assert fits(prog.groups[0].plan, 256, 256, "sm_80")


def test_cpu_plan_long_key_tiles_where_every_softmax_tile_is_full_short_unroll_where_banded():
    def key_tile(spec, n, d=64):
        return lower(spec, Dims(1, 8, n, n, d, d), target="tvm").program.groups[0].plan.block_n

    def unroll(spec, n=4096):
        return lower(spec, Dims(1, 8, n, n, 64, 64), target="tvm").program.groups[0].plan.unroll
    assert key_tile(ac.Attention(), 4096) == 256
    assert key_tile(ac.Attention(), 4096, d=256) == 256            # 64 x 256 tiles still fit L2
    assert key_tile(ac.Attention(ac.axial((512, 8), 0)), 4096) == 256
    assert key_tile(ac.Attention(), 520) == 64          # 256-key tiles would pad 520 keys to 768
    assert key_tile(ac.Attention(ac.causal()), 4096) == 64          # diagonal tiles are PARTIAL
    assert key_tile(ac.Attention(ac.sliding_window(256)), 4096) == 64
    assert key_tile(ac.Attention(normalizer=ac.sigmoid()), 4096) == 64      # no running max
    assert key_tile(ac.Attention(ac.mask(lambda b, h, q, k, m: m[b, k] == 0)), 4096) == 64   # tensor mask
    assert key_tile(ac.Attention(), 197) == 208                     # one tile
    # banded masks (a quarter or more of the tiles PARTIAL) unroll 4 query rows at most
    assert unroll(ac.Attention(ac.sliding_window(256))) == unroll(ac.Attention(ac.sliding_window(64))) == 4


def test_plan_accepts_explicit_plans_and_rejects_misaligned():
    prog = through(canon(ac.Attention(), N=128), gather, classify_blocks, simplify_masks)
    assert plan(prog, TilePlan(block_m=32, block_n=128)).groups[0].plan.block_n == 128
    with pytest.raises(ValueError, match="multiples of the block"):
        plan(prog, TilePlan(block_m=24, block_n=64))


# ---- cost ---------------------------------------------------------------------------------

def test_cost_full_attention_flops_and_bytes():
    prog = lower(ac.Attention(), Dims(2, 3, 128, 256, 32, 16)).program
    c = prog.cost
    assert c.value(c.flops) == 2 * 2 * 3 * 128 * 256 * (32 + 16)
    assert c.useful_pairs == 128 * 256 and c.exact
    # q and out once, k and v once per query tile (2 query tiles of 64)
    assert c.value(c.bytes) == 4 * 2 * 3 * (128 * (32 + 16) + 2 * 256 * (32 + 16))
    assert isinstance(c.flops, sympy.Expr) and c.flops.free_symbols


def test_cost_counts_useful_pairs_and_executed_tiles():
    prog = lower(ac.Attention(ac.causal()), Dims(1, 1, 256, 256, 64, 64)).program
    c = prog.cost
    assert c.useful_pairs == 256 * 257 // 2
    assert c.value(c.flops_executed) == 2 * (10 * 64 * 64) * 128      # 10 of 16 tiles visited
    prog = lower(ac.Attention(ac.mask(lambda b, h, q, k, doc: doc[q] == doc[k])), Dims(1, 1, 64, 64, 8, 8)).program
    assert not prog.cost.exact


# ---- verifier and pipeline ----------------------------------------------------------------

def test_verifier_catches_broken_ir():
    prog = through(canon(ac.Attention(ac.window2d((4, 4), (2, 2))), N=16), gather)
    gat = prog.groups[0].gather
    broken = prog.with_group(0, gather=dataclasses.replace(gat, q_token=S.t))       # misses tokens
    with pytest.raises(VerifyError, match="exactly once"):
        verify(broken)
    with pytest.raises(VerifyError, match="outside"):
        verify(prog.with_group(0, residual=sympy.Le(S.j, S.t)))
    with pytest.raises(VerifyError, match="cover"):
        verify(prog.replace(groups=prog.groups[:0] + (dataclasses.replace(prog.groups[0], heads=(0,)),)))
    with pytest.raises(VerifyError, match="unknown tensors|does not know"):
        verify(prog.replace(score=S.score + S.table("nope")[S.h]))


def test_pipeline_stages_are_pure_and_named(capsys):
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)))
    low = lower(spec, Dims(1, 2, 64, 64, 16, 16), dump=True)
    assert [n for n, _, _ in low.stages] == ["canonicalize", "gather", "reads", "classify_blocks", "simplify_masks",
                                             "plan", "cost"]
    first = low.stages[0][1]
    assert first.groups[0].gather is None                    # later passes did not mutate it
    assert "=== after cost" in capsys.readouterr().out
    assert low.program.digest() == lower(spec, Dims(1, 2, 64, 64, 16, 16)).program.digest()
    assert low.program.digest() != lower(spec, Dims(1, 2, 64, 64, 16, 8)).program.digest()


# --------------------------------------------------------------------------------------------
# reads (and the interval analysis it uses, ir/intervals.py)
# --------------------------------------------------------------------------------------------

def test_reads_bound_swin_bias_exactly_through_the_shifted_gather():
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)), score_mods=(ac.rel_pos_bias("rpb", (4, 4)),))
    prog = through(canon(spec), gather, reads)
    (r,) = prog.reads
    assert (r.name, r.group, r.use, r.bounds) == ("rpb", 0, "value", ((0, 48), (0, 1)))
    assert not any(S.i in ix.free_symbols or S.j in ix.free_symbols for ix in r.index)    # local symbols


def test_reads_uses_and_data_dependent_bounds():
    spec = ac.Attention(ac.mask(lambda b, h, q, k, doc: doc[b, q] == doc[b, k]),
                        score_mods=(ac.score_mod(lambda s, b, h, q, k, seg, sb: s + sb[h, seg[b, q]]),))
    prog = through(canon(spec, N=32), gather, reads)
    got = {(r.name, r.use): r.bounds for r in prog.reads}
    assert got == {("seg", "index"): ((0, 0), (0, 31)), ("doc", "compare"): ((0, 0), (0, 31)),
                   ("sb", "value"): ((0, 1), None)}
    assert [r.use for r in prog.reads] == ["index", "compare", "compare", "value"]    # index tables first


def test_exact_ranges_follow_the_band_not_the_interval():
    spec = ac.Attention(ac.sliding_window(10, 0),
                        score_mods=(ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q - k]),))
    prog = lower(spec, Dims(1, 2, 300, 300, 16, 16)).program
    (r,) = prog.reads
    assert r.bounds == ((0, 1), (-299, 299))
    assert exact_ranges(prog, r, {}) == ((0, 1), (0, 10))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(a=st.integers(-5, 5), c=st.integers(-5, 5), m=st.integers(1, 7), q=st.integers(1, 7), off=st.integers(-9, 9),
       kind=st.sampled_from(["mod", "div", "abs", "min", "max"]))
def test_interval_bounds_are_sound(a, c, m, q, off, kind):
    """Every value the expression takes over the box lies inside its bound."""
    x = a * i + c * j + off
    e = {"mod": sympy.Mod(x, m), "div": S.fdiv(x, q), "abs": sympy.Abs(x), "min": sympy.Min(x, 3 * i - j),
         "max": sympy.Max(x, m * j)}[kind] * (1 if kind != "div" else 2) + S.fdiv(i, q)
    box = {i: (2, 11), j: (0, 6)}
    lo, hi = bound(e, box)
    vals = evaluate(e, {i: np.arange(2, 12)[:, None], j: np.arange(7)[None, :]})
    assert lo <= np.min(vals) and np.max(vals) <= hi
