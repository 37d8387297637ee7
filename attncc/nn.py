"""Drop-in modules: ``attncc.nn.MultiheadAttention`` for torch.nn.MultiheadAttention.

It subclasses torch's module, so the constructor, attributes, parameters and state_dict keys
are torch's own (a torch checkpoint loads unchanged); the forward runs the attention core
through an attncc kernel. The per-call masks become part of the spec: a bool mask becomes an
``ac.mask`` over a captured tensor (exact masking), a float mask an additive
``ac.score_mod``; ``spec=`` picks the pattern, normalizer and modifiers (default: full
softmax), ``backend=`` the backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dsl import patterns as P
from .dsl.modifiers import score_mod
from .dsl.spec import Attention
from .runtime import custom_op
from .runtime.kernel import compile as ac_compile

WEIGHT_CHUNK = 256      # identity columns per pass when need_weights asks for the weights


def _mask_sig(attn_mask, kpm, causal):
    """The kinds of masks of a call, as a short string (the kernel cache key): attn_mask
    '-' | 'b2' | 'f2' | 'b3' | 'f3', key_padding_mask '-' | 'b' | 'f', then 'c' when causal."""
    a = "-" if attn_mask is None else ("b" if attn_mask.dtype == torch.bool else "f") + str(attn_mask.dim())
    k = "-" if kpm is None else ("b" if kpm.dtype == torch.bool else "f")
    return f"{a}{k}{'c' if causal else ''}"


def _mask_terms(sig, num_heads):
    """(extra patterns, extra score mods) expressing torch's masks, as described by a mask
    signature, in the DSL (the tensors are captured by the names attn_mask and key_padding_mask)."""
    pats, mods = [], []
    kinds = sig.rstrip("c")
    a, kp = (kinds[:-1], kinds[-1])
    if a != "-":
        if a[1] == "2":
            idx = lambda b, h, q, k, m: m[q, k]
        else:                                          # [B * H, L, S]
            idx = lambda b, h, q, k, m: m[b * num_heads + h, q, k]
        if a[0] == "b":
            pats.append(P.mask(lambda b, h, q, k, attn_mask: idx(b, h, q, k, attn_mask) == 0))
        else:
            mods.append(score_mod(lambda s, b, h, q, k, attn_mask: s + idx(b, h, q, k, attn_mask)))
    if kp == "b":
        pats.append(P.mask(lambda b, h, q, k, key_padding_mask: key_padding_mask[b, k] == 0))
    elif kp == "f":
        mods.append(score_mod(lambda s, b, h, q, k, key_padding_mask: s + key_padding_mask[b, k]))
    if sig.endswith("c"):
        pats.insert(0, P.causal())
    return pats, mods


class Compiled:
    """Mixin for attncc's modules: kernels compiled per key string from ``self._spec(key)``
    (cached), run through the torch custom op when traced by torch.compile (the key travels as a
    string, the kernel is compiled at run time, outside the traced graph). A subclass calls
    ``_init_kernels(backend)`` in its constructor and ``_attend(key, q, k, v, tensors)`` in forward.
    """

    def _init_kernels(self, backend):
        self.backend = backend
        self._kernels = {}
        self._op_ref = custom_op.register(self, "m")     # names this module to the torch custom op

    def _spec(self, key):
        raise NotImplementedError

    def _kernel_for_ref(self, key):
        kern = self._kernels.get(key)
        if kern is None:
            kern = self._kernels[key] = ac_compile(self._spec(key), backend=self.backend)
        return kern

    def _attend(self, key, q, k, v, tensors):
        if torch.compiler.is_compiling():       # one opaque op in the traced graph
            return custom_op.call(f"{self._op_ref}/{key}", q, k, v, tensors, False)
        return self._kernel_for_ref(key)(q, k, v, **tensors)

    def __getstate__(self):        # copies and pickles compile their own kernels
        state = dict(self.__dict__)
        state.pop("_kernels", None)
        state.pop("_op_ref", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._kernels = {}
        self._op_ref = custom_op.register(self, "m")


class MultiheadAttention(Compiled, torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention with the attention core compiled by attncc.

    Same constructor (plus keyword-only ``spec`` and ``backend``), attributes, forward
    signature, return values and state_dict keys as torch's. ``spec`` (an ac.Attention, default
    full softmax) replaces the attention pattern; torch's attn_mask / key_padding_mask /
    is_causal are applied on top of it. need_weights=True returns the weights the spec
    computes (torch's softmax weights for the default spec). A row whose keys are all masked
    gives 0 (torch gives NaN).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, spec=None, backend="auto"):
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
                         add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first,
                         device=device, dtype=dtype)
        if spec is not None and not isinstance(spec, Attention):
            raise TypeError(f"spec must be an ac.Attention, got {type(spec).__name__} ({spec!r})")
        self.spec = spec if spec is not None else Attention()
        self._init_kernels(backend)
        # a forward pre-hook keeps nn.TransformerEncoderLayer off its fused fast path, which
        # would bypass this module's forward (torch checks for hooks before taking it)
        self.register_forward_pre_hook(lambda module, args: None)

    @classmethod
    def from_torch(cls, mha, spec=None, backend="auto"):
        """A copy of a torch.nn.MultiheadAttention (weights included) running on attncc."""
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                  add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn, kdim=mha.kdim,
                  vdim=mha.vdim, batch_first=mha.batch_first, spec=spec, backend=backend)
        new.load_state_dict(mha.state_dict())
        p = next(mha.parameters(), None)
        if p is not None:
            new.to(device=p.device, dtype=p.dtype)
        new.train(mha.training)
        return new

    def kernel(self, attn_mask=None, key_padding_mask=None, causal=False):
        """The compiled kernel for this module's spec plus the given mask kinds (cached)."""
        return self._kernel_for_ref(_mask_sig(attn_mask, key_padding_mask, causal))

    def _spec(self, sig):
        pats, mods = _mask_terms(sig, self.num_heads)
        pattern = self.spec.pattern
        for p in pats:
            pattern = pattern & p
        return Attention(pattern, self.spec.normalizer, self.spec.score_mods + tuple(mods),
                         self.spec.post_mods, self.spec.scale)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch.nn.MultiheadAttention); "
                               "pass the causal mask, e.g. nn.Transformer.generate_square_subsequent_mask(L)")
        batched = query.dim() == 3
        self_attention = query is key and key is value and self._qkv_same_embed_dim
        # work batch-first, [B, L, E]: the kernel reads q, k, v as views of the projections and
        # writes its output token-major, so neither side needs a transposing copy
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        B, L, E = query.shape
        H, hd = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        if self_attention:      # one projection GEMM, as torch's; q, k, v are views of it
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        if attn_mask is not None and attn_mask.dim() == 3 and attn_mask.shape[0] != B * H:
            raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)} must be [L, S] or "
                               f"[batch * num_heads, L, S] = [{B * H}, {L}, {key.shape[1]}]")
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.transpose(0, 1).expand(B, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.transpose(0, 1).expand(B, 1, E)], dim=1)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        # [B, S, E] -> [B, H, S, hd] (views)
        q, k, v = (x.reshape(B, x.shape[1], H, hd).transpose(1, 2) for x in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(B, H, 1, hd)], dim=2)
            v = torch.cat([v, v.new_zeros(B, H, 1, hd)], dim=2)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        causal = bool(is_causal) and key_padding_mask is None
        sig = _mask_sig(attn_mask, key_padding_mask, causal)
        tensors = {}
        if attn_mask is not None:
            tensors["attn_mask"] = attn_mask.to(q.dtype) if attn_mask.is_floating_point() else attn_mask
        if key_padding_mask is not None:
            tensors["key_padding_mask"] = (key_padding_mask.to(q.dtype) if key_padding_mask.is_floating_point()
                                           else key_padding_mask)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights or dropout > 0:
            weights = self._weights(sig, q, k, tensors)                  # [B, H, L, S]
            if dropout > 0:     # as torch: dropout on the weights, which are also returned
                weights = F.dropout(weights.reshape(B * H, L, -1), p=dropout).view_as(weights)
            out = weights @ v
        else:
            out = self._attend(sig, q, k, v, tensors)
        out = out.transpose(1, 2).reshape(B, L, E)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            weights = weights.squeeze(0)
        return out, weights

    def _weights(self, sig, q, k, tensors):
        """The spec's attention weights [B, H, L, S]: the kernel applied to identity values, a
        chunk of key columns at a time (weights are what multiplies v, whatever the normalizer)."""
        B, H, S = k.shape[0], k.shape[1], k.shape[2]
        cols = []
        for c0 in range(0, S, WEIGHT_CHUNK):
            eye = torch.eye(S, dtype=q.dtype, device=q.device)[:, c0:c0 + WEIGHT_CHUNK]
            cols.append(self._attend(sig, q, k, eye.expand(B, H, S, eye.shape[1]), tensors))
        return torch.cat(cols, dim=-1)


def _pad_masks(attn_mask, kpm):
    if attn_mask is not None:
        attn_mask = F.pad(attn_mask, (0, 1))
    if kpm is not None:
        kpm = F.pad(kpm, (0, 1))
    return attn_mask, kpm
