"""ac.swap on timm's Swin (random weights, nothing downloaded): every SwinTransformerBlock's
WindowAttention becomes attncc's, the block's roll + partition + mask become the shifted
window2d pattern, the outputs and gradients equal the original's, and the attncc kernel runs."""
import pytest
import torch

import attncc as ac
import attncc.runtime.kernel as K
from attncc.ops.window import WindowAttention
from timm_helper import import_timm

timm = import_timm()
from timm.models import swin_transformer as tswin  # noqa: E402


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    orig = K.Kernel.__call__

    def counting(self, *a, **kw):
        calls.append((self.backend, self.spec))
        return orig(self, *a, **kw)

    monkeypatch.setattr(K.Kernel, "__call__", counting)
    return calls


def test_swin_tiny_outputs_equal_and_attncc_kernels_run(kernel_calls):
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
    report = ac.swap(model)                                   # backend auto: tvm on this CPU
    assert len(report) == 12 and all(isinstance(b.attn, WindowAttention) for b in model.modules()
                                     if isinstance(b, tswin.SwinTransformerBlock))
    shifts = [s.spec.pattern.shift for s in report]
    assert shifts == [(0, 0), (3, 3)] * 5 + [(0, 0)] * 2      # the last stage's 7x7 map is one window
    with torch.no_grad():
        after = model(x)
    assert [b for b, _ in kernel_calls] == ["tvm"] * 12, "the swapped blocks did not run attncc kernels"
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("res,shift", [((6, 8), 1), ((7, 10), 0), ((7, 10), 1)],
                         ids=["shifted", "padded", "shifted_padded"])
def test_swin_block_training_gradients_equal(res, shift, kernel_calls):
    torch.manual_seed(0)
    blk = tswin.SwinTransformerBlock(32, res, num_heads=4, window_size=(3, 4), shift_size=shift).train()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 0.5)
    model = torch.nn.Sequential(blk)
    x = torch.randn(2, *res, 32)
    ref = model(x)
    g_ref = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    report = ac.swap(model)
    assert [s.name for s in report] == ["0.attn"]
    assert [n for n, _ in model.named_parameters()] == names  # same parameters, same names
    out = model(x)
    assert kernel_calls and kernel_calls[0][0] == "tvm"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for n, a, b in zip(names, torch.autograd.grad(out.square().sum(), list(model.parameters())), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=n)


def test_bare_window_attention_swaps_to_the_windows_layout():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"attn": tswin.WindowAttention(32, 4, window_size=3)}).eval()
    with torch.no_grad():
        model["attn"].relative_position_bias_table.normal_(0, 0.5)
    x = torch.randn(4, 9, 32)
    mask = torch.where(torch.rand(2, 9, 9) < 0.3, -100.0, 0.0)
    with torch.no_grad():
        before = model["attn"](x, mask)
        report = ac.swap(model)
        after = model["attn"](x, mask)
    assert report[0].was == "timm WindowAttention"
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
