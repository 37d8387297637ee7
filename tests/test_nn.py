"""ac.nn.MultiheadAttention against torch.nn.MultiheadAttention (outputs, weights, gradients,
state_dict), and ac.swap on whole models (the attncc kernel must actually run)."""
import pytest
import torch

import attncc as ac
import attncc.runtime.kernel as K


def pair(E=32, H=4, **kw):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(E, H, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))       # non-trivial biases too
    ours = ac.nn.MultiheadAttention.from_torch(ref, backend="reference")
    return ref, ours


def inputs(L=7, S=9, B=3, E=32, kdim=None, vdim=None, batch_first=False):
    shape = (lambda n, e: (B, n, e)) if batch_first else (lambda n, e: (n, B, e))
    return torch.randn(shape(L, E)), torch.randn(shape(S, kdim or E)), torch.randn(shape(S, vdim or E))


def close(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


def causal_bool(L, S):
    return torch.ones(L, S, dtype=torch.bool).triu(1)


CASES = {
    "plain": ({}, {}),
    "batch_first": ({"batch_first": True}, {}),
    "kpm_bool": ({}, {"key_padding_mask": "kpm_bool"}),
    "kpm_float": ({}, {"key_padding_mask": "kpm_float"}),
    "mask_bool_2d": ({}, {"attn_mask": "bool2"}),
    "mask_float_2d": ({}, {"attn_mask": "float2"}),
    "mask_bool_3d": ({}, {"attn_mask": "bool3"}),
    "mask_float_3d_and_kpm": ({}, {"attn_mask": "float3", "key_padding_mask": "kpm_bool"}),
    "is_causal": ({}, {"attn_mask": "causal", "is_causal": True}),
    "no_weights": ({}, {"need_weights": False}),
    "per_head_weights": ({}, {"average_attn_weights": False}),
    "kdim_vdim": ({"kdim": 12, "vdim": 20}, {}),
    "add_bias_kv": ({"add_bias_kv": True}, {"key_padding_mask": "kpm_bool", "attn_mask": "float2"}),
    "add_zero_attn": ({"add_zero_attn": True}, {"attn_mask": "bool2"}),
    "no_bias": ({"bias": False}, {}),
}


def materialise(args, L, S, B, H):
    out = dict(args)
    gen = {"kpm_bool": lambda: torch.rand(B, S) < 0.3,
           "kpm_float": lambda: torch.randn(B, S),
           "bool2": lambda: (torch.rand(L, S) < 0.3) & ~torch.eye(L, S, dtype=torch.bool),
           "float2": lambda: torch.randn(L, S),
           "bool3": lambda: (torch.rand(B * H, L, S) < 0.3) & ~torch.eye(L, S, dtype=torch.bool),
           "float3": lambda: torch.randn(B * H, L, S),
           "causal": lambda: causal_bool(L, S)}
    for k in ("key_padding_mask", "attn_mask"):
        if k in out:
            out[k] = gen[out[k]]()
    if "key_padding_mask" in out and out["key_padding_mask"].dtype == torch.bool:
        out["key_padding_mask"][:, 0] = False          # torch gives NaN for fully masked rows
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_gradients_equal_torch(name):
    ctor, call = CASES[name]
    L, S, B, H = 7, 9 if name != "is_causal" else 7, 3, 4
    ref, ours = pair(**ctor)
    q, k, v = inputs(L, S, B, kdim=ctor.get("kdim"), vdim=ctor.get("vdim"), batch_first=ctor.get("batch_first", False))
    if name == "is_causal":
        k, v = q.clone(), q.clone()
    kwargs = materialise(call, L, S, B, H)
    for x in (q, k, v):
        x.requires_grad_(True)
    o1, w1 = ref(q, k, v, **kwargs)
    g1 = torch.autograd.grad(o1.square().sum(), [q, k, v] + list(ref.parameters()))
    o2, w2 = ours(q, k, v, **kwargs)
    g2 = torch.autograd.grad(o2.square().sum(), [q, k, v] + list(ours.parameters()))
    close(o2, o1)
    close(w2, w1)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_state_dict_and_attributes_are_torchs():
    ref = torch.nn.MultiheadAttention(32, 4, kdim=12, vdim=20, add_bias_kv=True)
    ours = ac.nn.MultiheadAttention(32, 4, kdim=12, vdim=20, add_bias_kv=True, backend="reference")
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    for attr in ("embed_dim", "num_heads", "head_dim", "batch_first", "kdim", "vdim", "_qkv_same_embed_dim", "dropout"):
        assert getattr(ours, attr) == getattr(ref, attr)
    assert isinstance(ours, torch.nn.MultiheadAttention)


def test_unbatched_input():
    ref, ours = pair()
    x = torch.randn(5, 32)
    o1, w1 = ref(x, x, x)
    o2, w2 = ours(x, x, x)
    close(o2, o1)
    close(w2, w1)


def test_dropout_in_training_matches_torchs_weights_path():
    ref, ours = pair(dropout=0.3)
    ref.train(), ours.train()
    q, k, v = inputs()
    torch.manual_seed(5)
    o1, w1 = ref(q, k, v, need_weights=True)
    torch.manual_seed(5)
    o2, w2 = ours(q, k, v, need_weights=True)
    close(o2, o1)
    close(w2, w1)


def test_spec_changes_the_pattern():
    ref, _ = pair()
    ours = ac.nn.MultiheadAttention.from_torch(ref, spec=ac.Attention(ac.sliding_window(2, 2)), backend="reference")
    x = torch.randn(10, 2, 32)
    band = (torch.arange(10)[:, None] - torch.arange(10)[None, :]).abs() > 2
    o1, w1 = ref(x, x, x, attn_mask=band)
    o2, w2 = ours(x, x, x)
    close(o2, o1)
    close(w2, w1)


def test_is_causal_needs_a_mask_like_torch():
    _, ours = pair()
    x = torch.randn(4, 2, 32)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        ours(x, x, x, is_causal=True)


def test_rejects_a_spec_that_is_not_an_attention():
    with pytest.raises(TypeError, match="spec must be an ac.Attention"):
        ac.nn.MultiheadAttention(8, 2, spec=ac.causal())


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    orig = K.Kernel.__call__

    def counting(self, *a, **kw):
        calls.append(self.spec)
        return orig(self, *a, **kw)

    monkeypatch.setattr(K.Kernel, "__call__", counting)
    return calls


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_swap_transformer_encoder_runs_attncc_and_keeps_outputs(train, kernel_calls):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
    model.train(train)
    x = torch.randn(2, 6, 32)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    with torch.no_grad():
        before = model(x, src_key_padding_mask=kpm)
    report = ac.swap(model, backend="reference")
    assert [s.name for s in report] == ["layers.0.self_attn", "layers.1.self_attn"]
    assert "torch.nn.MultiheadAttention -> attncc" in str(report)
    with torch.no_grad():
        after = model(x, src_key_padding_mask=kpm)
    assert len(kernel_calls) == 2, "the torch fast path bypassed the swapped modules"
    # torch's fast path writes 0 at padded positions; compare the real tokens
    keep = ~kpm
    torch.testing.assert_close(after[keep], before[keep], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", torch.nn.GELU(approximate="tanh"), torch.nn.SiLU()],
                         ids=["relu", "gelu", "gelu_tanh", "silu"])
def test_swapped_encoder_layer_feed_forward_in_place_without_autograd(activation):
    """Without autograd, the swapped layer's activation runs in place on linear1's output (as
    torch's fused fast path); an activation with no in-place form, or autograd, keeps torch's."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=activation, batch_first=True).eval()
    x = torch.randn(2, 6, 32)
    torch.backends.mha.set_fastpath_enabled(False)      # torch's Python path: the layer as declared
    try:
        with torch.no_grad():
            want = layer(x)
        want_grad = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    ac.swap(layer, backend="reference")
    ptrs = {}
    layer.linear1.register_forward_hook(lambda m, a, out: ptrs.update(hidden=out.data_ptr()))
    layer.linear2.register_forward_pre_hook(lambda m, a: ptrs.update(act=a[0].data_ptr()))
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (ptrs["act"] == ptrs["hidden"]) == (not isinstance(activation, torch.nn.SiLU))
    ptrs.clear()
    got_grad = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
    assert ptrs["act"] != ptrs["hidden"], "in place under autograd"
    for a, b in zip(got_grad, want_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_swap_transformer_decoder_and_gradients():
    torch.manual_seed(0)
    model = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0), 1)
    tgt, mem = torch.randn(5, 2, 32), torch.randn(7, 2, 32)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    ref = model(tgt, mem, tgt_mask=mask, tgt_is_causal=True)
    g_ref = torch.autograd.grad(ref.sum(), list(model.parameters()))
    report = ac.swap(model, backend="reference")
    assert len(report) == 2
    out = model(tgt, mem, tgt_mask=mask, tgt_is_causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():                           # the feed-forward's activation in place
        torch.testing.assert_close(model(tgt, mem, tgt_mask=mask, tgt_is_causal=True), ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), list(model.parameters())), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_swap_rejects_non_modules():
    with pytest.raises(TypeError, match="swap takes a torch.nn.Module"):
        ac.swap("model")


# torch.compile: kernels and modules are one torch.library custom op in the traced graph

def test_compiled_kernel_traces_fullgraph_with_gradients():
    spec = ac.Attention(ac.window2d((4, 4), (2, 2), (1, 1)), score_mods=ac.rel_pos_bias("rpb", (2, 2)))
    kern = ac.compile(spec)                         # tvm on this CPU
    q, k, v = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(3))
    rpb = torch.randn(9, 2, requires_grad=True)

    def f(q, k, v, rpb):
        out, lse = kern(q, k, v, return_lse=True, rpb=rpb)
        return out * 2, lse

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v, rpb)
    want = f(q, k, v, rpb)
    ref = ac.reference(spec)(q, k, v, return_lse=True, rpb=rpb)
    for a, b, r in zip(got, want, (ref[0] * 2, ref[1])):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    loss = lambda o: o[0].square().sum() + o[1].sum()
    g_got = torch.autograd.grad(loss(got), [q, k, v, rpb])
    g_ref = torch.autograd.grad(loss((ref[0] * 2, ref[1])), [q, k, v, rpb])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_swapped_encoder_fullgraph_inductor_equals_eager(kernel_calls):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 6, 32)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    ac.swap(model)                                  # backend auto: tvm kernels
    with torch.no_grad():
        eager = model(x, src_key_padding_mask=kpm)
        kernel_calls.clear()
        got = torch.compile(model, fullgraph=True)(x, src_key_padding_mask=kpm)
    assert len(kernel_calls) == 2, "the compiled graph did not run the attncc kernels"
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


def test_compiled_mha_training_gradients_equal_torch():
    ref, ours = pair()
    ours = ac.nn.MultiheadAttention.from_torch(ref)          # tvm kernels
    q, k, v = inputs()
    mask = torch.randn(7, 9)
    o1, _ = ref(q, k, v, attn_mask=mask, need_weights=False)
    g1 = torch.autograd.grad(o1.square().sum(), list(ref.parameters()))
    step = torch.compile(lambda q, k, v: ours(q, k, v, attn_mask=mask, need_weights=False)[0],
                         fullgraph=True, backend="aot_eager")
    o2 = step(q, k, v)
    g2 = torch.autograd.grad(o2.square().sum(), list(ours.parameters()))
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_copied_module_gets_its_own_kernel_reference():
    import copy
    _, ours = pair()
    twin = copy.deepcopy(ours)
    assert twin._op_ref != ours._op_ref
    x = torch.randn(5, 2, 32)
    torch.testing.assert_close(twin(x, x, x)[0], ours(x, x, x)[0])
