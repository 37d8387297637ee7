"""CPU bench of bi-level routing attention (BiFormer) at BiFormer-T's stage shapes, batch 8:
attncc's TVM kernel (routing prologue + routed regions read in place) against BiFormer's
procedure in eager torch (region partition, region means, affinity, top-k, torch.gather of K
and V into [B, S^2, topk, tokens, C], dense attention per region, region merge). Time:
medians over interleaved rounds, 2 threads. Peak memory: each implementation's first call
in a fresh process (the compiled kernel comes from the disk cache): the peak resident set
(VmHWM, reset to the current size just before the call through /proc/self/clear_refs) minus
the resident set before the call.

    python bench/routing.py [--rounds 5] [--train]

--train times forward + backward (gradients of q, k and v: attncc's generated backward
kernels, the procedure's autograd) instead of the forward. Writes bench/out/routing.{md,json}
(routing_train.* with --train).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

import attncc as ac
from attncc.runtime.inputs import check_call

sys.path.insert(0, str(Path(__file__).parent))
from cpu_attention import interleaved  # noqa: E402

# (grid, regions, topk, heads, head dim) of BiFormer-T's four stages' first three (the fourth
# routes all regions: plain attention)
STAGES = {"stage1": ((56, 56), (7, 7), 1, 2, 32), "stage2": ((28, 28), (7, 7), 4, 4, 32),
          "stage3": ((14, 14), (7, 7), 16, 8, 32)}
BATCH = 8


def biformer_procedure(q, k, v, grid, regions, topk, scale):
    """BiFormer's routing attention on [B, H, N, d] inputs, as its paper describes it."""
    B, H, N, d = q.shape
    (R, C), (Sr, Sc) = grid, regions
    rh, rw = R // Sr, C // Sc

    def to_regions(x):            # [B, H, N, d] -> [B, S^2, tokens, H*d]
        x = x.permute(0, 2, 1, 3).reshape(B, Sr, rh, Sc, rw, H * d)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(B, Sr * Sc, rh * rw, H * d)
    qr, kr, vr = to_regions(q), to_regions(k), to_regions(v)
    with torch.no_grad():
        aff = (qr.mean(2) * scale) @ kr.mean(2).transpose(-1, -2)              # [B, S^2, S^2]
        idx = torch.topk(aff, topk, dim=-1).indices                             # [B, S^2, topk]
    S2, T, W = Sr * Sc, rh * rw, H * d

    def gather(x):                # [B, S^2, T, W] -> [B, S^2, topk, T, W]: the topk-fold copy
        return torch.gather(x.unsqueeze(1).expand(B, S2, S2, T, W), 2,
                            idx.view(B, S2, topk, 1, 1).expand(B, S2, topk, T, W))
    kg, vg = gather(kr), gather(vr)

    def heads(x, n):              # [B, S^2, n, W] -> [B * S^2, H, n, d]
        return x.reshape(B * S2, n, H, d).transpose(1, 2)
    att = (heads(qr, T) * scale) @ heads(kg.reshape(B, S2, topk * T, W), topk * T).transpose(-1, -2)
    o = att.softmax(-1) @ heads(vg.reshape(B, S2, topk * T, W), topk * T)    # [B * S^2, H, T, d]
    o = o.transpose(1, 2).reshape(B, Sr, Sc, rh, rw, H, d).permute(0, 5, 1, 3, 2, 4, 6)
    return o.reshape(B, H, N, d)


def setup(stage, train=False):
    grid, regions, topk, H, d = STAGES[stage]
    N = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, H, N, d, generator=gen).requires_grad_(train) for _ in range(3))
    g = torch.randn(BATCH, H, N, d, generator=gen)
    scale = (H * d) ** -0.5                       # BiFormer scales by the full width
    kern = ac.compile(ac.Attention(ac.routing(grid, regions, topk), scale=scale), backend="tvm")
    fwd = {"attncc": lambda: kern(q, k, v),
           "BiFormer procedure": lambda: biformer_procedure(q, k, v, grid, regions, topk, scale)}

    def step(fn):
        def run():
            out = fn()
            out.backward(g)
            return out.detach()
        return run
    calls = {n: step(fn) for n, fn in fwd.items()} if train else fwd

    def load():
        """The compiled kernels loaded (from the disk cache) without running: TVM's own
        libraries and the kernels' code are not the call's memory."""
        comp = kern.compiled(*check_call(kern.spec, q, k, v, {}, False), {})
        if train:
            assert comp.backward_why_not() is None
    return calls, load


def status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_child(stage, name, train=False):
    """In a fresh process: the peak resident memory one call adds (bytes)."""
    torch.set_num_threads(2)
    calls, load = setup(stage, train)
    if name == "attncc":
        load()
    Path("/proc/self/clear_refs").write_text("5")          # VmHWM := VmRSS
    before = status_kb("VmRSS")
    calls[name]()
    print(json.dumps({"peak": (status_kb("VmHWM") - before) * 1024}))


def peak(stage, name, train=False):
    res = subprocess.run([sys.executable, __file__, "--peak", stage, name, *(["--train"] if train else [])],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak", nargs=2)
    ap.add_argument("--train", action="store_true")
    args = ap.parse_args()
    if args.peak:
        return peak_child(*args.peak, train=args.train)
    torch.set_num_threads(2)
    what = "forward + backward" if args.train else "forward"
    lines = [f"| stage (batch 8), {what} | attncc ms | BiFormer ms | speedup | attncc peak MB | BiFormer peak MB | "
             "memory ratio (BiFormer / attncc) | max abs diff |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for stage, (grid, regions, topk, H, d) in STAGES.items():
        calls, _ = setup(stage, args.train)
        first = {n: fn() for n, fn in calls.items()}           # compiles (and fills the disk cache)
        diff = (first["attncc"] - first["BiFormer procedure"]).abs().max().item()
        t = interleaved(calls, args.rounds)
        mem = {n: peak(stage, n, args.train) for n in calls}
        label = f"{stage}: {grid[0]}x{grid[1]}, 7x7 regions, topk {topk}, H{H} d{d}"
        ta, tb = t["attncc"], t["BiFormer procedure"]
        ma, mb = mem["attncc"], mem["BiFormer procedure"]
        lines.append(f"| {label} | {ta * 1e3:.2f} | {tb * 1e3:.2f} | {tb / ta:.2f}x | {ma / 2**20:.1f} | "
                     f"{mb / 2**20:.1f} | {mb / max(ma, 1):.1f}x | {diff:.1e} |")
        print(lines[-1], flush=True)
        rows.append({"stage": stage, "attncc_ms": ta * 1e3, "biformer_ms": tb * 1e3, "speedup": tb / ta,
                     "attncc_peak_bytes": ma, "biformer_peak_bytes": mb, "max_abs_diff": diff})
    out = Path(__file__).parent / "out"
    out.mkdir(parents=True, exist_ok=True)
    name = "routing_train" if args.train else "routing"
    (out / f"{name}.json").write_text(json.dumps({"rows": rows}, indent=1))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
