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
