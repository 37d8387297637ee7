"""Readable text for a Program (what explain() and ATTNCC_DUMP_IR print)."""


def _short(expr, limit=400):
    s = str(expr)
    return s if len(s) <= limit else s[:limit] + f" ... ({len(s)} chars)"


def format_program(prog):
    d = prog.dims
    lines = [f"program B={d.B} H={d.H} N={d.N} M={d.M} d={d.d} dv={d.dv} dtype={prog.dtype} "
             f"target={prog.target} grid={prog.grid}",
             f"  scale {prog.scale:.6g}; normalizer {prog.norm}",
             f"  score = {_short(prog.score)}"]
    for p in prog.post:
        lines.append(f"  post: weight -> {_short(p)}")
    if prog.captured:
        lines.append(f"  captured tensors: {', '.join(prog.captured)}")
    for r in prog.reads:
        lines.append(f"  {_short(r)}")
    for c in prog.constants:
        lines.append(f"  constant {c.name}: shape {c.array.shape}")
    for p in prog.prologues:
        lines.append(f"  prologue {p.kind} {dict(p.params)} -> {', '.join(p.outputs)}")
    for k, grp in enumerate(prog.groups):
        lines.append(f"  group {k}: heads {grp.heads}")
        for p in grp.preds:
            lines.append(f"    pred {p.kind}{dict(p.params) if p.params else ''}: {_short(p.expr)}")
        if grp.gather is not None:
            lines += ["    " + s for s in str(grp.gather).splitlines()]
        if grp.blocks is not None:
            lines.append(f"    {grp.blocks}")
        if grp.residual is not None:
            lines.append(f"    residual mask (partial tiles): {_short(grp.residual)}")
        if grp.plan is not None:
            lines.append(f"    plan {grp.plan}")
    if prog.cost is not None:
        lines += ["  cost:"] + ["    " + s for s in str(prog.cost).splitlines()]
    return "\n".join(lines)
