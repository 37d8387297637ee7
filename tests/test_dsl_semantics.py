"""The DSL's meaning: every pattern as IR predicates checked against PATTERNS.md with plain
numpy loops, tracing of user lambdas, and the Swin relative position bias and ALiBi expressions."""
import functools
import itertools

import numpy as np
import pytest
import sympy
import torch

import attncc as ac
from attncc.ir import symbols as S
from attncc.ir.evaluate import evaluate

ROUTE_MASK = "__route_mask"
T = S.table


# --------------------------------------------------------------------------------------------
# 3. the meaning of patterns: IR predicates against PATTERNS.md, computed with numpy loops
# --------------------------------------------------------------------------------------------

def dsl_mask(pattern, N, M, h=0, b=0, tables=None):
    """The pattern's predicates, conjoined and evaluated on all (i, j) pairs."""
    expr = sympy.And(*(p.expr for p in pattern.preds()))
    if expr.has(S.N, S.M):
        expr = expr.subs({S.N: N, S.M: M})
    env = {S.i: np.arange(N)[:, None], S.j: np.arange(M)[None, :], S.N: N, S.M: M, S.b: b, S.h: h,
           **(tables or {})}
    return np.broadcast_to(np.asarray(evaluate(expr, env), dtype=bool), (N, M))


def loop_mask(allowed, N, M, dtype=bool):
    out = np.zeros((N, M), dtype=dtype)
    for i in range(N):
        for j in range(M):
            out[i, j] = allowed(i, j)
    return out


def rc(t, grid):
    """Row-major coordinates of token t (PATTERNS.md: t <-> (t // C, t % C), N-D alike)."""
    out = []
    for size in reversed(grid):
        out.append(t % size)
        t //= size
    return tuple(reversed(out))


def ref_window2d(grid, window, shift):
    """Swin: roll by -shift, window partition, and the img_mask regions built from slices."""
    labels = []
    for size, w, s in zip(grid, window, shift):
        lab = np.zeros(size, dtype=int)
        for n, sl in enumerate((slice(0, -w), slice(-w, -s), slice(-s, None))):
            if s:
                lab[sl] = n
        labels.append(lab)

    def shifted(t):
        return tuple((c - s) % size for c, s, size in zip(rc(t, grid), shift, grid))

    def allowed(i, j):
        si, sj = shifted(i), shifted(j)
        return all(si[a] // window[a] == sj[a] // window[a] and labels[a][si[a]] == labels[a][sj[a]]
                   for a in range(2))
    return allowed


def ref_neighborhood2d(grid, kernel, dilation):
    """NATTEN: per axis, the query's sub-grid (same coordinate mod D), a k-box clamped inside it."""
    def keys_along(c, size, k, d):
        sub = [x for x in range(size) if x % d == c % d]
        pos = sub.index(c)
        start = min(max(pos - k // 2, 0), len(sub) - k)
        return set(sub[start:start + k])

    def allowed(i, j):
        ci, cj = rc(i, grid), rc(j, grid)
        return all(cj[a] in keys_along(ci[a], grid[a], kernel[a], dilation[a]) for a in range(2))
    return allowed


def ref_axial(grid, axis):
    axis %= len(grid)
    return lambda i, j: all(a == c for n, (a, c) in enumerate(zip(rc(i, grid), rc(j, grid))) if n != axis)


def ref_stripes(grid, width, axis):
    return lambda i, j: rc(i, grid)[axis] // width == rc(j, grid)[axis] // width


ROUTE = np.random.default_rng(0).random((2, 4, 4)) < 0.5
DOC = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
LAYOUT_BIG = np.random.default_rng(1).random((3, 4)) < 0.5
LAYOUT_HEADS = np.random.default_rng(2).random((2, 3, 4)) < 0.5


def case(name, pattern, allowed, N, M=None, heads=(0,), batches=(0,), tables=None, per_head_batch=False):
    """`allowed(i, j)`, or with per_head_batch `allowed(h, b)` returning the (i, j) rule of that head/batch."""
    ref = allowed if per_head_batch else (lambda h, b: allowed)
    return pytest.param(pattern, ref, N, N if M is None else M, heads, batches, tables or {}, id=name)


def win(grid, window, shift=(0, 0)):
    return case(f"window2d_{grid}_{window}_{shift}".replace(" ", ""), ac.window2d(grid, window, shift),
                ref_window2d(grid, window, shift), grid[0] * grid[1])


def nbh(grid, kernel, dilation=(1, 1)):
    return case(f"neighborhood2d_{grid}_{kernel}_{dilation}".replace(" ", ""),
                ac.neighborhood2d(grid, kernel, dilation), ref_neighborhood2d(grid, kernel, dilation),
                grid[0] * grid[1])


def axl(grid, axis):
    return case(f"axial_{grid}_axis{axis}".replace(" ", ""), ac.axial(grid, axis), ref_axial(grid, axis),
                int(np.prod(grid)))


def stp(grid, width, axis):
    return case(f"stripes_{grid}_w{width}_axis{axis}".replace(" ", ""), ac.stripes(grid, width, axis),
                ref_stripes(grid, width, axis), int(np.prod(grid)))


PATTERN_CASES = [
    case("full", ac.full(), lambda i, j: True, 5, 7),
    case("causal_top_left_square", ac.causal(), lambda i, j: j <= i, 9),
    case("causal_top_left_short_queries", ac.causal(), lambda i, j: j <= i, 5, 9),
    case("causal_top_left_long_queries", ac.causal(), lambda i, j: j <= i, 9, 5),
    case("causal_bottom_right_square", ac.causal("bottom_right"), lambda i, j: j <= i, 9),
    case("causal_bottom_right_kv_cache", ac.causal("bottom_right"), lambda i, j: j <= i + 4, 5, 9),
    case("causal_bottom_right_decode_one", ac.causal("bottom_right"), lambda i, j: True, 1, 9),
    case("causal_bottom_right_long_queries", ac.causal("bottom_right"), lambda i, j: j <= i - 4, 9, 5),
    case("sliding_window_causal", ac.sliding_window(3), lambda i, j: i - 3 <= j <= i, 12),
    case("sliding_window_two_sided", ac.sliding_window(2, 2), lambda i, j: i - 2 <= j <= i + 2, 12),
    case("sliding_window_right_only", ac.sliding_window(0, 4), lambda i, j: i <= j <= i + 4, 8, 12),
    case("dilated_causal", ac.dilated(2, 6), lambda i, j: (i - j) % 2 == 0 and i - 6 <= j <= i, 12),
    case("dilated_two_sided", ac.dilated(3, 6, 6), lambda i, j: (i - j) % 3 == 0 and abs(i - j) <= 6, 14),
    case("dilated_window_not_multiple", ac.dilated(3, 5, 4),
         lambda i, j: (i - j) % 3 == 0 and i - 5 <= j <= i + 4, 14),
    case("dilated_rate_one", ac.dilated(1, 3, 1), lambda i, j: i - 3 <= j <= i + 1, 10),
    win((4, 4), (2, 2)),
    win((5, 7), (2, 3)),          # partial windows at the bottom and right edges
    win((6, 4), (4, 4)),
    win((1, 8), (1, 3)),
    win((4, 4), (2, 2), (1, 1)),
    win((8, 8), (4, 4), (2, 2)),
    win((6, 9), (3, 3), (1, 2)),
    win((8, 4), (4, 2), (3, 0)),  # shift on one axis only
    win((4, 6), (2, 3), (0, 1)),
    nbh((5, 5), (3, 3)),
    nbh((6, 7), (3, 5)),
    nbh((8, 8), (1, 1)),
    nbh((4, 6), (4, 6)),
    nbh((6, 6), (2, 4)),          # even kernels
    nbh((7, 7), (3, 3), (2, 2)),  # sub-grids of different sizes (4 and 3)
    nbh((9, 8), (3, 2), (3, 2)),
    nbh((10, 6), (3, 3), (3, 1)),
    axl((3, 4), 0),
    axl((3, 4), 1),
    axl((3, 4), -1),
    axl((2, 3, 4), 0),
    axl((2, 3, 4), 1),
    axl((2, 3, 4), 2),
    axl((2, 3, 4), -3),
    stp((6, 4), 2, 0),
    stp((6, 4), 3, 1),
    stp((4, 6), 4, 1),            # a partial last stripe
    stp((5, 4), 2, 0),
    stp((2, 3, 4), 2, 2),
    stp((2, 3, 4), 2, 1),
    case("block_sparse_2d", ac.block_sparse(LAYOUT_BIG, (2, 3)), lambda i, j: LAYOUT_BIG[i // 2, j // 3], 6, 12,
         tables={ac.block_sparse(LAYOUT_BIG, (2, 3)).table_name: LAYOUT_BIG}),
    case("block_sparse_per_head", ac.block_sparse(LAYOUT_HEADS, (2, 3)),
         lambda h, b: lambda i, j: LAYOUT_HEADS[h, i // 2, j // 3], 6, 12, heads=(0, 1),
         tables={ac.block_sparse(LAYOUT_HEADS, (2, 3)).table_name: LAYOUT_HEADS}, per_head_batch=True),
    # routing on (4, 6) with 2 x 2 regions of 2 x 3 tokens, numbered row-major; a route table per batch
    case("routing", ac.routing((4, 6), (2, 2), 2),
         lambda h, b: lambda i, j: ROUTE[b, (i // 6 // 2) * 2 + (i % 6) // 3, (j // 6 // 2) * 2 + (j % 6) // 3],
         24, batches=(0, 1), tables={ROUTE_MASK: ROUTE}, per_head_batch=True),
    case("mask_captured_document", ac.mask(lambda b, h, q, k, doc: (doc[q] == doc[k]) & (q >= k)),
         lambda i, j: DOC[i] == DOC[j] and j <= i, 10, tables={"doc": DOC}),
    case("mask_prefix_lm", ac.mask(lambda b, h, q, k: (k <= q) | (k < 3)), lambda i, j: j <= i or j < 3, 8),
    case("window_and_causal", ac.window2d((4, 4), (2, 2), (1, 1)) & ac.causal(),
         lambda i, j: ref_window2d((4, 4), (2, 2), (1, 1))(i, j) and j <= i, 16),
    case("sliding_or_dilated", ac.sliding_window(1, 1) | ac.dilated(4, 12, 12),
         lambda i, j: abs(i - j) <= 1 or (i - j) % 4 == 0, 14),
    case("criss_cross_causal", (ac.axial((3, 4), 0) | ac.axial((3, 4), 1)) & ac.causal(),
         lambda i, j: (i % 4 == j % 4 or i // 4 == j // 4) and j <= i, 12),
    case("window_or_global_tokens", ac.window2d((4, 4), (2, 2)) | ac.mask(lambda b, h, q, k: (k < 2) | (q < 2)),
         lambda i, j: ref_window2d((4, 4), (2, 2), (0, 0))(i, j) or j < 2 or i < 2, 16),
]


@pytest.mark.parametrize("pattern, ref, N, M, heads, batches, tables", PATTERN_CASES)
def test_pattern_predicate_matches_definition(pattern, ref, N, M, heads, batches, tables):
    for h, b in itertools.product(heads, batches):
        want = loop_mask(ref(h, b), N, M)
        got = dsl_mask(pattern, N, M, h=h, b=b, tables=tables)
        bad = np.argwhere(got != want)
        assert not len(bad), (f"{pattern!r} (h={h}, b={b}): {len(bad)} pairs differ from PATTERNS.md, "
                              f"first (i, j) = {bad[:5].tolist()}; dsl={got[tuple(bad[0])]}")


@functools.lru_cache(maxsize=None)
def square_mask(pattern, N):
    return dsl_mask(pattern, N, N)


def tokens_seen(pattern, tok, N):
    return sorted(np.flatnonzero(square_mask(pattern, N)[tok]).tolist())


SHIFTED_4X4 = [
    (0, [0]),              # (0, 0) -> shifted (3, 3): alone in region 2 on both axes
    (1, [1, 2]),           # (0, 1) -> (3, 0): row region 2, columns 0-1 of region 0
    (3, [3]),              # (0, 3) -> (3, 2): row region 2, column region 1
    (4, [4, 8]),           # (1, 0) -> (0, 3): rows 0-1, column region 2
    (5, [5, 6, 9, 10]),    # (1, 1) -> (0, 0): a whole unsplit window
    (15, [15]),            # (3, 3) -> (2, 2): row region 1, column region 1
]


@pytest.mark.parametrize("tok, keys", SHIFTED_4X4, ids=[f"token{t}" for t, _ in SHIFTED_4X4])
def test_shifted_window_by_hand_4x4_window2_shift1(tok, keys):
    assert tokens_seen(ac.window2d((4, 4), (2, 2), (1, 1)), tok, 16) == keys


PARTIAL_3X5 = [
    (0, [0, 1, 5, 6]),     # top-left 2x2 window
    (4, [4, 9]),           # right edge: a 2x1 partial window
    (10, [10, 11]),        # bottom edge: a 1x2 partial window
    (12, [12, 13]),
    (14, [14]),            # bottom-right corner: a 1x1 window
]


@pytest.mark.parametrize("tok, keys", PARTIAL_3X5, ids=[f"token{t}" for t, _ in PARTIAL_3X5])
def test_partial_windows_by_hand_3x5_window2(tok, keys):
    assert tokens_seen(ac.window2d((3, 5), (2, 2)), tok, 15) == keys


@pytest.mark.parametrize("pattern, tok, keys", [
    (ac.neighborhood2d((5, 5), (3, 3)), 0, [0, 1, 2, 5, 6, 7, 10, 11, 12]),     # corner: box slid inside
    (ac.neighborhood2d((5, 5), (3, 3)), 12, [6, 7, 8, 11, 12, 13, 16, 17, 18]),  # centre
    (ac.neighborhood2d((1, 7), (1, 3), (1, 2)), 0, [0, 2, 4]),     # even sub-grid {0, 2, 4, 6}
    (ac.neighborhood2d((1, 7), (1, 3), (1, 2)), 6, [2, 4, 6]),
    (ac.neighborhood2d((1, 7), (1, 3), (1, 2)), 3, [1, 3, 5]),     # odd sub-grid {1, 3, 5}
    (ac.neighborhood2d((1, 7), (1, 3), (1, 2)), 1, [1, 3, 5]),
    (ac.axial((2, 2, 3), 0), 4, [4, 10]),
    (ac.axial((2, 2, 3), 1), 4, [1, 4]),
    (ac.axial((2, 2, 3), 2), 4, [3, 4, 5]),
    (ac.stripes((4, 3), 2, 0), 7, [6, 7, 8, 9, 10, 11]),
    (ac.stripes((4, 3), 2, 1), 7, [0, 1, 3, 4, 6, 7, 9, 10]),
], ids=["nbh_corner", "nbh_centre", "natten_dil2_first", "natten_dil2_last", "natten_dil2_odd_mid",
        "natten_dil2_odd_first", "axial3d_axis0", "axial3d_axis1", "axial3d_axis2", "stripes_rows",
        "stripes_cols"])
def test_grid_patterns_by_hand(pattern, tok, keys):
    assert tokens_seen(pattern, tok, int(np.prod(pattern.grid))) == keys


# --------------------------------------------------------------------------------------------
# 4. tracing user lambdas
# --------------------------------------------------------------------------------------------

i, j, b, h, s = S.i, S.j, S.b, S.h, S.score


def _where_bool(c, x, y):
    return sympy.Or(sympy.And(c, x), sympy.And(sympy.Not(c), y))


MASK_TRACES = {
    "ge": (lambda b_, h_, q, k: q >= k, sympy.Ge(i, j)),
    "lt": (lambda b_, h_, q, k: q < k, sympy.Lt(i, j)),
    "le": (lambda b_, h_, q, k: q <= k + 2, sympy.Le(i, j + 2)),
    "gt": (lambda b_, h_, q, k: q > 2 * k, sympy.Gt(i, 2 * j)),
    "eq": (lambda b_, h_, q, k: q // 4 == k // 4, sympy.Eq(S.fdiv(i, 4), S.fdiv(j, 4))),
    "ne": (lambda b_, h_, q, k: q % 3 != k % 3, sympy.Ne(sympy.Mod(i, 3), sympy.Mod(j, 3))),
    "and": (lambda b_, h_, q, k: (q >= k) & (q - k < 4), sympy.And(sympy.Ge(i, j), sympy.Lt(i - j, 4))),
    "or": (lambda b_, h_, q, k: (k < 2) | (q == k), sympy.Or(sympy.Lt(j, 2), sympy.Eq(i, j))),
    "invert": (lambda b_, h_, q, k: ~((q < k) & (k > 3)), sympy.Not(sympy.And(sympy.Lt(i, j), sympy.Gt(j, 3)))),
    "invert_relation": (lambda b_, h_, q, k: ~(q < k), sympy.Ge(i, j)),
    "abs": (lambda b_, h_, q, k: abs(q - k) <= 3, sympy.Le(sympy.Abs(i - j), 3)),
    "batch_and_head": (lambda b_, h_, q, k: (b_ + h_) % 2 == 0, sympy.Eq(sympy.Mod(b + h, 2), 0)),
    "reverse_ops": (lambda b_, h_, q, k: 20 - q > 3 * k, sympy.Gt(20 - i, 3 * j)),
    "torch_abs": (lambda b_, h_, q, k: torch.abs(q - k) < 2, sympy.Lt(sympy.Abs(i - j), 2)),
    "torch_where_boolean": (lambda b_, h_, q, k: torch.where(q >= 8, k >= 8, k < 8),
                            _where_bool(sympy.Ge(i, 8), sympy.Ge(j, 8), sympy.Lt(j, 8))),
    "torch_logical_and": (lambda b_, h_, q, k: torch.logical_and(q >= k, k > 1),
                          sympy.And(sympy.Ge(i, j), sympy.Gt(j, 1))),
    "torch_logical_or": (lambda b_, h_, q, k: torch.logical_or(q >= k, k > 1),
                         sympy.Or(sympy.Ge(i, j), sympy.Gt(j, 1))),
    "torch_logical_not": (lambda b_, h_, q, k: torch.logical_not((q < k) | (k > 5)),
                          sympy.Not(sympy.Or(sympy.Lt(i, j), sympy.Gt(j, 5)))),
    "torch_minimum": (lambda b_, h_, q, k: torch.minimum(q, k) > 2, sympy.Gt(sympy.Min(i, j), 2)),
    "torch_maximum": (lambda b_, h_, q, k: torch.maximum(q, k) < 6, sympy.Lt(sympy.Max(i, j), 6)),
    "torch_clamp": (lambda b_, h_, q, k: torch.clamp(q - k, min=0, max=4) == 4,
                    sympy.Eq(sympy.Min(sympy.Max(i - j, 0), 4), 4)),
    "captured_index": (lambda b_, h_, q, k, doc: doc[b_, q] == doc[b_, k],
                       sympy.Eq(T("doc")[b, i], T("doc")[b, j])),
    "captured_bool_direct": (lambda b_, h_, q, k, allowed: allowed[h_, q // 2, k // 2],
                             sympy.Ne(T("allowed")[h, S.fdiv(i, 2), S.fdiv(j, 2)], 0)),
    "captured_numeric_index": (lambda b_, h_, q, k, tab: tab[q % 4, 1] > 0, sympy.Gt(T("tab")[sympy.Mod(i, 4), 1], 0)),
}


@pytest.mark.parametrize("fn, want", MASK_TRACES.values(), ids=MASK_TRACES.keys())
def test_mask_traces_to_expression(fn, want):
    m = ac.mask(fn)
    assert m.expr == want, f"{m.expr} != {want}"
    assert m.fn is fn


SCORE_TRACES = {
    "add": (lambda s_, b_, h_, q, k: s_ + q, s + i),
    "sub": (lambda s_, b_, h_, q, k: s_ - k, s - j),
    "rsub": (lambda s_, b_, h_, q, k: 1 - s_, 1 - s),
    "mul": (lambda s_, b_, h_, q, k: s_ * 2, 2 * s),
    "rmul": (lambda s_, b_, h_, q, k: 0.5 * s_, sympy.Float(0.5) * s),
    "truediv": (lambda s_, b_, h_, q, k: s_ / 4, s / 4),
    "floordiv": (lambda s_, b_, h_, q, k: s_ + q // 3, s + S.fdiv(i, 3)),
    "rfloordiv": (lambda s_, b_, h_, q, k: s_ + 7 // (q + 1), s + sympy.floor(7 / (i + 1))),
    "mod": (lambda s_, b_, h_, q, k: s_ + (q - k) % 5, s + sympy.Mod(i - j, 5)),
    "pow": (lambda s_, b_, h_, q, k: s_ ** 2, s ** 2),
    "rpow": (lambda s_, b_, h_, q, k: s_ * 2 ** (-h_), s * 2 ** (-h)),
    "neg": (lambda s_, b_, h_, q, k: -s_, -s),
    "abs": (lambda s_, b_, h_, q, k: s_ - abs(q - k), s - sympy.Abs(i - j)),
    "bool_as_number": (lambda s_, b_, h_, q, k: s_ * (q >= k), s * sympy.Piecewise((1, sympy.Ge(i, j)), (0, True))),
    "tanh": (lambda s_, b_, h_, q, k: 30 * torch.tanh(s_ / 30), 30 * sympy.tanh(s / 30)),
    "exp": (lambda s_, b_, h_, q, k: torch.exp(s_), sympy.exp(s)),
    "log": (lambda s_, b_, h_, q, k: s_ + torch.log(q + 1), s + sympy.log(i + 1)),
    "sqrt": (lambda s_, b_, h_, q, k: s_ * torch.sqrt(k + 1), s * sympy.sqrt(j + 1)),
    "sigmoid": (lambda s_, b_, h_, q, k: torch.sigmoid(s_), 1 / (1 + sympy.exp(-s))),
    "torch_abs": (lambda s_, b_, h_, q, k: torch.abs(s_), sympy.Abs(s)),
    "minimum": (lambda s_, b_, h_, q, k: torch.minimum(s_, q), sympy.Min(s, i)),
    "maximum": (lambda s_, b_, h_, q, k: torch.maximum(s_, k), sympy.Max(s, j)),
    "where_numeric": (lambda s_, b_, h_, q, k: torch.where(q >= k, s_, s_ - 1),
                      sympy.Piecewise((s, sympy.Ge(i, j)), (s - 1, True))),
    "where_numeric_constant": (lambda s_, b_, h_, q, k: torch.where(q >= k, s_, -1.0),
                               sympy.Piecewise((s, sympy.Ge(i, j)), (-1.0, True))),
    "clamp_both": (lambda s_, b_, h_, q, k: torch.clamp(s_, min=-5, max=5), sympy.Min(sympy.Max(s, -5), 5)),
    "clamp_min_only": (lambda s_, b_, h_, q, k: torch.clamp(s_, -5), sympy.Max(s, -5)),
    "clamp_max_only": (lambda s_, b_, h_, q, k: torch.clamp(s_, max=5), sympy.Min(s, 5)),
    "batch_head": (lambda s_, b_, h_, q, k: s_ + b_ - h_, s + b - h),
    "captured": (lambda s_, b_, h_, q, k, bias: s_ + bias[h_, q, k], s + T("bias")[h, i, j]),
    "captured_computed_index": (lambda s_, b_, h_, q, k, bias: s_ + bias[(q - k) % 8],
                                s + T("bias")[sympy.Mod(i - j, 8)]),
    "two_captured": (lambda s_, b_, h_, q, k, x, y: s_ * x[h_] + y[q // 4, k // 4],
                     s * T("x")[h] + T("y")[S.fdiv(i, 4), S.fdiv(j, 4)]),
    "captured_bool_index": (lambda s_, b_, h_, q, k, bias: s_ + bias[q >= k],
                            s + T("bias")[sympy.Piecewise((1, sympy.Ge(i, j)), (0, True))]),
}


@pytest.mark.parametrize("fn, want", SCORE_TRACES.values(), ids=SCORE_TRACES.keys())
def test_score_mod_traces_to_expression(fn, want):
    m = ac.score_mod(fn)
    assert m.body == want, f"{m.body} != {want}"
    assert m.expr(s * 3, None) == want.subs(s, s * 3)


@pytest.mark.parametrize("fn, names", [
    (lambda b_, h_, q, k: q >= k, ()),
    (lambda b_, h_, q, k, doc: doc[q] == doc[k], ("doc",)),
    (lambda b_, h_, q, k, a, z: (a[q] > 0) & (z[k] > 0), ("a", "z")),
    (lambda b_, h_, q, k, unused: q >= k, ("unused",)),
], ids=["none", "one", "two_in_parameter_order", "unused_parameter"])
def test_mask_records_captured_names(fn, names):
    assert ac.mask(fn).captured == names


@pytest.mark.parametrize("fn, names", [
    (lambda s_, b_, h_, q, k: s_, ()),
    (lambda s_, b_, h_, q, k, bias: s_ + bias[h_, q, k], ("bias",)),
    (lambda s_, b_, h_, q, k, z, a: s_ + a[q] + z[k], ("z", "a")),
], ids=["none", "one", "two_in_parameter_order"])
def test_score_mod_records_captured_names(fn, names):
    m = ac.score_mod(fn)
    assert m.captured == names
    assert S.tables_in(m.body) == frozenset(names)


def test_captured_tensor_through_torch_functions():
    m = ac.score_mod(lambda s_, b_, h_, q, k, g: s_ * torch.sigmoid(g[h_]))
    assert m.body == s / (1 + sympy.exp(-T("g")[h]))
    mk = ac.mask(lambda b_, h_, q, k, keep: torch.logical_and(keep[k], q >= k))
    assert mk.expr == sympy.And(sympy.Ne(T("keep")[j], 0), sympy.Ge(i, j))


def test_traced_mask_evaluates_like_the_lambda_on_tensors():
    """The traced expression means what the lambda computes when called on real tensors."""
    def fn(b_, h_, q, k, doc):
        return torch.where(doc[q] == doc[k], (q - k) % 2 == 0, k == 0) & (k <= q) | (k // 3 == q // 4)

    N = 10
    doc = torch.tensor(DOC)
    qq, kk = torch.arange(N)[:, None], torch.arange(N)[None, :]
    want = fn(0, 0, qq, kk, doc).numpy()
    got = dsl_mask(ac.mask(fn), N, N, tables={"doc": DOC})
    np.testing.assert_array_equal(got, want)


def test_traced_score_mod_evaluates_like_the_lambda_on_tensors():
    def fn(s_, b_, h_, q, k, bias):
        return (torch.clamp(s_ + bias[h_, (q - k) % 4], min=-1.0, max=2.0) * (q >= k)
                + (q - k) // 3 + torch.exp(-abs(q - k) / 2.0))

    N, H = 6, 3
    bias = np.random.default_rng(3).standard_normal((H, 4))
    score = np.random.default_rng(4).standard_normal((N, N)) * 2
    m = ac.score_mod(fn)
    for hh in range(H):
        want = fn(torch.tensor(score), 0, hh, torch.arange(N)[:, None], torch.arange(N)[None, :],
                  torch.tensor(bias)).numpy()
        env = {S.score: score, S.i: np.arange(N)[:, None], S.j: np.arange(N)[None, :], S.b: 0, S.h: hh,
               "bias": bias}
        np.testing.assert_allclose(evaluate(m.body, env), want, rtol=1e-6, atol=1e-6)  # torch: float32 exp


# --------------------------------------------------------------------------------------------
# 5. Swin relative position bias: the table index in the (shifted) window frame
# --------------------------------------------------------------------------------------------

def rpb_value(grid, window, shift, H, ti, tj, hh):
    """The bias the spec's expression gives for pairs (ti, tj) (ints or broadcastable arrays),
    read from a table whose entry [k, h] is 1000 h + k (so the value names the index)."""
    wr, wc = window
    spec = ac.Attention(ac.window2d(grid, window, shift), score_mods=ac.rel_pos_bias("rpb", window))
    e = spec.score_mods[0].expr(S.score, spec.context())
    table = np.arange((2 * wr - 1) * (2 * wc - 1))[:, None] + 1000.0 * np.arange(H)[None, :]
    return evaluate(e, {S.score: 0.0, S.i: ti, S.j: tj, S.h: hh, S.b: 0, "rpb": table})


def rpb_index_by_hand(grid, window, shift, ti, tj):
    """PATTERNS.md: local coords in the shifted window frame, then
    (ri - rj + wr - 1) * (2 wc - 1) + (ci - cj + wc - 1)."""
    (R, C), (wr, wc), (sr, sc) = grid, window, shift
    (ri, ci), (rj, cj) = rc(ti, grid), rc(tj, grid)
    ri, ci, rj, cj = (ri - sr) % R % wr, (ci - sc) % C % wc, (rj - sr) % R % wr, (cj - sc) % C % wc
    return (ri - rj + wr - 1) * (2 * wc - 1) + (ci - cj + wc - 1)


@pytest.mark.parametrize("ti, tj, hh, index", [
    (0, 9, 0, 16),      # (0,0)->shifted (6,6) local (2,2); (1,1)->(7,7) local (3,3): (2-3+3)*7 + 2
    (28, 18, 1, 33),    # (3,4)->(1,2) local (1,2); (2,2)->(0,0) local (0,0): (1+3)*7 + (2+3)
    (18, 18, 2, 24),    # a token and itself: the centre entry (wr-1)*(2wc-1) + wc-1
    (27, 36, 0, 16),    # (3,3)->(1,1); (4,4)->(2,2): (-1+3)*7 + (-1+3)
], ids=["corner_pair", "mid_pair", "self", "diagonal"])
def test_rel_pos_bias_shifted_window_by_hand(ti, tj, hh, index):
    grid, window, shift = (8, 8), (4, 4), (2, 2)
    assert rpb_index_by_hand(grid, window, shift, ti, tj) == index
    assert float(rpb_value(grid, window, shift, 3, ti, tj, hh)) == 1000 * hh + index


@pytest.mark.parametrize("grid, window, shift", [
    ((4, 6), (2, 3), (1, 1)),
    ((6, 6), (3, 2), (0, 1)),
    ((4, 4), (2, 2), (0, 0)),
], ids=["shifted", "shifted_cols_only", "unshifted"])
def test_rel_pos_bias_matches_swin_formula_for_all_window_pairs(grid, window, shift):
    n = grid[0] * grid[1]
    same_window = loop_mask(ref_window2d(grid, window, shift), n, n)
    want = loop_mask(lambda a, c: 1000 + rpb_index_by_hand(grid, window, shift, a, c), n, n, dtype=float)
    got = rpb_value(grid, window, shift, 2, np.arange(n)[:, None], np.arange(n)[None, :], 1)
    np.testing.assert_array_equal(np.where(same_window, got, 0), np.where(same_window, want, 0))


# --------------------------------------------------------------------------------------------
# 6. ALiBi slopes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("H", [1, 4, 8, 12])
def test_alibi_slope(H):
    e = ac.alibi().expr(S.score, None)
    N = 7
    ii, jj = np.arange(N)[:, None], np.arange(N)[None, :]
    for hh in range(H):
        got = evaluate(e, {S.score: 0.0, S.i: ii, S.j: jj, S.h: hh, S.H: H})
        want = -(2.0 ** (-8 * (hh + 1) / H)) * np.abs(ii - jj)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert e.subs({S.h: 0, S.H: 8, S.i: 5, S.j: 1, S.score: 0}) == -2
