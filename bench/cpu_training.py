"""CPU bench of training (forward + backward of the attention core, gradients of q, k, v and
of the captured tensors that are parameters): attncc's generated TVM backward against the
peers' own training paths, side by side in one run (warm-up, interleaved rounds, medians,
2 threads). Issue 23's bars are in BARS.

    python bench/cpu_training.py [--rounds 5] [--only vit causal4096 ...]

Writes bench/out/cpu_training.{md,json} and, with matplotlib, bench/out/cpu_training.png.
"""
import argparse
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import attncc as ac
from attncc.demo import interleaved
from attncc.ir.program import Dims
from attncc.reference.dense import dense_mask
from attncc.runtime.autograd import BackwardWarning

import peers
from cpu_attention import chart, swin_table

# issue 23's bars (peer time / attncc time, forward + backward)
BARS = {"vit": 1.0, "causal4096": 1.0, "swin56": 2.0, "swin56_shifted": 2.0, "neighborhood56": 5.0,
        "sliding4096": 3.0, "sigmoid_vit": 1.5}


def _leaf(*shape, gen):
    return torch.randn(*shape, generator=gen).requires_grad_()


def _step(fn, inputs, grad):
    """fn(*inputs) then backward with `grad` (gradients accumulate; the time is what counts)."""
    def run():
        out = fn(*inputs)
        out.backward(grad)
    return run


def _attncc(spec, tensors=None):
    kern = ac.compile(spec, backend="tvm")
    return lambda q, k, v, *t: kern(q, k, v, **dict(zip(tensors or (), t)))


def cases(gen):
    """(key, label, flops of forward + backward, {name: step}) per workload."""
    # ViT-B: full softmax, B8 H12 N197 d64, vs SDPA's fused backward
    q, k, v = (_leaf(8, 12, 197, 64, gen=gen) for _ in range(3))
    g = torch.randn(8, 12, 197, 64, generator=gen)
    full = 4 * 8 * 12 * 197 * 197 * 64 * 3.5
    yield "vit", "full ViT-B (B8 H12 N197 d64)", full, {
        "attncc": _step(_attncc(ac.Attention()), (q, k, v), g),
        "SDPA": _step(F.scaled_dot_product_attention, (q, k, v), g)}
    # sigmoid ViT-B vs the eager formula with autograd
    yield "sigmoid_vit", "sigmoid ViT-B (bias -log N)", full, {
        "attncc": _step(_attncc(ac.Attention(normalizer=ac.sigmoid())), (q, k, v), g),
        "eager": _step(lambda q, k, v: torch.sigmoid(q @ k.transpose(-1, -2) * 64 ** -0.5 - math.log(197)) @ v,
                       (q, k, v), g)}
    # causal N4096, B1 H8 d64
    q, k, v = (_leaf(1, 8, 4096, 64, gen=gen) for _ in range(3))
    g = torch.randn(1, 8, 4096, 64, generator=gen)
    yield "causal4096", "causal N4096 (B1 H8 d64)", 4 * 8 * 4096 * 4096 / 2 * 64 * 3.5, {
        "attncc": _step(_attncc(ac.Attention(ac.causal())), (q, k, v), g),
        "SDPA": _step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), g)}
    # sliding window 256 at N4096 vs SDPA with the band as a boolean mask
    i = torch.arange(4096)
    band = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] <= 256)
    yield "sliding4096", "sliding window 256, N4096 (B1 H8 d64)", 4 * 8 * 4096 * 257 * 64 * 3.5, {
        "attncc": _step(_attncc(ac.Attention(ac.sliding_window(256))), (q, k, v), g),
        "masked SDPA": _step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=band), (q, k, v), g)}
    # neighborhood 7x7 on 56x56 (B1 H4 d32) vs SDPA with the neighborhood as a boolean mask
    q, k, v = (_leaf(1, 4, 3136, 32, gen=gen) for _ in range(3))
    g = torch.randn(1, 4, 3136, 32, generator=gen)
    spec = ac.Attention(ac.neighborhood2d((56, 56), (7, 7)))
    prog = ac.reference(spec).lower(Dims(1, 4, 3136, 3136, 32, 32)).program
    mask = dense_mask(prog, q.detach(), k.detach())[0, 0]
    yield "neighborhood56", "neighborhood 7x7 on 56x56 (B1 H4 d32)", 4 * 4 * 3136 * 49 * 32 * 3.5, {
        "attncc": _step(_attncc(spec), (q, k, v), g),
        "masked SDPA": _step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v), g)}
    # Swin-T stage 1 windows with the relative position bias as a parameter, vs timm's procedure
    swin = peers.import_timm_swin()
    for shift, key in ((0, "swin56"), (3, "swin56_shifted")):
        B, H, d, R = 8, 3, 32, 56
        table, blk = swin_table(swin, H, d, (R, R), 7, shift)
        spec = ac.Attention(ac.window2d((R, R), (7, 7), (shift, shift)), score_mods=ac.rel_pos_bias("rpb", (7, 7)))
        q, k, v = (_leaf(B, H, R * R, d, gen=gen) for _ in range(3))
        g = torch.randn(B, H, R * R, d, generator=gen)
        rpb = table.clone().requires_grad_()
        calls = {"attncc": _step(_attncc(spec, ("rpb",)), (q, k, v, rpb), g)}
        if blk is not None:
            ql, kl, vl = (_leaf(B, R, R, H * d, gen=gen) for _ in range(3))
            gl = torch.randn(B, R, R, H * d, generator=gen)
            calls["timm"] = _step(lambda q, k, v: peers.timm_swin_core(swin, blk, q, k, v), (ql, kl, vl), gl)
        yield key, f"Swin-T stage 1 windows{' shifted' if shift else ''} + rpb grad (B8 H3 56x56 d32)", \
            4 * B * H * R * R * 49 * d * 3.5, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("error", BackwardWarning)         # every attncc row runs a generated backward
    results, table = [], []

    def emit(line):
        print(line, flush=True)
        table.append(line)

    emit("| workload (fwd + bwd) | attncc ms | peer | peer ms | speedup (peer / attncc) | bar | attncc GFLOP/s |")
    emit("|---|---|---|---|---|---|---|")
    for key, label, flops, calls in cases(torch.Generator().manual_seed(0)):
        if args.only and key not in args.only:
            continue
        t = interleaved(calls, args.rounds)
        for peer, pt in t.items():
            if peer == "attncc":
                continue
            ta = t["attncc"]
            emit(f"| {label} | {ta * 1e3:.1f} | {peer} | {pt * 1e3:.1f} | {pt / ta:.2f}x | {BARS[key]}x | "
                 f"{flops / ta / 1e9:.1f} |")
            results.append({"case": key, "label": label, "attncc_ms": ta * 1e3, "peer": peer, "peer_ms": pt * 1e3,
                            "speedup": pt / ta, "bar": BARS[key]})
    out = Path(__file__).parent / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_training.json").write_text(json.dumps({"rows": results}, indent=1))
    (out / "cpu_training.md").write_text("\n".join(table) + "\n")
    chart(results, out / "cpu_training.png")


if __name__ == "__main__":
    main()
