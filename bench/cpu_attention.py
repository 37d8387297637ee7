"""CPU bench of the attention core (q, k, v in [B, H, N, d] -> out): attncc's TVM backend
against the peers on their fast paths, side by side in one run (warm-up, interleaved rounds,
medians, 2 threads). Prints a markdown table of ratios and writes bench/out/cpu_attention.json.

    python bench/cpu_attention.py [--rounds 5] [--only vit full4096 ...]

Writes bench/out/cpu_attention.{md,json} and, when matplotlib is installed
(pip install -e '.[bench]'), a bar chart of the speedups bench/out/cpu_attention.png.
"""
import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import attncc as ac
from attncc.demo import interleaved

import peers


def swin_table(swin, H, d, grid, win, shift):
    """The relative position bias table and, when timm is installed, timm's block (which
    holds the same table and the shifted-window mask)."""
    if swin is None:
        return 0.02 * torch.randn((2 * win - 1) ** 2, H), None
    blk = peers.timm_swin_block(swin, H, d, grid, win, shift)
    return blk.attn.relative_position_bias_table.detach().clone(), blk


def torch_after_attncc(n=15):
    """TVM's thread pool must not starve torch: SDPA timed alone, and right after an attncc
    kernel call in the same process (medians of n)."""
    q, k, v = (torch.randn(8, 12, 197, 64) for _ in range(3))
    kern = ac.compile(ac.Attention(), backend="tvm")
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v)
    alone, after = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        sdpa()
        alone.append(time.perf_counter() - t0)
        kern(q, k, v)
        t0 = time.perf_counter()
        sdpa()
        after.append(time.perf_counter() - t0)
    return statistics.median(alone), statistics.median(after)


def flex(mask_mod, N, score_mod=None):
    """FlexAttention (torch.compile) on the unpartitioned sequence with a block mask; its
    compile time is reported apart."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    bm = create_block_mask(mask_mod, None, None, N, N, device="cpu")
    fa = torch.compile(flex_attention)
    return lambda q, k, v: fa(q, k, v, block_mask=bm, score_mod=score_mod)


def swin_mask_mod(grid, win, shift):
    R, C = grid

    def coords(t):
        r, c = (t // C - shift) % R, (t % C - shift) % C
        region = lambda x, n: (x >= n - win).long() + (x >= n - shift).long() if shift else x * 0
        return r // win, c // win, region(r, R), region(c, C)

    def mask_mod(b, h, qi, ki):
        a, bb = coords(qi), coords(ki)
        return (a[0] == bb[0]) & (a[1] == bb[1]) & (a[2] == bb[2]) & (a[3] == bb[3])
    return mask_mod


def swin_score_mod(table, grid, win, shift):
    R, C = grid

    def local(t):
        return ((t // C - shift) % R) % win, ((t % C - shift) % C) % win

    def score_mod(score, b, h, qi, ki):
        (ri, ci), (rj, cj) = local(qi), local(ki)
        return score + table[(ri - rj + win - 1) * (2 * win - 1) + (ci - cj + win - 1), h]
    return score_mod


def elu1(x):
    return F.elu(x) + 1


def linear_eager(q, k, v, eps=1e-6):
    """Non-causal linear attention, eager: the state phi(K)^T V and sum phi(K), then applied."""
    pq, pk = elu1(q), elu1(k)
    num = torch.einsum("bhnd,bhde->bhne", pq, torch.einsum("bhnd,bhne->bhde", pk, v))
    den = torch.einsum("bhnd,bhd->bhn", pq, pk.sum(2))
    return num / (den[..., None] + eps)


def linear_chunked_eager(q, k, v, chunk=64, eps=1e-6):
    """Causal linear attention, the eager chunked form: per chunk of 64 the masked quadratic
    form, plus the state of the chunks before it (an exclusive prefix sum of chunk states)."""
    B, H, N, d = q.shape
    n, dv = N // chunk, v.shape[-1]
    pq, pk = elu1(q).view(B, H, n, chunk, d), elu1(k).view(B, H, n, chunk, d)
    vc = v.view(B, H, n, chunk, dv)
    kv = pk.transpose(-1, -2) @ vc                                        # [B, H, n, d, dv]
    kv = torch.cat((torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(2)), dim=2)
    z = pk.sum(3)
    z = torch.cat((torch.zeros_like(z[:, :, :1]), z[:, :, :-1].cumsum(2)), dim=2)
    a = (pq @ pk.transpose(-1, -2)).tril()
    num = a @ vc + pq @ kv
    den = a.sum(-1) + (pq * z[:, :, :, None, :]).sum(-1)
    return (num / (den[..., None] + eps)).view(B, H, N, dv)


def natten_mask_mod(grid, kernel):
    R, C = grid

    def mask_mod(b, h, qi, ki):
        ri, ci, rj, cj = qi // C, qi % C, ki // C, ki % C
        sr = (ri - kernel // 2).clamp(0, R - kernel)
        sc = (ci - kernel // 2).clamp(0, C - kernel)
        return (rj >= sr) & (rj < sr + kernel) & (cj >= sc) & (cj < sc + kernel)
    return mask_mod


# peers that compute another function (attncc's own softmax beside its sigmoid): timed, not compared
SPEED_ONLY = {"attncc softmax"}


def rows():
    out = {}
    q, k, v = (torch.randn(8, 12, 197, 64) for _ in range(3))
    kern = ac.compile(ac.Attention(), backend="tvm")
    out["vit"] = ("full softmax B8 H12 N197 d64", 4 * 8 * 12 * 197 * 197 * 64,
                  {"attncc": lambda: kern(q, k, v), "sdpa": lambda: F.scaled_dot_product_attention(q, k, v)})
    q2, k2, v2 = (torch.randn(1, 8, 4096, 64) for _ in range(3))
    out["full4096"] = ("full softmax B1 H8 N4096 d64", 4 * 8 * 4096 * 4096 * 64,
                       {"attncc": lambda: kern(q2, k2, v2), "sdpa": lambda: F.scaled_dot_product_attention(q2, k2, v2)})
    kc = ac.compile(ac.Attention(ac.causal()), backend="tvm")
    fc = flex(lambda b, h, i, j: i >= j, 4096)
    out["causal4096"] = ("causal B1 H8 N4096 d64", 2 * 8 * 4096 * 4097 * 64,
                         {"attncc": lambda: kc(q2, k2, v2),
                          "sdpa": lambda: F.scaled_dot_product_attention(q2, k2, v2, is_causal=True),
                          "flex": lambda: fc(q2, k2, v2)})
    ksw = ac.compile(ac.Attention(ac.sliding_window(256)), backend="tvm")
    fsw = flex(lambda b, h, i, j: (i >= j) & (i - j <= 256), 4096)
    out["sliding256"] = ("causal sliding window 256, B1 H8 N4096 d64", 4 * 8 * 4096 * 257 * 64,
                         {"attncc": lambda: ksw(q2, k2, v2), "flex": lambda: fsw(q2, k2, v2)})
    swin = peers.import_timm_swin()
    for shift in (0, 3):
        B, H, grid, win, d = 8, 3, (56, 56), 7, 32
        qs, ks, vs = (torch.randn(B, H, 3136, d) for _ in range(3))
        table, blk = swin_table(swin, H, d, grid, win, shift)
        spec = ac.Attention(ac.window2d(grid, (win, win), (shift, shift)),
                            score_mods=ac.rel_pos_bias("rpb", (win, win)))
        kw = ac.compile(spec, backend="tvm")
        fw = flex(swin_mask_mod(grid, win, shift), 3136, swin_score_mod(table, grid, win, shift))
        calls = {"attncc": (lambda kw=kw, qs=qs, ks=ks, vs=vs, table=table: kw(qs, ks, vs, rpb=table)),
                 "flex": (lambda fw=fw, qs=qs, ks=ks, vs=vs: fw(qs, ks, vs))}
        if blk is not None:
            qt, kt, vt = (peers.to_channels_last(x, grid) for x in (qs, ks, vs))
            calls["timm"] = lambda blk=blk, qt=qt, kt=kt, vt=vt: peers.timm_swin_core(swin, blk, qt, kt, vt)
        out[f"swin_shift{shift}"] = (f"Swin 56x56 win7 shift{shift} B8 H3 d32 (+rpb)", 4 * B * H * 3136 * 49 * d,
                                     calls, {"timm": lambda o: peers.from_channels_last(o, H)})
    qa, ka, va = (torch.randn(2, 8, 4096, 64) for _ in range(3))
    krow = ac.compile(ac.Attention(ac.axial((64, 64), 1)), backend="tvm")
    kcol = ac.compile(ac.Attention(ac.axial((64, 64), 0)), backend="tvm")

    def axial_sdpa():
        def grid(x):
            return x.view(2, 8, 64, 64, 64)
        rows = F.scaled_dot_product_attention(*(grid(x).transpose(1, 2) for x in (qa, ka, va)))   # [B, R, H, C, d]
        cols = F.scaled_dot_product_attention(*(grid(x).permute(0, 3, 1, 2, 4) for x in (qa, ka, va)))
        return rows.transpose(1, 2).reshape(2, 8, 4096, 64), cols.permute(0, 2, 3, 1, 4).reshape(2, 8, 4096, 64)

    out["axial"] = ("axial row then column, 64x64, B2 H8 d64", 2 * 4 * 2 * 8 * 4096 * 64 * 64,
                    {"attncc": lambda: (krow(qa, ka, va), kcol(qa, ka, va)), "reshape + SDPA": axial_sdpa})

    def sigmoid_eager(q, k, v):
        s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        return torch.sigmoid(s - math.log(k.shape[2])) @ v

    ksig = ac.compile(ac.Attention(normalizer=ac.sigmoid()), backend="tvm")
    out["sigmoid_vit"] = ("sigmoid (b = -log n) B8 H12 N197 d64", 4 * 8 * 12 * 197 * 197 * 64,
                          {"attncc": lambda: ksig(q, k, v), "eager torch": lambda: sigmoid_eager(q, k, v),
                           "attncc softmax": lambda: kern(q, k, v)})
    out["sigmoid_4096"] = ("sigmoid (b = -log n) B1 H8 N4096 d64", 4 * 8 * 4096 * 4096 * 64,
                           {"attncc": lambda: ksig(q2, k2, v2), "eager torch": lambda: sigmoid_eager(q2, k2, v2),
                            "attncc softmax": lambda: kern(q2, k2, v2)})
    kl = ac.compile(ac.Attention(normalizer=ac.linear("elu1")), backend="tvm")
    klc = ac.compile(ac.Attention(ac.causal(), normalizer=ac.linear("elu1")), backend="tvm")
    state_flops = 4 * 8 * 4096 * 64 * 64
    out["linear"] = ("linear (elu+1) B1 H8 N4096 d64", state_flops,
                     {"attncc": lambda: kl(q2, k2, v2), "eager einsum": lambda: linear_eager(q2, k2, v2)})
    calls = {"attncc": lambda: klc(q2, k2, v2), "eager chunked": lambda: linear_chunked_eager(q2, k2, v2)}
    fla = peers.import_fla_naive()
    if fla is not None:
        fq, fk, fv = (x.transpose(1, 2).contiguous() for x in (q2, k2, v2))   # fla's [B, T, H, d]
        calls["fla naive_chunk"] = lambda: fla(elu1(fq), elu1(fk), fv, scale=1.0, normalize=True)
    out["linear_causal"] = ("causal linear (elu+1, chunk 64) B1 H8 N4096 d64", state_flops + 2 * 8 * 4096 * 64 * 128,
                            calls, {"fla naive_chunk": lambda o: o.transpose(1, 2)})
    qn, kn, vn = (torch.randn(8, 3, 3136, 32) for _ in range(3))
    kna = ac.compile(ac.Attention(ac.neighborhood2d((56, 56), (7, 7))), backend="tvm")
    fna = flex(natten_mask_mod((56, 56), 7), 3136)
    calls = {"attncc": lambda: kna(qn, kn, vn), "flex": lambda: fna(qn, kn, vn)}
    natten = peers.import_natten()
    if natten is not None:
        # natten's CPU path (na2d picks it for CPU tensors)
        qt, kt, vt = (peers.to_natten(x, (56, 56)) for x in (qn, kn, vn))
        calls[f"natten {natten.__version__}"] = lambda: natten.na2d(qt, kt, vt, kernel_size=7)
    out["neighborhood"] = ("neighborhood 7x7 on 56x56, B8 H3 d32", 4 * 8 * 3 * 3136 * 49 * 32, calls,
                           {name: peers.from_natten for name in calls if name.startswith("natten")})
    return out


def agreement(ours, theirs, to_ours):
    """Max abs difference between attncc's output and a peer's (in attncc's layout)."""
    if isinstance(ours, tuple):
        return max(agreement(a, b, to_ours) for a, b in zip(ours, theirs))
    return (ours - to_ours(theirs)).abs().max().item()


def compare(cases, only, time_calls, sync=None):
    """Per case (key -> (label, flops, calls[, peer layouts])): the first calls (compiles,
    outside the timing), then `time_calls(calls)`; yields (key, label, flops, attncc time,
    peer, peer time, max abs diff to the peer or None) for every peer."""
    for key, (label, flops, calls, *layout) in cases.items():
        if only and key not in only:
            continue
        layout = layout[0] if layout else {}
        first = {}
        for name, fn in calls.items():
            t0 = time.perf_counter()
            first[name] = fn()
            if sync is not None:
                sync()
            print(f"(first call of {name} for {key}: {time.perf_counter() - t0:.1f} s)", flush=True)
        t = time_calls(calls)
        for peer, pt in t.items():
            if peer != "attncc":
                diff = None if peer in SPEED_ONLY else agreement(first["attncc"], first[peer],
                                                                 layout.get(peer, lambda o: o))
                yield key, label, flops, t["attncc"], peer, pt, diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(2)
    mm = torch.randn(2048, 2048)
    sgemm = 2 * 2048 ** 3 / interleaved({"mm": lambda: mm @ mm}, 3)["mm"]
    results, table = [], []

    def emit(line):
        print(line, flush=True)
        table.append(line)

    print(f"sgemm (torch.mm 2048^3, 2 threads): {sgemm / 1e9:.1f} GFLOP/s\n")
    emit("| case | attncc ms | peer | peer ms | speedup (peer / attncc) | attncc GFLOP/s | % of sgemm | "
         "max abs diff to peer |")
    emit("|---|---|---|---|---|---|---|---|")
    for key, label, flops, ta, peer, pt, diff in compare(rows(), args.only, lambda c: interleaved(c, args.rounds)):
        gf = flops / ta / 1e9
        emit(f"| {label} | {ta * 1e3:.2f} | {peer} | {pt * 1e3:.2f} | {pt / ta:.2f}x | "
             f"{gf:.1f} | {100 * gf * 1e9 / sgemm:.0f}% | {'-' if diff is None else f'{diff:.1e}'} |")
        results.append({"case": key, "label": label, "attncc_ms": ta * 1e3, "peer": peer,
                        "peer_ms": pt * 1e3, "speedup": pt / ta, "max_abs_diff": diff})
    alone, after = torch_after_attncc()
    print(f"\ntorch SDPA (ViT-B shape) alone {alone * 1e3:.2f} ms, right after an attncc kernel {after * 1e3:.2f} ms "
          f"({after / alone:.2f}x)")
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_attention.json").write_text(json.dumps(
        {"sgemm_gflops": sgemm / 1e9, "rows": results, "sdpa_alone_ms": alone * 1e3, "sdpa_after_attncc_ms": after * 1e3},
        indent=1))
    (out / "cpu_attention.md").write_text(f"sgemm {sgemm / 1e9:.1f} GFLOP/s\n\n" + "\n".join(table) + "\n")
    chart(results, out / "cpu_attention.png")


def chart(results, path):
    """Horizontal bars of peer time / attncc time (right of 1 = attncc faster)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no chart: pip install -e '.[bench]' for matplotlib)")
        return
    labels = [f"{r['label']}\nvs {r['peer']}" for r in results]
    speed = [r["speedup"] for r in results]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.2))
    ax.barh(range(len(results)), speed, color=["tab:green" if x >= 1 else "tab:red" for x in speed])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(results)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of attncc (peer time / attncc time, log scale)")
    ax.set_title("attncc TVM backend vs peers, CPU, 2 threads")
    for y, x in enumerate(speed):
        ax.text(x, y, f" {x:.2f}x", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
