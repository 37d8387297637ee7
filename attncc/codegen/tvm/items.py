"""A kernel task's items: how a parallel task's `it`-th item decomposes into (batch, head,
gather group, query tile), in which order (heads_inner), how many items a task runs (_chunk),
the rows of its query tile, and the prefetch of the next item's rows (prefetches)."""


def _query_valid(sh, P, gat):
    """Whether row r (local index t) of the query tile is a query (text)."""
    return f"T.And(T.And(r < {sh.BM}, t < {sh.LQ}), {P(gat.q_valid, 'bool')})"


def query_row(w, sh, P, gat, table=False):
    """Row r of the query tile: its local index t, validity qok[r] and token qtok[r], read
    from the qtk table (query_tables) when `table`."""
    w(f"t = qi * {sh.BM} + r")
    if table:
        w("qok[r] = T.Cast(\"int32\", qtk[g, qi, r] >= 0)")
        w("qtok[r] = T.max(qtk[g, qi, r], 0)")
        return
    w(f"qok[r] = T.Cast(\"int32\", {_query_valid(sh, P, gat)})")
    w(f"qtok[r] = T.Select(qok[r] != 0, {P(gat.q_token, 'int')}, 0)")


def heads_inner(sh):
    """Whether the items of a gathered group kernel take the heads of a group one after the
    other: when each group is one query tile and q is read in place token-major ([B, N, ..., H,
    d] views of a qkv projection), so a group's tokens, read for its first head, are in cache
    for the others (q/k/v views of [B, N, 3, H, d]: Swin-T's 56x56 windows, shifted or not,
    1.05x; 64x64 axial columns 1.2x; compact inputs gain nothing: their heads lie apart).
    Not for routed regions (BiFormer's 14x14 stage: 0.93-0.96x; one head's keys, which all its
    regions route to, stay in cache) or per-query key lists (neighborhoods: consecutive groups
    share keys, 0.93x)."""
    return sh.NQ == 1 and sh.G > 1 and sh.HG > 1 and bool(sh.ST) and sh.ST[0][1] < sh.ST[0][2]


def task_item(w, sh, chunk, heads_last=False, p="", nxt=False):
    """Decompose the `it`-th item of a parallel task into (batch, head, group, query tile), or
    (batch, group, head, query tile) when `heads_last` (heads_inner); nxt: the item after it,
    its names prefixed with `p`."""
    w(f"{p}item = task * {chunk} + {'nit' if nxt else 'it'}")
    w(f"{p}b = {p}item // {sh.HG * sh.G * sh.NQ}")
    if heads_last:
        w(f"{p}g = {p}item // {sh.HG * sh.NQ} % {sh.G}")
        w(f"{p}hh = {p}item // {sh.NQ} % {sh.HG}")
    else:
        w(f"{p}hh = {p}item // {sh.G * sh.NQ} % {sh.HG}")
        w(f"{p}g = {p}item // {sh.NQ} % {sh.G}")
    w(f"{p}qi = {p}item % {sh.NQ}")
    w(f"{p}h = heads[{p}hh]")


def prefetches(sh, gat):
    """Whether a task prefetches the next item's q rows and first key tile's k/v rows into L2
    while it computes the current one: gathered groups (windows, axial lines, dilated and
    shifted grids), whose rows no hardware prefetcher predicts, and dense groups of one query
    tile (each item starts on rows of another head or batch). Zen 4, in-process A/B: Swin-T's
    windows read in place from its qkv projection 1.18-1.22x (56x56), 1.13x (28x28), 1.07x
    (14x14); compact Swin windows 1.15x, axial rows 1.15x, columns 1.09x; N=197 full softmax
    1.04-1.06x. Dense groups of many query tiles (N=4096 full, causal) gain nothing (0.99x):
    their next item's rows follow the current ones."""
    return gat.kind != "dense" or sh.NQ == 1


def query_tables(w, sh, P, gat):
    """qtk [G, NQ, BMP]: the query map evaluated once per call per query tile (the token, -1
    where the row is no query), for the tasks' rows and the prefetch of the next item's."""
    w(f"qtk = T.alloc_buffer(({sh.G}, {sh.NQ}, {sh.BMP}), \"int32\")")
    w(f"for gq in T.parallel({sh.G * sh.NQ}):")
    with w.block():
        w(f"g = gq // {sh.NQ}")
        w(f"qi = gq % {sh.NQ}")
        w(f"for r in range({sh.BMP}):")
        with w.block():
            w(f"t = qi * {sh.BM} + r")
            w(f"qtk[g, qi, r] = T.Select({_query_valid(sh, P, gat)}, {P(gat.q_token, 'int')}, -1)")


def next_item(w, sh, chunk, heads_last):
    """The next item of the task (prefixed n: nb, nh, ng, nqi, and nkb, its first key tile),
    clamped to the task's last item."""
    w(f"nit = T.min(it + 1, {chunk - 1})")
    task_item(w, sh, chunk, heads_last, p="n", nxt=True)
    w(f"nkb = tlist[{sh.table_row('nhh', 'ng')}, nqi, 0]")


def prefetch_row(w, sh, r, what):
    """Prefetch (into L2) row `r` of the next item's q tile ("q") or of its first key tile's
    k and v ("kv"), a cache line (16 floats) at a time."""
    def line(t, tok, n):
        for off in range(0, n, 16):
            w(f"T.evaluate(T.call_llvm_intrin(\"void\", \"llvm.prefetch.p0\", "
              f"T.address_of({t}[nb, nh, {tok}, {off}]), T.int32(0), T.int32(2), T.int32(1)))")
    if what == "q":
        line("q", f"T.max(qtk[ng, nqi, {r}], 0)", sh.D)
    else:
        line("k", f"ktk[ng, nkb, {r}]", sh.D)
        line("v", f"ktk[ng, nkb, {r}]", sh.DV)


TASKS_PER_THREAD = 16


def _chunk(items, threads=2):
    """Items per parallel task: the largest divisor of `items` that still leaves about
    TASKS_PER_THREAD tasks per thread for load balance."""
    want = max(1, items // (TASKS_PER_THREAD * threads))
    return max(c for c in range(1, want + 1) if items % c == 0)
