"""Dense-source families (MHA-style): full, causal, local and dilated windows, block-sparse,
ALiBi and soft-capping. Their kernels skip empty tiles of the static block classification.
The family's drop-in module is torch's: ``MultiheadAttention`` (attncc.nn.MultiheadAttention,
whose ``spec=`` takes any of these specs)."""
import numpy as np
import torch

import attncc as ac
from attncc.ir.program import Dims
from attncc.nn import MultiheadAttention  # noqa: F401  (the family's drop-in)

from ._catalogue import Entry


def mha_spec(causal=False, align="top_left", scale=None):
    """torch.nn.MultiheadAttention / SDPA semantics: full or causal softmax attention."""
    return ac.Attention(ac.causal(align) if causal else ac.full(), scale=scale)


def local_spec(left, right=0, dilation=1):
    """Sliding-window (Longformer/Mistral-style) or dilated 1-D local attention."""
    pat = ac.sliding_window(left, right) if dilation == 1 else ac.dilated(dilation, left, right)
    return ac.Attention(pat)


def alibi_spec(causal=True):
    """ALiBi (BLOOM, MPT): linear distance penalty per head."""
    return ac.Attention(ac.causal() if causal else ac.full(), score_mods=ac.alibi())


def softcap_spec(cap=50.0, causal=True):
    """Gemma-2 style soft-capped causal attention."""
    return ac.Attention(ac.causal() if causal else ac.full(), score_mods=ac.softcap(cap))


def block_sparse_spec(n_blocks, block=64, local=1, stride=4):
    """A fixed BigBird-like layout: a local band plus every `stride`-th key block (causal)."""
    qb = np.arange(n_blocks)[:, None]
    kb = np.arange(n_blocks)[None, :]
    layout = ((qb - kb >= 0) & (qb - kb <= local)) | ((kb % stride == 0) & (kb <= qb))
    return ac.Attention(ac.block_sparse(layout, (block, block)))


def call_layout(dims, gen, block=64, density=0.3):
    """A per-head layout for block_sparse("layout"): random blocks and the diagonal."""
    n = -(-dims.N // block)
    return {"layout": (torch.rand(dims.H, n, n, generator=gen) < density) | torch.eye(n, dtype=torch.bool)}


CATALOGUE = [
    Entry("full", "flash", mha_spec(), Dims(1, 4, 512, 512, 64, 64)),
    Entry("causal", "flash", mha_spec(causal=True), Dims(1, 4, 512, 512, 64, 64)),
    Entry("causal_bottom_right", "flash", mha_spec(True, "bottom_right"), Dims(1, 4, 128, 512, 64, 64)),
    Entry("sliding_window", "flash", local_spec(64), Dims(1, 4, 1024, 1024, 64, 64)),
    Entry("dilated", "flash", local_spec(128, 0, dilation=4), Dims(1, 4, 1024, 1024, 64, 64)),
    Entry("alibi_causal", "flash", alibi_spec(), Dims(1, 4, 512, 512, 64, 64)),
    Entry("softcap_causal", "flash", softcap_spec(), Dims(1, 4, 512, 512, 64, 64)),
    Entry("block_sparse", "flash", block_sparse_spec(8), Dims(1, 4, 512, 512, 64, 64)),
    # the layout is a tensor of each call (kern(q, k, v, layout=...)): one kernel for any layout
    Entry("block_sparse_call", "flash", ac.Attention(ac.block_sparse("layout", (64, 64))), Dims(1, 4, 512, 512, 64, 64),
          call_layout),
]
