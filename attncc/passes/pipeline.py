"""The lowering pipeline: a flat list of passes, each a pure function Program -> Program.

ATTNCC_VERIFY=1 runs the verifier after every pass (the tests turn it on);
ATTNCC_DUMP_IR=1 prints the IR after every pass.
"""
import os
import time
from dataclasses import dataclass

from ..ir.pretty import format_program
from ..ir.verify import verify as verify_program
from .canonicalize import canonicalize
from .classify_blocks import classify_blocks
from .cost import cost
from .gather import gather
from .plan import plan
from .reads import reads
from .simplify_masks import simplify_masks

PASSES = (gather, reads, classify_blocks, simplify_masks, plan, cost)


@dataclass(frozen=True)
class Lowered:
    """The final Program and every stage: ((pass name, program, seconds), ...)."""
    program: object
    stages: tuple

    @property
    def seconds(self):
        """Total lowering time."""
        return sum(s for _, _, s in self.stages)

    def explain(self):
        out = []
        for name, prog, secs in self.stages:
            out.append(f"=== after {name} ({secs * 1e3:.1f} ms)")
            out.append(format_program(prog))
        return "\n".join(out)


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def lower(spec, dims, dtype="float32", target="reference", plans=None, verify=None, dump=None, per_query=True):
    """Run the passes on `spec` at `dims`; per_query=False: no per-query key gathers (gather)."""
    verify = _flag("ATTNCC_VERIFY") if verify is None else verify
    dump = _flag("ATTNCC_DUMP_IR") if dump is None else dump
    t0 = time.perf_counter()
    prog = canonicalize(spec, dims, dtype, target)
    stages = [("canonicalize", prog, time.perf_counter() - t0)]
    if verify:
        verify_program(prog)
    for p in PASSES:
        t0 = time.perf_counter()
        prog = p(prog, plans) if p is plan else p(prog, per_query) if p is gather else p(prog)
        stages.append((p.__name__, prog, time.perf_counter() - t0))
        if verify:
            verify_program(prog)
        if dump:
            print(f"=== after {p.__name__}\n{format_program(prog)}")
    return Lowered(prog, tuple(stages))
