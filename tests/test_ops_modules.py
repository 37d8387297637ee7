"""The nn.Modules of ops/ against the published procedures they replace (written out here
from the papers' and reference repositories' semantics, or the real package where it is a
test dependency: timm for Swin)."""
import pytest
import torch

from attncc.ops.window import WindowAttention
from timm_helper import import_timm

timm = import_timm()
from timm.models import swin_transformer as tswin  # noqa: E402


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# window: timm's Swin WindowAttention and SwinTransformerBlock._attn

def timm_attn(window=(3, 4), **kw):
    torch.manual_seed(0)
    attn = tswin.WindowAttention(32, 4, window_size=window, **kw).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 0.5)        # a trained-looking table
        attn.qkv.bias.normal_(0, 0.5)
    return attn


def test_window_state_dict_is_timms():
    ref = timm_attn()
    ours = WindowAttention(32, 4, window_size=(3, 4))
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_window_attention_on_windows_equals_timm(masked):
    ref = timm_attn()
    ours = WindowAttention.from_timm(ref)
    x = torch.randn(6, 12, 32, requires_grad=True)
    mask = torch.where(torch.rand(3, 12, 12) < 0.3, -100.0, 0.0) if masked else None
    want, got = ref(x, mask), ours(x, mask)
    close(got, want)
    g1 = torch.autograd.grad(want.square().sum(), [x, ref.relative_position_bias_table, ref.qkv.weight])
    g2 = torch.autograd.grad(got.square().sum(), [x, ours.relative_position_bias_table, ours.qkv.weight])
    for a, b in zip(g2, g1):
        close(a, b, 1e-4)


@pytest.mark.parametrize("res,shift", [((6, 8), 0), ((6, 8), 1), ((7, 10), 0), ((7, 10), 1), ((2, 10), 1)],
                         ids=["plain", "shifted", "padded", "shifted_padded", "window_shrunk"])
def test_window_attention_on_the_map_equals_timm_block(res, shift):
    torch.manual_seed(0)
    blk = tswin.SwinTransformerBlock(32, res, num_heads=4, window_size=(3, 4), shift_size=shift).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 0.5)
        blk.attn.qkv.bias.normal_(0, 0.5)                          # padded keys = this bias
    ours = WindowAttention.from_timm(blk.attn, shift_size=blk.shift_size)
    x = torch.randn(2, *res, 32)
    close(ours(x), blk._attn(x))


def test_window_errors_name_the_fix():
    ours = WindowAttention(32, 4, window_size=(3, 4), attn_drop=0.1).train()
    with pytest.raises(NotImplementedError, match=r"attn_drop=0.1 in training.*set attn_drop=0 or call .eval\(\)"):
        ours(torch.randn(2, 12, 32))
    ours.eval()
    with pytest.raises(ValueError, match=r"windows of 10 tokens, expected wr \* wc = 12"):
        ours(torch.randn(2, 10, 32))
    with pytest.raises(ValueError, match=r"window \(3, 4\) is larger than the map \(2, 8\)"):
        ours(torch.randn(1, 2, 8, 32))


# the projections every QKVAttention module shares, written out for the procedures below

def project(mod, x):
    """x [B, N, C] -> q, k, v [B, heads, N, d] through the module's own qkv Linear."""
    B, N, C = x.shape
    return (x @ mod.qkv.weight.T + mod.qkv.bias).reshape(B, N, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)


def unproject(mod, o):
    B, H, N, d = o.shape
    return o.transpose(1, 2).reshape(B, N, H * d) @ mod.proj.weight.T + mod.proj.bias


def check_module(mod, procedure, x):
    """Output and input gradient of `mod` (tvm kernels) equal the procedure's."""
    x = x.requires_grad_(True)
    want, got = procedure(mod, x), mod(x)
    close(got, want)
    close(torch.autograd.grad(got.square().sum(), x)[0], torch.autograd.grad(want.square().sum(), x)[0], 1e-4)


# neighborhood: NATTEN's na2d, by gathering each query's clamped (dilated) neighbourhood

def natten_neighbours(n, k, dil):
    """[n, k]: the coordinates along one axis that NATTEN's neighbourhood of each coordinate
    holds: the k-box around it in its dilation sub-grid, slid to stay inside that sub-grid."""
    rows = []
    for i in range(n):
        g, p = i % dil, i // dil
        size = len(range(g, n, dil))
        start = min(max(p - k // 2, 0), size - k)
        rows.append([g + dil * (start + t) for t in range(k)])
    return torch.tensor(rows)


def natten_procedure(mod, x):
    B, R, C, E = x.shape
    (kr, kc), (dr, dc) = mod.kernel_size, mod.dilation
    q, k, v = project(mod, x.reshape(B, R * C, E))
    nr, nc = natten_neighbours(R, kr, dr), natten_neighbours(C, kc, dc)
    idx = (nr[:, None, :, None] * C + nc[None, :, None, :]).reshape(R * C, kr * kc)     # [N, kr*kc]
    kn, vn = k[:, :, idx], v[:, :, idx]                                                   # [B, H, N, K, d]
    w = torch.softmax(torch.einsum("bhnd,bhnkd->bhnk", q, kn) * mod.head_dim ** -0.5, dim=-1)
    return unproject(mod, torch.einsum("bhnk,bhnkd->bhnd", w, vn)).reshape(B, R, C, E)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), ((3, 5), (2, 1))], ids=["k3", "k3x5_dil2x1"])
def test_neighborhood_attention_equals_natten_procedure(kernel, dilation):
    from attncc.ops.neighborhood import NeighborhoodAttention2D
    mod = NeighborhoodAttention2D(32, 4, kernel, dilation)
    check_module(mod, natten_procedure, torch.randn(2, 7, 9, 32))


# axial: attention along one axis by moving it next to the channels and folding the rest into the batch

def axial_procedure(mod, x):
    B, *grid, E = x.shape
    axis = mod.axis % len(grid)
    q, k, v = (t.reshape(B, mod.num_heads, *grid, -1) for t in project(mod, x.reshape(B, -1, E)))
    moved = [t.movedim(2 + axis, -2) for t in (q, k, v)]
    shape = moved[0].shape
    o = torch.nn.functional.scaled_dot_product_attention(*(t.reshape(-1, shape[-2], shape[-1]) for t in moved))
    o = o.reshape(shape).movedim(-2, 2 + axis).reshape(B, mod.num_heads, -1, shape[-1])
    return unproject(mod, o).reshape(x.shape)


@pytest.mark.parametrize("grid,axis", [((6, 5), 1), ((6, 5), 0), ((3, 4, 5), 0), ((3, 4, 5), -1)],
                         ids=["rows", "columns", "video_time", "video_width"])
def test_axial_attention_equals_reshape_procedure(grid, axis):
    from attncc.ops.axial import AxialAttention
    check_module(AxialAttention(32, 4, axis), axial_procedure, torch.randn(2, *grid, 32))


# sigmoid: sigmoid(q.k * scale + b) v, b = -log(N), no normalization over keys

def sigmoid_procedure(mod, x):
    B, N, E = x.shape
    q, k, v = project(mod, x)
    b = -torch.log(torch.tensor(float(N))) if mod.bias is None else mod.bias
    w = torch.sigmoid(q @ k.transpose(-1, -2) * mod.head_dim ** -0.5 + b)
    if mod.causal:
        w = w * torch.ones(N, N).tril()
    return unproject(mod, w @ v)


@pytest.mark.parametrize("bias,causal", [(None, False), (-2.5, False), (None, True)],
                         ids=["default_bias", "given_bias", "causal"])
def test_sigmoid_attention_equals_formula(bias, causal):
    from attncc.ops.sigmoid import SigmoidAttention
    check_module(SigmoidAttention(32, 4, bias=bias, causal=causal), sigmoid_procedure, torch.randn(2, 11, 32))


def test_module_errors_name_the_fix():
    from attncc.ops.axial import AxialAttention
    from attncc.ops.sigmoid import SigmoidAttention
    with pytest.raises(ValueError, match="dim=30 must be divisible by num_heads=4"):
        SigmoidAttention(30, 4)
    with pytest.raises(ValueError, match=r"axis=2 but x of shape \(1, 3, 4, 32\) has 2 grid axes"):
        AxialAttention(32, 4, axis=2)(torch.randn(1, 3, 4, 32))


# HiLo (LITv2): Hi-Fi heads in ws x ws windows (partitioned explicitly here), Lo-Fi heads on
# keys and values from the average-pooled map; outputs concatenated Hi-Fi first

def hilo_procedure(mod, x, H, W):
    B, N, C = x.shape
    ws, outs = mod.ws, []
    if mod.h_heads:
        g = x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(2, 3).reshape(B, -1, ws * ws, C)   # windows
        qkv = (g @ mod.h_qkv.weight.T + (mod.h_qkv.bias if mod.h_qkv.bias is not None else 0))
        q, k, v = qkv.reshape(B, -1, ws * ws, 3, mod.h_heads, mod.h_dim // mod.h_heads).permute(3, 0, 1, 4, 2, 5)
        o = torch.softmax(q @ k.transpose(-1, -2) * mod.scale, dim=-1) @ v             # [B, nW, heads, ws*ws, d]
        o = o.transpose(2, 3).reshape(B, H // ws, W // ws, ws, ws, mod.h_dim).transpose(2, 3).reshape(B, N, -1)
        outs.append(o @ mod.h_proj.weight.T + mod.h_proj.bias)
    if mod.l_heads:
        d = mod.l_dim // mod.l_heads
        m = x.transpose(1, 2).reshape(B, C, H, W)
        if ws > 1:
            m = m.reshape(B, C, H // ws, ws, W // ws, ws).mean(dim=(3, 5))
        p = m.reshape(B, C, -1).transpose(1, 2)
        q = (x @ mod.l_q.weight.T).reshape(B, N, mod.l_heads, d).transpose(1, 2)
        k, v = (p @ mod.l_kv.weight.T).reshape(B, -1, 2, mod.l_heads, d).permute(2, 0, 3, 1, 4)
        o = torch.softmax(q @ k.transpose(-1, -2) * mod.scale, dim=-1) @ v
        outs.append(o.transpose(1, 2).reshape(B, N, -1) @ mod.l_proj.weight.T + mod.l_proj.bias)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("ws,alpha", [(2, 0.5), (3, 0.25), (1, 0.5)], ids=["ws2_half", "ws3_quarter", "ws1_all_lo"])
def test_hilo_equals_litv2_procedure(ws, alpha):
    from attncc.ops.hilo import HiLo
    H, W = 6, 6
    mod = HiLo(32, 4, window_size=ws, alpha=alpha)
    assert {n.split(".")[0] for n in mod.state_dict()} <= {"h_qkv", "h_proj", "l_q", "l_kv", "l_proj"}
    x = torch.randn(2, H * W, 32, requires_grad=True)
    want, got = hilo_procedure(mod, x, H, W), mod(x, H, W)
    close(got, want)
    close(torch.autograd.grad(got.square().sum(), x)[0], torch.autograd.grad(want.square().sum(), x)[0], 1e-4)


def biformer_procedure(mod, x):
    """BiFormer's bi-level routing attention as published (its legacy module, configuration
    qkvo, identity kv downsampling, hard non-differentiable routing): regions of the map, region
    means of q and k, top-k routed regions, K and V gathered per query region, attention, plus
    the depthwise-conv context on v, then the output Linear."""
    B, H, W, C = x.shape
    n, m, qk = mod.n_win, mod.num_heads, mod.qk_dim
    h, w = H // n, W // n
    regions = x.reshape(B, n, h, n, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, n * n, h * w, C)
    q, k, v = mod.qkv.qkv(regions).split([qk, qk, C], dim=-1)                 # [B, n^2, hw, c]
    logits = (q.mean(2) * mod.scale) @ k.mean(2).transpose(-1, -2)           # [B, n^2, n^2]
    idx = torch.topk(logits.detach(), mod.topk, dim=-1).indices              # [B, n^2, topk]
    sel = idx[..., None, None].expand(-1, -1, -1, h * w, qk + C)
    kv = torch.gather(torch.cat((k, v), -1)[:, None].expand(-1, n * n, -1, -1, -1), 2, sel)
    ks, vs = kv.reshape(B, n * n, -1, qk + C).split([qk, C], dim=-1)        # [B, n^2, topk*hw, c]
    split = lambda t: t.reshape(*t.shape[:3], m, -1).transpose(2, 3)         # [B, n^2, m, L, c/m]
    attn = torch.softmax(split(q) * mod.scale @ split(ks).transpose(-1, -2), dim=-1)
    out = (attn @ split(vs)).transpose(2, 3).reshape(B, n, n, h, w, C).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(B, H, W, C)
    vmap = v.reshape(B, n, n, h, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    out = out + mod.lepe(vmap.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return mod.wo(out)


@pytest.mark.parametrize("grid,n_win,topk,heads", [((14, 14), 7, 4, 2), ((12, 8), 4, 3, 4)], ids=["t14", "rect"])
def test_biformer_module_equals_biformer_procedure(grid, n_win, topk, heads):
    from attncc.ops.routing import BiLevelRoutingAttention
    torch.manual_seed(0)
    mod = BiLevelRoutingAttention(32, heads, n_win=n_win, topk=topk)
    assert sorted(mod.state_dict()) == ["lepe.bias", "lepe.weight", "qkv.qkv.bias", "qkv.qkv.weight", "wo.bias",
                                        "wo.weight"]
    x = torch.randn(2, *grid, 32, requires_grad=True)
    want, got = biformer_procedure(mod, x), mod(x)
    close(got, want)
    close(torch.autograd.grad(got.square().sum(), x)[0], torch.autograd.grad(want.square().sum(), x)[0], 1e-4)


def test_biformer_module_pads_like_biformer_and_names_the_fix():
    from attncc.ops.routing import BiLevelRoutingAttention
    mod = BiLevelRoutingAttention(16, 2, n_win=4, topk=2)
    with pytest.raises(ValueError, match=r"the map 10 x 12 must be divisible by n_win=4; pad it or pass auto_pad=True"):
        mod(torch.randn(1, 10, 12, 16))
    mod.auto_pad = True
    x = torch.randn(1, 10, 12, 16)
    got = mod(x)
    want = biformer_procedure(mod, torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 2)))[:, :10]
    assert got.shape == (1, 10, 12, 16)
    close(got, want)


def linear_procedure(mod, x, grid=None):
    """Katharopoulos et al.'s linear attention, eager: phi(Q) (phi(K)^T V) / phi(Q) phi(K)^T 1,
    causal by cumulative sums over the keys, per window by partitioning the map."""
    phi = {"elu1": lambda t: torch.nn.functional.elu(t) + 1, "relu": torch.relu}[mod.feature_map]
    q, k, v = (phi(t) if i < 2 else t for i, t in enumerate(project(mod, x)))
    B, H, N, d = q.shape
    if mod.window is not None:
        (R, C), (wr, wc) = grid, mod.window
        part = lambda t: t.reshape(B, H, R // wr, wr, C // wc, wc, -1).permute(0, 1, 2, 4, 3, 5, 6).reshape(
            B, H, -1, wr * wc, t.shape[-1])
        q, k, v = part(q), part(k), part(v)
    else:
        q, k, v = q[:, :, None], k[:, :, None], v[:, :, None]
    if mod.causal:
        kv = torch.cumsum(k[..., :, None] * v[..., None, :], dim=-3)              # [..., n, d, dv]
        num, den = torch.einsum("...nd,...nde->...ne", q, kv), (q * torch.cumsum(k, dim=-2)).sum(-1)
    else:
        num, den = q @ (k.transpose(-1, -2) @ v), q @ k.sum(-2)[..., None]
        den = den[..., 0]
    o = num / (den[..., None] + mod.eps)
    if mod.window is not None:
        (R, C), (wr, wc) = grid, mod.window
        o = o.reshape(B, H, R // wr, C // wc, wr, wc, -1).permute(0, 1, 2, 4, 3, 5, 6)
    return unproject(mod, o.reshape(B, H, N, -1))


@pytest.mark.parametrize("fmap,causal,window", [("elu1", False, None), ("relu", True, None), ("elu1", False, (2, 3))],
                         ids=["elu1", "relu_causal", "elu1_window"])
def test_linear_attention_equals_katharopoulos_procedure(fmap, causal, window):
    from attncc.ops.linear import LinearAttention
    mod = LinearAttention(32, 4, feature_map=fmap, causal=causal, window=window)
    grid = (4, 6) if window else None
    x = torch.randn(2, 24, 32, requires_grad=True)
    want, got = linear_procedure(mod, x, grid), mod(x, grid)
    close(got, want)
    close(torch.autograd.grad(got.square().sum(), x)[0], torch.autograd.grad(want.square().sum(), x)[0], 1e-4)
    with pytest.raises(ValueError, match="needs forward"):
        mod(x, None if window else (4, 6))


def cswin_procedure(mod, x):
    """CSWin's attention as published (CSWinBlock's qkv, its LePEAttention branches, proj): per
    branch the map is cut into stripes (branch 0: full-height stripes split_size columns wide,
    branch 1: full-width stripes split_size rows high; the last stage: the whole map), each
    stripe is a dense softmax attention over its tokens, plus the depthwise conv of v taken on
    the stripe alone, then the stripes go back to the map and the branches are concatenated."""
    B, L, E = x.shape
    R, C = mod.resolution
    qkv = mod.qkv(x).reshape(B, R, C, 3, E)
    branches = len(mod.attns)
    c, m = E // branches, mod.num_heads // branches
    outs = []
    for i in range(branches):
        sr, sc = (R, C) if branches == 1 else ((R, mod.split_size) if i == 0 else (mod.split_size, C))
        part = qkv[..., i * c:(i + 1) * c]                                     # [B, R, C, 3, c]
        win = part.reshape(B, R // sr, sr, C // sc, sc, 3, c).permute(5, 0, 1, 3, 2, 4, 6).reshape(3, -1, sr * sc, c)
        q, k, v = (t.reshape(t.shape[0], sr * sc, m, c // m).transpose(1, 2) for t in win)  # [B*nW, m, n, c/m]
        attn = torch.softmax(q * mod.scale @ k.transpose(-1, -2), dim=-1)
        vimg = win[2].transpose(1, 2).reshape(-1, c, sr, sc)
        lepe = mod.attns[i].get_v(vimg).reshape(-1, m, c // m, sr * sc).transpose(-1, -2)
        o = (attn @ v + lepe).transpose(1, 2).reshape(B, R // sr, C // sc, sr, sc, c)
        outs.append(o.permute(0, 1, 3, 2, 4, 5).reshape(B, L, c))
    return mod.proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("res,split,heads,last", [((8, 8), 2, 4, False), ((6, 9), 3, 2, False), ((4, 4), 4, 4, False),
                                                  ((6, 6), 2, 2, True)], ids=["square", "rect", "last_by_size", "last"])
def test_cswin_attention_equals_cswin_procedure(res, split, heads, last):
    from attncc.ops.stripes import CSWinAttention
    torch.manual_seed(0)
    mod = CSWinAttention(32, res, heads, split_size=split, qkv_bias=True, last_stage=last)
    branches = 1 if last or max(res) == split else 2
    assert sorted(mod.state_dict()) == sorted(
        ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
        + [f"attns.{i}.get_v.{p}" for i in range(branches) for p in ("weight", "bias")])
    x = torch.randn(2, res[0] * res[1], 32, requires_grad=True)
    want, got = cswin_procedure(mod, x), mod(x)
    close(got, want)
    close(torch.autograd.grad(got.square().sum(), x)[0], torch.autograd.grad(want.square().sum(), x)[0], 1e-4)


def test_cswin_attention_errors_name_the_fix():
    from attncc.ops.stripes import CSWinAttention
    with pytest.raises(ValueError, match=r"the map \(8, 10\) must be divisible by split_size=3"):
        CSWinAttention(32, (8, 10), 4, split_size=3)
    with pytest.raises(ValueError, match=r"num_heads=3 heads and num_heads into 2 branches"):
        CSWinAttention(48, 8, 3, split_size=2)
    mod = CSWinAttention(32, 8, 4, split_size=2)
    with pytest.raises(ValueError, match=r"expected \[B, 64, 32\]"):
        mod(torch.randn(1, 60, 32))
