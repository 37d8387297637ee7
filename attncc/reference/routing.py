"""The routing prologue (BiFormer): region means over all heads, region affinity, top-k.

Produces the run-time tables the IR's routing predicate and index maps read:
ROUTE_IDX [B, S^2, topk] (the routed regions) and ROUTE_MASK [B, S^2, S^2] (bool).
Carries no gradient, as in BiFormer.
"""
import torch


def routing_tables(prologue, q, k, scale, names):
    (R, C), (Sr, Sc), topk = prologue.param("grid"), prologue.param("regions"), prologue.param("topk")
    mask_name, idx_name = names
    with torch.no_grad():
        B, H, N, d = q.shape

        def region_means(x):
            x = x.permute(0, 2, 1, 3).reshape(B, Sr, R // Sr, Sc, C // Sc, H * d)
            return x.mean(dim=(2, 4)).reshape(B, Sr * Sc, H * d)

        aff = scale * region_means(q) @ region_means(k).transpose(-1, -2)
        idx = torch.topk(aff, topk, dim=-1).indices
        mask = torch.zeros(B, Sr * Sc, Sr * Sc, dtype=torch.bool, device=q.device)
        mask.scatter_(-1, idx, True)
    return {idx_name: idx, mask_name: mask}
