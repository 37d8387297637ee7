"""ac.swap on NATTEN's own NeighborhoodAttention2D (the natten package, its CPU path): the module
becomes attncc's with the same weights and scale, the outputs equal NATTEN's, and the attncc
kernel runs; configurations attncc has no drop-in for are left as they are, with a warning."""
import pytest
import torch

import attncc as ac
import attncc.runtime.kernel as K
from attncc.ops.neighborhood import NeighborhoodAttention2D

import natten  # the test extra's (pip install -e '.[test]')


class Net(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.norm = torch.nn.LayerNorm(32)
        self.attn = natten.NeighborhoodAttention2D(32, 4, **kw)

    def forward(self, x):
        return x + self.attn(self.norm(x))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=(3, 5), dilation=(2, 1), qk_scale=0.2)],
                         ids=["k3", "k3x5_dil2x1_scale"])
def test_natten_module_swaps_and_outputs_equal(kw, monkeypatch):
    calls = []
    orig_call = K.Kernel.__call__
    monkeypatch.setattr(K.Kernel, "__call__", lambda self, *a, **k: calls.append(self.backend) or orig_call(self, *a, **k))
    torch.manual_seed(0)
    model = Net(**kw).eval()
    x = torch.randn(2, 7, 11, 32)
    with torch.no_grad():                  # NATTEN's CPU path (FlexAttention) has no backward on the CPU
        want = model(x)
        report = ac.swap(model)
        got = model(x)
    assert [s.was for s in report] == ["natten NeighborhoodAttention2D"] and "neighborhood2d" in str(report)
    assert isinstance(model.attn, NeighborhoodAttention2D) and model.attn.scale == pytest.approx(kw.get("qk_scale") or 8 ** -0.5)
    assert sorted(model.attn.state_dict()) == ["proj.bias", "proj.weight", "qkv.bias", "qkv.weight"]
    assert calls == ["tvm"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,why", [(dict(kernel_size=3, stride=2), r"stride=\(2, 2\)"),
                                    (dict(kernel_size=3, is_causal=True), r"is_causal=\(True, True\)")])
def test_natten_configurations_without_a_drop_in_are_left_with_a_warning(kw, why):
    model = Net(**kw)
    with pytest.warns(UserWarning, match=r"ac.swap: attn \(natten NeighborhoodAttention2D\) is left as it is: " + why):
        report = ac.swap(model)
    assert len(report) == 0 and isinstance(model.attn, natten.NeighborhoodAttention2D)
    with pytest.raises(NotImplementedError, match=why):
        NeighborhoodAttention2D.from_natten(model.attn)
