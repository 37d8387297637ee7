"""ac.swap on open_clip's ViT-B-32 image tower (random weights, nothing downloaded): its
ResidualAttentionBlocks hold torch.nn.MultiheadAttention (batch_first), which swap replaces;
the outputs and gradients equal the original's and the attncc kernels run."""
import pytest
import torch

import attncc as ac
import attncc.runtime.kernel as K
from timm_helper import import_open_clip

open_clip = import_open_clip()


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    orig = K.Kernel.__call__

    def counting(self, *a, **kw):
        calls.append(self.backend)
        return orig(self, *a, **kw)

    monkeypatch.setattr(K.Kernel, "__call__", counting)
    return calls


def test_vit_b_32_image_tower_outputs_equal_and_attncc_kernels_run(kernel_calls):
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = visual(x)
    report = ac.swap(visual)
    assert len(report) == 12 and all(s.was == "torch.nn.MultiheadAttention" for s in report)
    assert all(isinstance(b.attn, ac.nn.MultiheadAttention) for b in visual.transformer.resblocks)
    with torch.no_grad():
        after = visual(x)
    assert kernel_calls == ["tvm"] * 12, "the swapped blocks did not run attncc kernels"
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_open_clip_blocks_training_gradients_equal(kernel_calls):
    """Two of the tower's blocks in training mode (dropout 0, as open_clip builds them)."""
    torch.manual_seed(0)
    tower = open_clip.create_model("ViT-B-32", pretrained=None).visual
    model = torch.nn.Sequential(*tower.transformer.resblocks[:2]).train()
    x = torch.randn(2, 50, 768, requires_grad=True)
    names = [n for n, _ in model.named_parameters()]
    ref = model(x)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *model.parameters()])
    ac.swap(model)
    assert [n for n, _ in model.named_parameters()] == names        # the same parameters, copied
    out = model(x)
    assert kernel_calls == ["tvm"] * 2
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for n, a, b in zip(["x", *names], torch.autograd.grad(out.square().sum(), [x, *model.parameters()]), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3, msg=n)
