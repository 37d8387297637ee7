"""The schedule database: JSON records of tuned plans, keyed by attncc version, workload (IR
hash), shape, dtype, target and device fingerprint.

A file holds {"format": "attncc-schedules", "records": [...]}. User records live in
<cache>/tune/records.json (<cache> is attncc.cachedir.root(): ATTNCC_CACHE_DIR, else the user's
cache directory, ~/.cache/attncc on Linux; ATTNCC_TUNE_DB names the file itself); shipped
records in the package attncc.schedules (schedules/*.json). A lookup tries the exact shape,
then the shape bucket (sequence lengths rounded up to powers of two, head dims exact), in the
user's records before the shipped ones; None means "use the default plan". Writes take a file
lock (filelock) and replace the file atomically, so processes tuning at once lose nothing. A
corrupt file (truncated, empty, not even text) or record, or one written by another attncc
version, is ignored with a DatabaseWarning, never trusted; the next write moves a corrupt file
aside.
"""
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import cachedir
from ..ir.plan import TilePlan
from ..ir.program import Dims
from ..version import __version__

FORMAT = "attncc-schedules"
REQUIRED = {"attncc": str, "workload": str, "target": str, "device": str, "dtype": str, "shape": list,
            "plans": list, "time_s": (int, float)}


class DatabaseWarning(UserWarning):
    """A record or file of the schedule database was ignored (corrupt, or from another version)."""


def user_path():
    """The user's database file."""
    return Path(os.environ.get("ATTNCC_TUNE_DB") or cachedir.root() / "tune" / "records.json")


def shipped_paths():
    """The JSON files shipped in attncc.schedules."""
    try:
        root = resources.files("attncc.schedules")
    except ModuleNotFoundError:
        return []
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".json"))


def pow2(n):
    return 1 << max(0, n - 1).bit_length()


def shape_bucket(shape):
    """(N, M) rounded up to powers of two; head dims exact."""
    B, H, N, M, d, dv = shape
    return (pow2(N), pow2(M), d, dv)


def workload_hash(spec, dims, target):
    """The IR hash of a spec, independent of its shapes: Program.digest of the canonical program
    with the dims, dtype and target blanked (those are keys of their own). A single head group
    (every head alike) drops its head list, which only counts H; per-head specs keep theirs; the
    default scale 1/sqrt(d) is blanked too (d is an exact key)."""
    from ..passes.canonicalize import canonicalize
    return program_hash(canonicalize(spec, dims, "float32", target), spec)


def program_hash(prog, spec):
    """workload_hash of an already canonical Program."""
    if len(prog.groups) == 1:
        prog = prog.with_group(0, heads=())
    if getattr(spec, "scale", None) is None:
        prog = prog.replace(scale=0.0)
    return prog.replace(dims=Dims(0, 0, 0, 0, 0, 0), dtype="", target="").digest()


def make_record(*, workload, target, device, dtype, dims, plans, time_s, **extra):
    shape = [dims.B, dims.H, dims.N, dims.M, dims.d, dims.dv]
    rec = {"attncc": __version__, "workload": workload, "target": target, "device": device, "dtype": dtype,
           "shape": shape, "bucket": list(shape_bucket(shape)),
           "plans": [json.loads(p.to_json()) for p in plans], "time_s": float(time_s),
           "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    rec.update(extra)
    return rec


def check_record(rec):
    """Why a record cannot be trusted (a string), or None; its plans parse as TilePlans."""
    if not isinstance(rec, dict):
        return f"a record must be a JSON object, got {type(rec).__name__}"
    for key, typ in REQUIRED.items():
        if not isinstance(rec.get(key), typ) or isinstance(rec.get(key), bool):
            return f"field {key!r} is missing or not a {getattr(typ, '__name__', 'number')}: {rec.get(key)!r}"
    if len(rec["shape"]) != 6 or not all(isinstance(x, int) and x > 0 for x in rec["shape"]):
        return f"shape must be six positive ints [B, H, N, M, d, dv], got {rec['shape']!r}"
    if not rec["plans"]:
        return "plans is empty"
    try:
        for p in rec["plans"]:
            TilePlan.from_json(json.dumps(p))
    except (TypeError, ValueError) as e:
        return f"bad plan: {e}"
    if not (math.isfinite(rec["time_s"]) and rec["time_s"] > 0):
        return f"time_s must be a positive number, got {rec['time_s']!r}"
    return None


def exact_key(rec):
    return (rec["workload"], rec["target"], rec["device"], rec["dtype"], tuple(rec["shape"]))


def bucket_key(rec):
    return (rec["workload"], rec["target"], rec["device"], rec["dtype"], shape_bucket(rec["shape"]))


@dataclass(frozen=True)
class Hit:
    """A lookup's answer: the plans (one per head group), the record, and how it matched
    ("exact" or "bucket") in which file."""
    plans: tuple
    record: dict
    match: str
    path: Path


def _read(path, warn=True):
    """The records of a file ([] when it is absent); a corrupt file warns and reads as []."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return [], None
    try:
        data = json.loads(text.decode())      # bytes that are not UTF-8 are corrupt too (a ValueError)
        if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("records"), list)):
            raise ValueError(f'expected {{"format": "{FORMAT}", "records": [...]}}')
    except ValueError as e:
        if warn:
            warnings.warn(f"attncc: ignoring the schedule database {path}: it is corrupt ({e}); "
                          "the next tuning run moves it aside, or run `attncc db clear`", DatabaseWarning, stacklevel=4)
        return [], f"corrupt: {e}"
    return data["records"], None


class Database:
    """One JSON file of records. Reads are cached and refreshed when the file changes."""

    def __init__(self, path, readonly=False):
        self.path = Path(path)
        self.readonly = readonly
        self._stamp = None
        self._exact, self._bucket = {}, {}
        self.records, self.ignored = [], []

    def __repr__(self):
        return f"Database({str(self.path)!r}{', readonly' if self.readonly else ''})"

    def _load(self):
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return
        self._stamp = stamp
        raw, corrupt = _read(self.path)
        self.records, self.ignored = [], ([(None, corrupt)] if corrupt else [])
        self._exact, self._bucket = {}, {}
        old = []
        for rec in raw:
            why = check_record(rec)
            if why is None and rec["attncc"] != __version__:
                old.append(rec["attncc"])
                why = f"written by attncc {rec['attncc']}, this is {__version__}"
            if why:
                self.ignored.append((rec, why))
                continue
            self.records.append(rec)
            self._exact[exact_key(rec)] = rec
            self._bucket.setdefault(bucket_key(rec), []).append(rec)
        bad = [w for r, w in self.ignored if r is not None and not w.startswith("written by")]
        if bad:
            warnings.warn(f"attncc: ignoring {len(bad)} corrupt record(s) in {self.path}: {bad[0]}",
                          DatabaseWarning, stacklevel=4)
        if old:
            warnings.warn(f"attncc: ignoring {len(old)} record(s) in {self.path} written by attncc "
                          f"{', '.join(sorted(set(old)))} (this is {__version__}); retune with `attncc tune` "
                          "or remove them with `attncc db clear`", DatabaseWarning, stacklevel=4)

    def lookup(self, workload, target, device, dtype, shape, match=("exact", "bucket")):
        """The best record for this workload, or None."""
        self._load()
        shape = tuple(shape)
        if "exact" in match:
            rec = self._exact.get((workload, target, device, dtype, shape))
            if rec is not None:
                return Hit(tuple(TilePlan(**p) for p in rec["plans"]), rec, "exact", self.path)
        if "bucket" in match:
            near = self._bucket.get((workload, target, device, dtype, shape_bucket(shape)))
            if near:
                # the nearest tuned shape: sequence lengths first, then batch x heads
                dist = lambda r: (abs(math.log2(r["shape"][2] / shape[2])) + abs(math.log2(r["shape"][3] / shape[3])),
                                  abs(math.log2(r["shape"][0] * r["shape"][1] / (shape[0] * shape[1]))))
                rec = min(near, key=dist)
                return Hit(tuple(TilePlan(**p) for p in rec["plans"]), rec, "bucket", self.path)
        return None

    def _write(self, records):
        text = json.dumps({"format": FORMAT, "records": records}, indent=1, sort_keys=True) + "\n"
        cachedir.write_atomic(self.path, text)      # readers see the old file or the new one

    def _modify(self, change):
        if self.readonly:
            raise PermissionError(f"{self} is read-only (shipped records); write to the user database")
        with cachedir.lock(self.path):
            raw, corrupt = _read(self.path, warn=False)
            if corrupt:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                os.replace(self.path, aside)
                warnings.warn(f"attncc: the schedule database {self.path} was corrupt ({corrupt}); moved it to "
                              f"{aside} and started a new one", DatabaseWarning, stacklevel=4)
            out = change(raw)
            self._write(raw)
        return out

    def add(self, record):
        """Store a record (replacing the one with the same exact key and version)."""
        why = check_record(record)
        if why:
            raise ValueError(f"refusing to store a bad tuning record: {why}")

        def change(raw):
            key = exact_key(record)
            raw[:] = [r for r in raw if check_record(r) is not None or r["attncc"] != record["attncc"]
                      or exact_key(r) != key] + [record]
        self._modify(change)

    def clear(self, keep=lambda rec: False):
        """Remove every record that `keep` rejects; the number removed."""
        def change(raw):
            before = len(raw)
            raw[:] = [r for r in raw if check_record(r) is None and keep(r)]
            return before - len(raw)
        if not self.path.exists():
            return 0
        return self._modify(change)


_SHIPPED = None
_USER = {}


def user_database():
    """The user's Database (one object per path, so its parsed records are reused)."""
    path = user_path()
    if path not in _USER:
        _USER[path] = Database(path)
    return _USER[path]


def shipped_databases():
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = [Database(p, readonly=True) for p in shipped_paths()]
    return _SHIPPED


def databases():
    """The user database, then the shipped ones (read-only)."""
    return [user_database(), *shipped_databases()]


def lookup(workload, target, device, dtype, shape, dbs=None):
    """Exact shape in any database (user first), then the shape bucket; None: use defaults."""
    dbs = databases() if dbs is None else dbs
    for match in ("exact", "bucket"):
        for db in dbs:
            hit = db.lookup(workload, target, device, dtype, shape, match=(match,))
            if hit is not None:
                return hit
    return None
