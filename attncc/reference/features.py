"""Linear attention's feature maps phi (PATTERNS.md)."""
import torch
import torch.nn.functional as F

FOCUSED_POWER = 3


def feature_map(name, x):
    if name == "elu1":
        return F.elu(x) + 1
    if name == "relu":
        return F.relu(x)
    if name == "identity":
        return x
    if name == "focused":
        r = F.relu(x)
        rp = r ** FOCUSED_POWER
        n_r = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
        n_rp = torch.linalg.vector_norm(rp, dim=-1, keepdim=True)
        return torch.where(n_rp > 0, n_r * rp / torch.where(n_rp > 0, n_rp, 1), 0)
    raise ValueError(f"unknown feature map {name!r}")
