"""Triton plan sweep on a GPU: the same generated kernel under several TilePlans (tile sizes,
warps, pipeline stages) at the GPU bench's shapes, to choose the per-arch defaults of
attncc/passes/plan.py. Medians of triton.testing.do_bench; fp16.

    python bench/gpu_plans.py [--only full_d64 causal_d128 ...] [--out bench/out]

Prints one table per case (ms per plan, the default marked) and writes gpu_plans.json.
"""
import argparse
import itertools
import json
from pathlib import Path

import torch

import attncc as ac
from attncc.codegen.triton.backend import TritonProgram
from attncc.ir.plan import fits
from attncc.ir.program import Dims
from attncc.passes.pipeline import lower
from attncc.runtime.kernel import triton_target

TILES = [(128, 64), (128, 128), (64, 64), (64, 128)]
WARPS, STAGES = (4, 8), (2, 3)


def cases():
    B, H, N = 8, 16, 4096
    out = {}
    for d in (64, 128):
        out[f"full_d{d}"] = (ac.Attention(), Dims(B, H, N, N, d, d), {})
        out[f"causal_d{d}"] = (ac.Attention(ac.causal()), Dims(B, H, N, N, d, d), {})
    out["sliding256"] = (ac.Attention(ac.sliding_window(256)), Dims(B, H, N, N, 64, 64), {})
    grid = (112, 112)
    out["swin_shift0"] = (ac.Attention(ac.window2d(grid, (7, 7)), score_mods=ac.rel_pos_bias("rpb", (7, 7))),
                          Dims(B, H, 12544, 12544, 64, 64), {"rpb": 0.02 * torch.randn(169, H)})
    out["axial_rows"] = (ac.Attention(ac.axial(grid, 1)), Dims(B, H, 12544, 12544, 64, 64), {})
    out["swin_shift3"] = (ac.Attention(ac.window2d(grid, (7, 7), (3, 3)), score_mods=ac.rel_pos_bias("rpb", (7, 7))),
                          Dims(B, H, 12544, 12544, 64, 64), {"rpb": 0.02 * torch.randn(169, H)})
    out["neighborhood"] = (ac.Attention(ac.neighborhood2d(grid, (7, 7))), Dims(B, H, 12544, 12544, 64, 64), {})
    return out


def main():
    import triton.testing
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    target = triton_target(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()} ({target}), fp16\n")
    results = []
    for name, (spec, dims, tensors) in cases().items():
        if args.only and name not in args.only:
            continue
        q = torch.randn(dims.B, dims.H, dims.N, dims.d, device="cuda", dtype=torch.float16)
        k = torch.randn(dims.B, dims.H, dims.M, dims.d, device="cuda", dtype=torch.float16)
        v = torch.randn(dims.B, dims.H, dims.M, dims.dv, device="cuda", dtype=torch.float16)
        tens = {n: x.cuda() for n, x in tensors.items()}
        default = lower(spec, dims, "float16", target=target).program.groups[0].plan
        atom_q, atom_k = lower(spec, dims, "float16", target=target).program.groups[0].blocks.atom
        plans = {default}
        for (bm, bn), w, st in itertools.product(TILES, WARPS, STAGES):
            bm, bn = (default.block_m, default.block_n) if (bm % atom_q or bn % atom_k) else (bm, bn)
            p = default.replace(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
            if fits(p, dims.d, dims.dv, target, 2):
                plans.add(p)
        ref = None
        rows = []
        for p in sorted(plans, key=lambda p: (p.block_m, p.block_n, p.num_warps, p.num_stages)):
            try:
                prog = TritonProgram(lower(spec, dims, "float16", target=target, plans=p).program, tens)
                o = prog(q, k, v, tens)
                ref = o if ref is None else ref
                err = (o.float() - ref.float()).abs().max().item()
                ms = triton.testing.do_bench(lambda: prog(q, k, v, tens), warmup=25, rep=100, return_mode="median")
            except Exception as e:                      # a plan Triton cannot build: reported, not fatal
                rows.append((p, None, f"{type(e).__name__}: {str(e)[:80]}"))
                continue
            rows.append((p, ms, f"{err:.1e}"))
        best = min(ms for _, ms, _ in rows if ms is not None)
        print(f"## {name} {dims}")
        print("| plan | ms | vs best | max diff to first |\n|---|---|---|---|")
        for p, ms, note in rows:
            tag = f"{p.block_m}x{p.block_n} w{p.num_warps} s{p.num_stages}" + (" (default)" if p == default else "")
            print(f"| {tag} | {'-' if ms is None else f'{ms:.3f}'} | "
                  f"{'-' if ms is None else f'{ms / best:.2f}'} | {note} |")
            results.append({"case": name, "plan": tag, "ms": ms, "note": note})
        print(flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_plans.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
