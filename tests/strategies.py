"""Hypothesis strategies that draw random attncc specs with shapes and captured tensors, and the
settings of the tests that run them (bounded in CI, thousands under `make fuzz`).

Two sets of Shapes share every drawing path: SMALL (N, M <= 70, grids <= 9 x 9: one tile on
every backend) and MULTI_TILE (N, M in 260..520, grids of 16..24 a side, grid patterns that
mostly gather groups of more than 256 tokens), whose head groups mostly span three or more of
the default plans' tiles each way (TVM: 64 x 64 once an extent passes 256; Triton sm_80:
128 x 64); test_properties.py checks both claims on a sample."""
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import attncc as ac
from attncc.ir.program import Dims

# tokens above which the TVM plan stops taking a whole extent as one tile (plan.py's whole_keys,
# whole_queries): a group larger than this is three or more tiles on both default plans
ONE_TILE = 256


@dataclass(frozen=True)
class Shapes:
    """The ranges a spec strategy draws shapes and pattern parameters from."""
    tokens: tuple          # N and M (token patterns)
    side: tuple            # a grid's rows and columns
    depth: tuple           # the third axis of a video-like 3-D grid
    sliding: tuple         # sliding_window's largest left and right reach
    dilated: tuple         # dilated's largest rate, left and right reach
    block: tuple           # a static block-sparse layout's block sides
    layout_blocks: tuple   # a per-call layout's block sides
    head_dims: tuple
    big_groups: bool       # grid patterns sometimes gather groups of more than ONE_TILE tokens


SMALL = Shapes(tokens=(1, 70), side=(2, 9), depth=(2, 3), sliding=(12, 6), dilated=(4, 20, 8), block=(1, 16),
              layout_blocks=(7, 16, 20, 32, 48, 64), head_dims=(4, 8, 16), big_groups=False)
MULTI_TILE = Shapes(tokens=(260, 520), side=(16, 24), depth=(2, 2), sliding=(300, 80), dilated=(4, 400, 100),
                   block=(8, 96), layout_blocks=(7, 16, 20, 32, 48, 64, 96, 128), head_dims=(8, 16), big_groups=True)

# `make fuzz` sets ATTNCC_FUZZ_EXAMPLES: every random-spec test then runs that many examples,
# randomized (pytest --hypothesis-seed=SEED replays a run), with no example database (a seed
# alone replays) and the failure's @reproduce_failure blob printed
FUZZ_EXAMPLES = int(os.environ.get("ATTNCC_FUZZ_EXAMPLES") or 0)


def random_spec_test(ci_examples):
    """Decorates a random-spec test (above @given): its Hypothesis settings, `ci_examples`
    derandomized examples in CI and ATTNCC_FUZZ_EXAMPLES random ones under `make fuzz`, and
    the `fuzz` mark that `make fuzz` selects."""
    quiet = [HealthCheck.too_slow, HealthCheck.filter_too_much]
    if FUZZ_EXAMPLES:
        chosen = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=quiet, derandomize=False,
                          database=None, print_blob=True)
    else:
        chosen = settings(max_examples=ci_examples, deadline=None, suppress_health_check=quiet, derandomize=True)
    return lambda test: pytest.mark.fuzz(chosen(test))


def _at_least(n, other):
    """The smallest side s with s * other > n."""
    return n // other + 1


@st.composite
def grids(draw, shapes=SMALL):
    R, C = draw(st.integers(*shapes.side)), draw(st.integers(*shapes.side))
    if shapes.big_groups and R * C <= ONE_TILE:      # 16 x 16: one more column makes the grid multi-tile
        C += 1
    return (R, C)


def _generator(draw):
    """A torch generator seeded by the example: a replayed or shrunk example gets the same tensors."""
    return torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))


def _big(draw, shapes):
    """Whether this grid pattern gathers groups of more than ONE_TILE tokens (two in three, at
    the multi-tile shapes only)."""
    return shapes.big_groups and draw(st.sampled_from([True, True, False]))


@st.composite
def grid_pattern(draw, grid, linear=False, shapes=SMALL):
    R, C = grid
    kinds = ["window2d"] if linear else ["window2d", "neighborhood2d", "axial", "stripes", "routing", "axial3d"]
    kind = draw(st.sampled_from(kinds))
    if kind == "window2d":
        tiling = False
        if shapes.big_groups:            # windows of more than ONE_TILE tokens, and ones that tile the grid (shifted)
            big, tiling = _big(draw, shapes), draw(st.booleans())
            wr, wc = draw(st.sampled_from([(a, b) for a in range(1, R + 1) for b in range(1, C + 1)
                                           if (a * b > ONE_TILE or not big) and (R % a == C % b == 0 or not tiling)]))
        else:
            wr, wc = draw(st.integers(1, R)), draw(st.integers(1, C))
        shift = (0, 0)
        if not linear and R % wr == 0 and C % wc == 0 and (shapes.big_groups and tiling or draw(st.booleans())):
            if shapes.big_groups:        # shifted along one axis at least
                shift = draw(st.sampled_from([(a, b) for a in range(wr) for b in range(wc) if a or b] or [(0, 0)]))
            else:
                shift = (draw(st.integers(0, wr - 1)), draw(st.integers(0, wc - 1)))
        return ac.window2d(grid, (wr, wc), shift)
    if kind == "neighborhood2d":
        dr, dc = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        most_r, most_c = R // dr, C // dc
        if most_r * most_c > ONE_TILE and _big(draw, shapes):
            kr = draw(st.integers(_at_least(ONE_TILE, most_c), most_r))
            kc = draw(st.integers(_at_least(ONE_TILE, kr), most_c))
        else:
            kr, kc = draw(st.integers(1, most_r)), draw(st.integers(1, most_c))
        return ac.neighborhood2d(grid, (kr, kc), (dr, dc))
    if kind == "axial":
        return ac.axial(grid, draw(st.integers(0, 1)))
    if kind == "stripes":
        axis = draw(st.integers(0, 1))
        low = _at_least(ONE_TILE, grid[1 - axis]) if _big(draw, shapes) else 1
        return ac.stripes(grid, draw(st.integers(low, grid[axis])), axis)
    if kind == "axial3d":
        return None                      # replaced by an N-D axial by the caller
    divs = lambda n: [s for s in range(1, n + 1) if n % s == 0]
    if _big(draw, shapes):                # regions of more than ONE_TILE tokens
        regions = draw(st.sampled_from([(a, b) for a in divs(R) for b in divs(C) if R // a * (C // b) > ONE_TILE]))
    else:
        regions = (draw(st.sampled_from(divs(R))), draw(st.sampled_from(divs(C))))
    return ac.routing(grid, regions, draw(st.integers(1, regions[0] * regions[1])))


@st.composite
def axial3d(draw, grid, shapes=SMALL):
    """An axial pattern on a 3-D grid: (T, R, C) (video-like), or at the multi-tile scale sometimes
    lines of more than ONE_TILE tokens along the attended axis, the other two axes 1 or 2."""
    if _big(draw, shapes):
        axis = draw(st.integers(0, 2))
        grid3 = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
        grid3.insert(axis, draw(st.integers(ONE_TILE + 1, ONE_TILE + 64)))
        return ac.axial(tuple(grid3), axis)
    T = draw(st.integers(*shapes.depth))
    return ac.axial((T, grid[0], grid[1]), draw(st.integers(0, 2)))


@st.composite
def token_pattern(draw, N, M, linear=False, shapes=SMALL):
    if linear:
        return draw(st.sampled_from([ac.full(), ac.causal(), ac.causal("bottom_right")]))
    kind = draw(st.sampled_from(["full", "causal", "sliding", "dilated", "block_sparse", "block_sparse_call", "mask",
                                 "mask_doc"]))
    if kind == "full":
        return ac.full()
    if kind == "causal":
        return ac.causal(draw(st.sampled_from(["top_left", "bottom_right"])))
    if kind == "sliding":
        left, right = shapes.sliding
        return ac.sliding_window(draw(st.integers(0, left)), draw(st.integers(0, right)))
    if kind == "dilated":
        rate, left, right = shapes.dilated
        return ac.dilated(draw(st.integers(1, rate)), draw(st.integers(0, left)), draw(st.integers(0, right)))
    if kind == "block_sparse":
        bq, bk = draw(st.integers(*shapes.block)), draw(st.integers(*shapes.block))
        shape = (-(-N // bq), -(-M // bk))
        seed = draw(st.integers(0, 2 ** 16))
        return ac.block_sparse(np.random.RandomState(seed).rand(*shape) < 0.5, (bq, bk))
    if kind == "block_sparse_call":       # the layout is a tensor of each call (specs() draws it)
        bq, bk = draw(st.sampled_from(shapes.layout_blocks)), draw(st.sampled_from(shapes.layout_blocks))
        return ac.block_sparse(f"layout_{bq}_{bk}", (bq, bk))
    a, c, m = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(2, 5))
    r = draw(st.integers(0, m - 1))
    if kind == "mask":
        return ac.mask(lambda b, h, q, k: (q * a + k * c) % m != r)
    return ac.mask(lambda b, h, q, k, doc: doc[b, q] == doc[b, k])


@st.composite
def specs(draw, multi_tile=False):
    """(spec, dims, tensors) drawn at random; the spec is valid for the dims. multi_tile=True
    draws at the MULTI_TILE scale (groups of three or more tiles each way), else at SMALL."""
    shapes = MULTI_TILE if multi_tile else SMALL
    norm_kind = draw(st.sampled_from(["softmax", "softmax", "sigmoid", "linear"]))
    linear = norm_kind == "linear"
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    d = draw(st.sampled_from(shapes.head_dims))
    dv = draw(st.sampled_from([d, 8]))
    on_grid = draw(st.booleans())
    grid = None
    if on_grid:
        grid = draw(grids(shapes))
        N = M = math.prod(grid)
        pat = draw(grid_pattern(grid, linear, shapes))
        if pat is None:
            pat, grid = draw(axial3d(grid, shapes)), None
            N = M = math.prod(pat.grid)
        if draw(st.booleans()):
            extra = draw(token_pattern(N, M, linear, shapes)) if linear else draw(st.one_of(
                token_pattern(N, M, False, shapes), grid_pattern(grid, False, shapes) if grid
                else token_pattern(N, M, False, shapes)))
            if extra is not None and not isinstance(extra, ac.dsl.patterns.Routing):
                op = "&" if linear else draw(st.sampled_from(["&", "|"]))
                if op == "|" and isinstance(pat, ac.dsl.patterns.Routing):
                    op = "&"
                pat = (pat & extra) if op == "&" else (pat | extra)
    else:
        N = draw(st.integers(*shapes.tokens))
        keys = st.one_of(st.just(N), st.integers(*shapes.tokens)) if multi_tile else st.integers(*shapes.tokens)
        M = draw(keys)
        pat = draw(token_pattern(N, M, linear, shapes))
        if not linear and draw(st.booleans()):
            other = draw(token_pattern(N, M, False, shapes))
            pat = (pat & other) if draw(st.booleans()) else (pat | other)
    if not linear and H > 1 and draw(st.booleans()):
        other = draw(token_pattern(N, M, False, shapes))
        pat = ac.per_head({tuple(range(H - 1)): pat, (H - 1,): other})
    score_mods, post_mods, tensors = [], [], {}
    if not linear:
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["alibi", "softcap", "user", "user_bias", "rpb"]))
            if kind == "alibi":
                score_mods.append(ac.alibi())
            elif kind == "softcap":
                score_mods.append(ac.softcap(draw(st.floats(0.5, 10))))
            elif kind == "user":
                w = draw(st.floats(-2, 2))
                score_mods.append(ac.score_mod(lambda s, b, h, q, k: s * w + (q - k) * 0.01))
            elif kind == "user_bias" and "bias" not in tensors:
                score_mods.append(ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, k]))
                tensors["bias"] = torch.randn(H, M, generator=_generator(draw))
            elif kind == "rpb":
                wins = [p for p in pat.leaves() if isinstance(p, ac.dsl.patterns.Window2d)]
                if len(set(wins)) == 1 and "rpb" not in tensors:
                    wr, wc = wins[0].window
                    score_mods.append(ac.rel_pos_bias("rpb", (wr, wc)))
                    tensors["rpb"] = torch.randn((2 * wr - 1) * (2 * wc - 1), H, generator=_generator(draw))
        if draw(st.booleans()):
            if grid is not None and draw(st.booleans()):
                post_mods.append(ac.decay2d(grid))
                tensors["gamma"] = torch.rand(H, generator=_generator(draw)) * 0.5 + 0.5
            else:
                post_mods.append(ac.clipped(draw(st.floats(1.0, 1.2)), draw(st.floats(-0.2, 0.0))))
    for p in pat.leaves():
        if isinstance(p, ac.dsl.patterns.RuntimeBlockSparse) and p.name not in tensors:
            shape = (-(-N // p.block[0]), -(-M // p.block[1]))
            gen = _generator(draw)
            heads = (H,) if draw(st.booleans()) else ()
            tensors[p.name] = torch.rand(*heads, *shape, generator=gen) < draw(st.sampled_from([0.3, 0.6, 1.0]))
    if any(isinstance(p, ac.dsl.patterns.Mask) and p.captured for p in pat.leaves()):
        docs = torch.randint(0, 3, (B, max(N, M)), generator=_generator(draw))
        tensors["doc"] = torch.sort(docs, dim=1).values
    if norm_kind == "softmax":
        norm = ac.softmax()
    elif norm_kind == "sigmoid":
        norm = ac.sigmoid(draw(st.one_of(st.none(), st.floats(-4, 1))))
    else:
        norm = ac.linear(draw(st.sampled_from(["elu1", "relu", "focused"])))
    scale = draw(st.one_of(st.none(), st.floats(0.05, 1.0))) if not linear else None
    spec = ac.Attention(pat, normalizer=norm, score_mods=tuple(score_mods), post_mods=tuple(post_mods), scale=scale)
    return spec, Dims(B, H, N, M, d, dv), tensors


def multi_tile_specs():
    """specs() at the MULTI_TILE shapes."""
    return specs(multi_tile=True)
