"""Hypothesis strategies that draw random attncc specs with shapes and captured tensors."""
import math

import numpy as np
import torch
from hypothesis import strategies as st

import attncc as ac
from attncc.ir.program import Dims


@st.composite
def grids(draw):
    return (draw(st.integers(2, 9)), draw(st.integers(2, 9)))


@st.composite
def grid_pattern(draw, grid, linear=False):
    R, C = grid
    kinds = ["window2d"] if linear else ["window2d", "neighborhood2d", "axial", "stripes", "routing", "axial3d"]
    kind = draw(st.sampled_from(kinds))
    if kind == "window2d":
        wr, wc = draw(st.integers(1, R)), draw(st.integers(1, C))
        shift = (0, 0)
        if not linear and R % wr == 0 and C % wc == 0 and draw(st.booleans()):
            shift = (draw(st.integers(0, wr - 1)), draw(st.integers(0, wc - 1)))
        return ac.window2d(grid, (wr, wc), shift)
    if kind == "neighborhood2d":
        dr, dc = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        kr, kc = draw(st.integers(1, R // dr)), draw(st.integers(1, C // dc))
        return ac.neighborhood2d(grid, (kr, kc), (dr, dc))
    if kind == "axial":
        return ac.axial(grid, draw(st.integers(0, 1)))
    if kind == "stripes":
        axis = draw(st.integers(0, 1))
        return ac.stripes(grid, draw(st.integers(1, grid[axis])), axis)
    if kind == "axial3d":
        return None                      # replaced by an N-D axial by the caller
    divs = lambda n: [s for s in range(1, n + 1) if n % s == 0]
    regions = (draw(st.sampled_from(divs(R))), draw(st.sampled_from(divs(C))))
    return ac.routing(grid, regions, draw(st.integers(1, regions[0] * regions[1])))


@st.composite
def token_pattern(draw, N, M, linear=False):
    if linear:
        return draw(st.sampled_from([ac.full(), ac.causal(), ac.causal("bottom_right")]))
    kind = draw(st.sampled_from(["full", "causal", "sliding", "dilated", "block_sparse", "block_sparse_call", "mask",
                                 "mask_doc"]))
    if kind == "full":
        return ac.full()
    if kind == "causal":
        return ac.causal(draw(st.sampled_from(["top_left", "bottom_right"])))
    if kind == "sliding":
        return ac.sliding_window(draw(st.integers(0, 12)), draw(st.integers(0, 6)))
    if kind == "dilated":
        return ac.dilated(draw(st.integers(1, 4)), draw(st.integers(0, 20)), draw(st.integers(0, 8)))
    if kind == "block_sparse":
        bq, bk = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        shape = (-(-N // bq), -(-M // bk))
        seed = draw(st.integers(0, 2 ** 16))
        return ac.block_sparse(np.random.RandomState(seed).rand(*shape) < 0.5, (bq, bk))
    if kind == "block_sparse_call":       # the layout is a tensor of each call (specs() draws it)
        bq, bk = draw(st.sampled_from([7, 16, 20, 32, 48, 64])), draw(st.sampled_from([7, 16, 20, 32, 48, 64]))
        return ac.block_sparse(f"layout_{bq}_{bk}", (bq, bk))
    a, c, m = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(2, 5))
    r = draw(st.integers(0, m - 1))
    if kind == "mask":
        return ac.mask(lambda b, h, q, k: (q * a + k * c) % m != r)
    return ac.mask(lambda b, h, q, k, doc: doc[b, q] == doc[b, k])


@st.composite
def specs(draw):
    """(spec, dims, tensors) drawn at random; the spec is valid for the dims."""
    norm_kind = draw(st.sampled_from(["softmax", "softmax", "sigmoid", "linear"]))
    linear = norm_kind == "linear"
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    d = draw(st.sampled_from([4, 8, 16]))
    dv = draw(st.sampled_from([d, 8]))
    on_grid = draw(st.booleans())
    grid = None
    if on_grid:
        grid = draw(grids())
        N = M = math.prod(grid)
        pat = draw(grid_pattern(grid, linear))
        if pat is None:
            T = draw(st.integers(2, 3))
            grid3 = (T, grid[0], grid[1])
            N = M = math.prod(grid3)
            pat, grid = ac.axial(grid3, draw(st.integers(0, 2))), None
        if draw(st.booleans()):
            extra = draw(token_pattern(N, M, linear)) if linear else draw(st.one_of(
                token_pattern(N, M), grid_pattern(grid, False) if grid else token_pattern(N, M)))
            if extra is not None and not isinstance(extra, ac.dsl.patterns.Routing) and not (
                    isinstance(pat, ac.dsl.patterns.Routing) and False):
                op = "&" if linear else draw(st.sampled_from(["&", "|"]))
                if op == "|" and isinstance(pat, ac.dsl.patterns.Routing):
                    op = "&"
                pat = (pat & extra) if op == "&" else (pat | extra)
    else:
        N = draw(st.integers(1, 70))
        M = draw(st.integers(1, 70))
        pat = draw(token_pattern(N, M, linear))
        if not linear and draw(st.booleans()):
            other = draw(token_pattern(N, M))
            pat = (pat & other) if draw(st.booleans()) else (pat | other)
    if not linear and H > 1 and draw(st.booleans()):
        other = draw(token_pattern(N, M))
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
                tensors["bias"] = torch.randn(H, M)
            elif kind == "rpb":
                wins = [p for p in pat.leaves() if isinstance(p, ac.dsl.patterns.Window2d)]
                if len(set(wins)) == 1 and "rpb" not in tensors:
                    wr, wc = wins[0].window
                    score_mods.append(ac.rel_pos_bias("rpb", (wr, wc)))
                    tensors["rpb"] = torch.randn((2 * wr - 1) * (2 * wc - 1), H)
        if draw(st.booleans()):
            if grid is not None and draw(st.booleans()):
                post_mods.append(ac.decay2d(grid))
                tensors["gamma"] = torch.rand(H) * 0.5 + 0.5
            else:
                post_mods.append(ac.clipped(draw(st.floats(1.0, 1.2)), draw(st.floats(-0.2, 0.0))))
    for p in pat.leaves():
        if isinstance(p, ac.dsl.patterns.RuntimeBlockSparse) and p.name not in tensors:
            shape = (-(-N // p.block[0]), -(-M // p.block[1]))
            gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
            heads = (H,) if draw(st.booleans()) else ()
            tensors[p.name] = torch.rand(*heads, *shape, generator=gen) < draw(st.sampled_from([0.3, 0.6, 1.0]))
    if any(isinstance(p, ac.dsl.patterns.Mask) and p.captured for p in pat.leaves()):
        tensors["doc"] = torch.sort(torch.randint(0, 3, (B, max(N, M))), dim=1).values
    if norm_kind == "softmax":
        norm = ac.softmax()
    elif norm_kind == "sigmoid":
        norm = ac.sigmoid(draw(st.one_of(st.none(), st.floats(-4, 1))))
    else:
        norm = ac.linear(draw(st.sampled_from(["elu1", "relu", "focused"])))
    scale = draw(st.one_of(st.none(), st.floats(0.05, 1.0))) if not linear else None
    spec = ac.Attention(pat, normalizer=norm, score_mods=tuple(score_mods), post_mods=tuple(post_mods), scale=scale)
    return spec, Dims(B, H, N, M, d, dv), tensors
