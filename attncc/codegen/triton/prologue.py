"""The routing prologue of bi-level routing (BiFormer) as two generated Triton kernels, run
before the routed attention kernel:

1. region sums: one program per (batch, region) adds the region's q and k rows over all heads
   (width H * d; the means up to the positive factor 1 / tokens, which changes no ranking);
2. affinity and top-k: one program per (batch, query region) takes the dot products of its q
   sum with every region's k sum, then picks the top k by repeated arg-max (ties: the lowest
   region index) into route_idx [B, S^2, topk].
"""
from ..routes import COL, REG
from .printer import TritonPrinter
from .source import KERNEL, header, pow2

HEADER = header()


def region_sums(route, dims):
    """Source of kernel 1 and the padded width of its outputs qm, km [B * S^2, WP]."""
    H, D, N = dims.H, dims.d, dims.N
    WP = pow2(H * D)
    tok = TritonPrinter({REG: ("reg", "int"), COL: ("c", "int")}, {})(route.token(REG, COL), "int")
    body = f'''def {KERNEL}(q, k, qm, km):
    pid = tl.program_id(0)
    b = pid // {route.count}
    reg = pid % {route.count}
    w = tl.arange(0, {WP})
    wok = w < {H * D}
    row = (b * {H} + w // {D}).to(tl.int64) * {N}
    accq = tl.zeros([{WP}], tl.float32)
    acck = tl.zeros([{WP}], tl.float32)
    for c in range(0, {route.tokens}):
        off = (row + {tok}) * {D} + w % {D}
        accq += tl.load(q + off, mask=wok, other=0.0).to(tl.float32)
        acck += tl.load(k + off, mask=wok, other=0.0).to(tl.float32)
    tl.store(qm + pid * {WP} + w, accq)
    tl.store(km + pid * {WP} + w, acck)
'''
    return HEADER + body, WP


def affinity_topk(route, wp):
    """Source of kernel 2 (reads qm, km [B * S^2, wp]; writes route_idx [B, S^2, topk])."""
    S2, S2P = route.count, pow2(route.count, 2)
    wc = min(wp, 64)
    body = f'''def {KERNEL}(qm, km, route_idx):
    pid = tl.program_id(0)
    b = pid // {S2}
    r2 = tl.arange(0, {S2P})
    rok = r2 < {S2}
    aff = tl.zeros([{S2P}], tl.float32)
    for w0 in range(0, {wp}, {wc}):
        ww = w0 + tl.arange(0, {wc})
        qv = tl.load(qm + pid * {wp} + ww)
        kv = tl.load(km + (b * {S2} + r2[:, None]) * {wp} + ww[None, :], mask=rok[:, None], other=0.0)
        aff += tl.sum(kv * qv[None, :], 1)
    aff = tl.where(rok, aff, NEG_INF)
    for kk in tl.static_range({route.topk}):
        top = tl.max(aff, 0)
        best = tl.min(tl.where(aff == top, r2, {S2P}), 0)
        tl.store(route_idx + pid * {route.topk} + kk, best)
        aff = tl.where(r2 == best, NEG_INF, aff)
'''
    return HEADER + body
