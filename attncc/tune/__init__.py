"""Autotuning: search the TilePlan knobs of a backend on this machine, check every candidate
against the fp64 oracle, and keep the winners in a JSON schedule database.

    from attncc.tune import tune
    result = tune(spec, dims, "float32", mode="fast", budget_s=60)    # stores the winner
    ac.compile(spec, tune=True)      # looks the plan up (exact shape, then shape bucket), else tunes

Modules: space (candidates and fast-memory pruning), verify (the oracle check), build (a
candidate's compile per target: TVM, Triton on a CUDA GPU), runner (where candidates are
measured), search (the tuner), db (records, lookup, file lock), device (the fingerprint records
are keyed by: this CPU, or a GPU's name and arch).
"""
from .db import Database, DatabaseWarning, databases, lookup, shape_bucket, user_database, workload_hash
from .device import fingerprint
from .search import TuneResult, tune
from .space import search_space

__all__ = ["Database", "DatabaseWarning", "TuneResult", "databases", "fingerprint", "lookup", "search_space",
           "shape_bucket", "tune", "user_database", "workload_hash"]
