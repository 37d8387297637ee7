"""GPU bench of the attention core (q, k, v in [B, H, N, d] -> out): attncc's Triton backend
against the peers on their fast paths, side by side in one run: torch SDPA (flash),
FlexAttention (torch.compile, block masks), for Swin timm's attention core, for bi-level
routing BiFormer's procedure (bench/routing.py; BiFormer-T's stage shapes, batch 8). Times are
medians of triton.testing.do_bench over interleaved rounds; inputs fp16.

    python bench/gpu_attention.py [--rounds 3] [--only full_d64 swin_shift3 ...] [--smoke]

Shapes: B8 H16 N4096 d64 / d128 for the dense patterns; 112x112 grids (12544 tokens, B8 H16
d64) for the 2-D ones. --smoke runs tiny shapes (on the CPU under Triton's interpreter when
there is no GPU) to check the script itself. Writes bench/out/gpu_attention.{md,json}.
"""
import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import attncc as ac
from attncc.runtime.kernel import InterpreterWarning

sys.path.insert(0, str(Path(__file__).parent))
import cpu_attention as cpu  # noqa: E402  (the Flex mask and score mods, one definition)
import peers  # noqa: E402
import routing  # noqa: E402  (BiFormer's procedure, the routing peer)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def median_ms(fn):
    if DEV == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def interleaved(calls, rounds):
    res = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            res[name].append(median_ms(fn))
    return {name: statistics.median(v) for name, v in res.items()}


def flex(mask_mod, N, score_mod=None):
    """FlexAttention (torch.compile) with a block mask. Its default kernel options can ask for
    more shared memory than the GPU has (seen for Swin's bias table on an H100); then the
    first call retries with fewer stages, then smaller blocks, and says which it runs."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    bm = create_block_mask(mask_mod, None, None, N, N, device=DEV)
    fa = torch.compile(flex_attention)
    tries = [None, {"num_stages": 2}, {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2}]
    chosen = []

    def call(q, k, v):
        if chosen:
            return fa(q, k, v, block_mask=bm, score_mod=score_mod, kernel_options=chosen[0])
        for opts in tries:
            try:
                out = fa(q, k, v, block_mask=bm, score_mod=score_mod, kernel_options=opts)
            except Exception as e:              # noqa: BLE001  (inductor raises its own error types)
                print(f"(flex with kernel_options={opts} failed: {str(e).splitlines()[-1][:160]})")
                continue
            chosen.append(opts)
            if opts:
                print(f"(flex runs with kernel_options={opts})")
            return out
        raise RuntimeError("FlexAttention failed with every kernel option tried")
    return call


def rand(*shape):
    return torch.randn(*shape, device=DEV, dtype=torch.float16)


def triton(spec):
    return ac.compile(spec, backend="triton")


def rows(smoke):
    B, H, N = (1, 2, 256) if smoke else (8, 16, 4096)
    side = 14 if smoke else 112
    out = {}
    for d in (64, 128):
        q, k, v = rand(B, H, N, d), rand(B, H, N, d), rand(B, H, N, d)
        kf, kc = triton(ac.Attention()), triton(ac.Attention(ac.causal()))
        fc = flex(lambda b, h, i, j: i >= j, N)
        out[f"full_d{d}"] = (f"full softmax B{B} H{H} N{N} d{d}", 4 * B * H * N * N * d,
                             {"attncc": lambda kf=kf, q=q, k=k, v=v: kf(q, k, v),
                              "sdpa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)})
        out[f"causal_d{d}"] = (f"causal B{B} H{H} N{N} d{d}", 2 * B * H * N * (N + 1) * d,
                               {"attncc": lambda kc=kc, q=q, k=k, v=v: kc(q, k, v),
                                "sdpa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                "flex": lambda fc=fc, q=q, k=k, v=v: fc(q, k, v)})
    q, k, v = rand(B, H, N, 64), rand(B, H, N, 64), rand(B, H, N, 64)
    w = 32 if smoke else 256
    ksw = triton(ac.Attention(ac.sliding_window(w)))
    fsw = flex(lambda b, h, i, j: (i >= j) & (i - j <= w), N)
    out["sliding"] = (f"causal sliding window {w}, B{B} H{H} N{N} d64", 4 * B * H * N * (w + 1) * 64,
                      {"attncc": lambda: ksw(q, k, v), "flex": lambda: fsw(q, k, v)})

    def sigmoid_eager(q, k, v):
        s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        return torch.sigmoid(s - math.log(k.shape[2])) @ v

    ksig = triton(ac.Attention(normalizer=ac.sigmoid()))
    kf = triton(ac.Attention())
    out["sigmoid"] = (f"sigmoid (b = -log n) B{B} H{H} N{N} d64", 4 * B * H * N * N * 64,
                      {"attncc": lambda: ksig(q, k, v), "eager torch": lambda: sigmoid_eager(q, k, v),
                       "attncc softmax": lambda: kf(q, k, v)})

    grid, T = (side, side), side * side
    q2, k2, v2 = rand(B, H, T, 64), rand(B, H, T, 64), rand(B, H, T, 64)
    swin = peers.import_timm_swin()
    for shift in (0, 3):
        win = 7
        spec = ac.Attention(ac.window2d(grid, (win, win), (shift, shift)), score_mods=ac.rel_pos_bias("rpb", (win, win)))
        kw = triton(spec)
        if swin is not None:
            blk = peers.timm_swin_block(swin, H, 64, grid, win, shift).to(DEV)
            table = blk.attn.relative_position_bias_table.detach().clone()
        else:
            blk, table = None, 0.02 * torch.randn((2 * win - 1) ** 2, H, device=DEV)
        fw = flex(cpu.swin_mask_mod(grid, win, shift), T, cpu.swin_score_mod(table, grid, win, shift))
        calls = {"attncc": lambda kw=kw, table=table: kw(q2, k2, v2, rpb=table), "flex": lambda fw=fw: fw(q2, k2, v2)}
        if blk is not None:
            blk = blk.half()
            qt, kt, vt = (peers.to_channels_last(x, grid) for x in (q2, k2, v2))
            calls["timm"] = lambda blk=blk, qt=qt, kt=kt, vt=vt: peers.timm_swin_core(swin, blk, qt, kt, vt)
        out[f"swin_shift{shift}"] = (f"Swin {side}x{side} win7 shift{shift} B{B} H{H} d64 (+rpb)",
                                     4 * B * H * T * 49 * 64, calls, {"timm": lambda o: peers.from_channels_last(o, H)})
    kna = triton(ac.Attention(ac.neighborhood2d(grid, (7, 7))))
    fna = flex(cpu.natten_mask_mod(grid, 7), T)
    out["neighborhood"] = (f"neighborhood 7x7 on {side}x{side}, B{B} H{H} d64", 4 * B * H * T * 49 * 64,
                           {"attncc": lambda: kna(q2, k2, v2), "flex": lambda: fna(q2, k2, v2)})
    krow, kcol = triton(ac.Attention(ac.axial(grid, 1))), triton(ac.Attention(ac.axial(grid, 0)))

    def axial_sdpa():
        g = [x.view(B, H, side, side, 64) for x in (q2, k2, v2)]
        rows_ = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in g))           # [B, R, H, C, d]
        cols = F.scaled_dot_product_attention(*(x.permute(0, 3, 1, 2, 4) for x in g))
        return rows_.transpose(1, 2).reshape(B, H, T, 64), cols.permute(0, 2, 3, 1, 4).reshape(B, H, T, 64)

    out["axial"] = (f"axial row then column, {side}x{side}, B{B} H{H} d64", 2 * 4 * B * H * T * side * 64,
                    {"attncc": lambda: (krow(q2, k2, v2), kcol(q2, k2, v2)), "reshape + SDPA": axial_sdpa})
    # block sparsity with the layout a tensor of the call (a random quarter of 128 x 128 blocks and
    # the diagonal) against FlexAttention's block mask of the same layout
    blk_ = 64 if smoke else 128
    gen = torch.Generator().manual_seed(0)
    lay = ((torch.rand(N // blk_, N // blk_, generator=gen) < 0.25) | torch.eye(N // blk_, dtype=torch.bool)).to(DEV)
    kbs = triton(ac.Attention(ac.block_sparse("layout", (blk_, blk_))))
    fbs = flex(lambda b, h, i, j: lay[i // blk_, j // blk_], N)
    out["block_sparse_call"] = (f"block-sparse call-time layout ({lay.float().mean().item():.0%} of {blk_}x{blk_} "
                                f"blocks), B{B} H{H} N{N} d64", 4 * B * H * N * N * 64 * lay.float().mean().item(),
                                {"attncc": lambda: kbs(q, k, v, layout=lay), "flex": lambda: fbs(q, k, v)})
    # linear attention (elu+1) at the CPU bench's shape, against its eager forms
    q1, k1, v1 = rand(1, 8, N, 64), rand(1, 8, N, 64), rand(1, 8, N, 64)
    kl = triton(ac.Attention(normalizer=ac.linear("elu1")))
    klc = triton(ac.Attention(ac.causal(), normalizer=ac.linear("elu1")))
    out["linear"] = (f"linear (elu+1) B1 H8 N{N} d64", 4 * 8 * N * 64 * 64,
                     {"attncc": lambda: kl(q1, k1, v1), "eager einsum": lambda: cpu.linear_eager(q1, k1, v1)})
    out["linear_causal"] = (f"causal linear (elu+1, chunk 64) B1 H8 N{N} d64", 4 * 8 * N * 64 * 128,
                            {"attncc": lambda: klc(q1, k1, v1),
                             "eager chunked": lambda: cpu.linear_chunked_eager(q1, k1, v1)})
    # bi-level routing at BiFormer-T's stage shapes (batch 8; --smoke: stage 3 only, batch 1)
    for stage, (grid_r, regions, topk, Hr, dr) in routing.STAGES.items():
        if smoke and stage != "stage3":
            continue
        Br, Nr = (1 if smoke else 8), grid_r[0] * grid_r[1]
        qr, kr, vr = rand(Br, Hr, Nr, dr), rand(Br, Hr, Nr, dr), rand(Br, Hr, Nr, dr)
        scale = (Hr * dr) ** -0.5
        kro = triton(ac.Attention(ac.routing(grid_r, regions, topk), scale=scale))
        out[f"routing_{stage}"] = (
            f"routing {grid_r[0]}x{grid_r[1]}, 7x7 regions, topk {topk}, B{Br} H{Hr} d{dr}",
            4 * Br * Hr * Nr * topk * (Nr // (regions[0] * regions[1])) * dr,
            {"attncc": lambda kro=kro, qr=qr, kr=kr, vr=vr: kro(qr, kr, vr),
             "BiFormer procedure": lambda qr=qr, kr=kr, vr=vr, g=grid_r, rg=regions, tk=topk, sc=scale:
                 routing.biformer_procedure(qr, kr, vr, g, rg, tk, sc)})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=InterpreterWarning)     # --smoke on a CPU: we know
    dev = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {dev}; torch {torch.__version__}\n")
    results, table = [], []

    def emit(line):
        print(line, flush=True)
        table.append(line)

    emit("| case | attncc ms | peer | peer ms | speedup (peer / attncc) | attncc TFLOP/s | max abs diff to peer |")
    emit("|---|---|---|---|---|---|---|")
    sync = torch.cuda.synchronize if DEV == "cuda" else None
    for key, label, flops, ta, peer, pt, diff in cpu.compare(rows(args.smoke), args.only,
                                                              lambda c: interleaved(c, args.rounds), sync):
        emit(f"| {label} | {ta:.3f} | {peer} | {pt:.3f} | {pt / ta:.2f}x | "
             f"{flops / ta / 1e9:.0f} | {'-' if diff is None else f'{diff:.1e}'} |")
        results.append({"case": key, "label": label, "attncc_ms": ta, "peer": peer, "peer_ms": pt,
                        "speedup": pt / ta, "max_abs_diff": diff})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_attention.json").write_text(json.dumps({"device": dev, "torch": torch.__version__,
                                                        "rows": results}, indent=1))
    (out / "gpu_attention.md").write_text(f"{dev}, torch {torch.__version__}\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
