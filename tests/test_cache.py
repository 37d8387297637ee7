"""attncc's caches heal themselves: a cached TVM library that is corrupt, truncated or foreign is
removed and rebuilt with one warning; processes compiling the same kernel at once all succeed
and leave one valid library; a corrupt Triton source or tuner records file is rewritten; and
`attncc cache info | clear` shows and empties the caches. Real compiles in fresh processes (a
process keeps the kernels it loaded in memory), each test in its own cache folder."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import attncc as ac
from attncc import cachedir, cli
from attncc.ir.plan import TilePlan
from attncc.ir.program import Dims
from attncc.tune import DatabaseWarning, user_database
from attncc.tune.db import make_record, user_path

# compile and run a small causal kernel; print its error against the reference and the warnings
SCRIPT = textwrap.dedent("""
    import json, warnings
    import torch, attncc as ac
    from attncc.codegen.tvm import build
    spec = ac.Attention(ac.causal())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ac.compile(spec, backend="tvm")(q, k, v)
    want = ac.compile(spec, backend="reference")(q, k, v)
    print(json.dumps({"err": (out - want).abs().max().item(),
                      "from_disk": [c.from_disk for c in build._MEMORY.values()],
                      "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
""")


def run_script(cache):
    env = {**os.environ, "ATTNCC_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def kernel_libraries(cache):
    return sorted(p for p in (cache / "tvm").glob("*.so") if not p.name.startswith("omp_launch_"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache folder holding the compiled causal kernel (one library)."""
    cache = tmp_path_factory.mktemp("built")
    got = result(run_script(cache))
    assert got["err"] < 1e-5 and got["warnings"] == [] and got["from_disk"] == [False]
    lib, = kernel_libraries(cache)
    assert cachedir.verify(lib) is None
    return cache


def another_machine(data):
    """The library as if built for another machine: its ELF header says AArch64 (e_machine 183)."""
    return data[:18] + (183).to_bytes(2, "little") + data[20:]


CORRUPTIONS = {
    # name: (new bytes of the library from the good ones, rewrite its checksum too, why in the warning)
    "garbage": (lambda b: os.urandom(len(b)), False, "do not match the checksum"),
    "empty": (lambda b: b"", False, "its 0 bytes do not match the checksum"),
    "half": (lambda b: b[:len(b) // 2], False, "do not match the checksum"),
    "no-checksum": (lambda b: b, None, "checksum file"),
    "another-machine": (another_machine, True, "fails to load"),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_a_corrupt_cached_kernel_is_rebuilt_with_one_warning(how, built, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built, cache)
    lib, = kernel_libraries(cache)
    change, checksum, why = CORRUPTIONS[how]
    data = change(lib.read_bytes())
    lib.write_bytes(data)
    digest = lib.with_name(lib.name + ".sha256")
    if checksum:            # a whole file whose checksum matches: only loading it can tell
        digest.write_text(hashlib.sha256(data).hexdigest() + "\n")
    elif checksum is None:
        digest.unlink()
    got = result(run_script(cache))
    assert got["err"] < 1e-5 and got["from_disk"] == [False]
    assert len(got["warnings"]) == 1, got["warnings"]
    msg = got["warnings"][0]
    assert msg.startswith("CacheWarning: attncc: the cached TVM kernel") and str(lib) in msg and why in msg
    assert "removed it and compiling the kernel again" in msg
    assert cachedir.verify(lib) is None and lib.read_bytes()[:4] == b"\x7fELF"
    assert kernel_libraries(cache) == [lib] and not list(cache.glob("tvm/*.tmp*"))


def test_four_processes_compiling_one_kernel_into_an_empty_cache(tmp_path):
    procs = [run_script(tmp_path) for _ in range(4)]
    got = [result(p) for p in procs]
    assert all(g["err"] < 1e-5 and g["warnings"] == [] for g in got)
    # one process compiled, the other three waited for its lock and loaded its library
    assert sorted(d for g in got for d in g["from_disk"]) == [False, True, True, True]
    lib, = kernel_libraries(tmp_path)
    assert cachedir.verify(lib) is None and lib.with_suffix(".py").is_file()
    assert not list(tmp_path.glob("tvm/*.tmp*"))


@pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")
def test_a_corrupt_triton_source_is_rewritten_with_one_warning(tmp_path, monkeypatch):
    from attncc.codegen.triton import backend
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    spec = ac.Attention(ac.causal())
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    want = ac.compile(spec, backend="reference")(q, k, v)
    torch.testing.assert_close(ac.compile(spec, backend="triton")(q, k, v), want)
    src, = tmp_path.glob("triton/attncc_triton_*.py")
    good = src.read_bytes()
    for bad in (good[:len(good) // 2], b"\xff\xfe garbage \x00"):
        src.write_bytes(bad)
        monkeypatch.setattr(backend, "_MODULES", {})     # as in a fresh process: the file is read again
        with pytest.warns(cachedir.CacheWarning) as caught:
            out = ac.compile(spec, backend="triton")(q, k, v)
        msg, = [str(w.message) for w in caught if w.category is cachedir.CacheWarning]
        assert str(src) in msg and f"({len(bad)} bytes, expected {len(good)}: truncated or overwritten)" in msg
        torch.testing.assert_close(out, want)
        assert src.read_bytes() == good


@pytest.mark.parametrize("bad", [b"", b"\xff\xfe\x00 not text"], ids=["empty", "not-utf8"])
def test_a_corrupt_user_records_file_is_ignored_then_replaced(bad, tmp_path, monkeypatch):
    """The user's records file under the cache root (no ATTNCC_TUNE_DB), empty or not even text."""
    monkeypatch.delenv("ATTNCC_TUNE_DB", raising=False)
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    path = tmp_path / "tune" / "records.json"
    assert user_path() == path
    path.parent.mkdir()
    path.write_bytes(bad)
    db = user_database()
    rec = make_record(workload="w", target="tvm", device="cpu:test", dtype="float32", dims=Dims(1, 2, 64, 64, 16, 16),
                      plans=[TilePlan(block_m=32, block_n=32)], time_s=1e-3)
    with pytest.warns(DatabaseWarning, match="it is corrupt") as caught:
        assert db.lookup("w", "tvm", "cpu:test", "float32", rec["shape"]) is None
    msg, = [str(w.message) for w in caught if w.category is DatabaseWarning]
    assert str(path) in msg
    with pytest.warns(DatabaseWarning, match="moved it to"):
        db.add(rec)
    assert [p.read_bytes() for p in path.parent.glob("records.json.corrupt-*")] == [bad]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert db.lookup("w", "tvm", "cpu:test", "float32", rec["shape"]).match == "exact"


def test_cli_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ATTNCC_TUNE_DB", raising=False)
    cachedir.write_atomic(cachedir.folder("tvm") / "a.so", b"x" * 1000)
    cachedir.write_atomic(cachedir.folder("tvm") / "a.py", "y" * 24)
    cachedir.write_atomic(cachedir.folder("triton") / "attncc_triton_b.py", "z" * 100)
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"attncc cache: {tmp_path} (ATTNCC_CACHE_DIR moves it)" in out
    assert f"tvm     {tmp_path / 'tvm'}: 2 file(s), 0.0 MiB (1024 bytes)" in out
    assert f"triton  {tmp_path / 'triton'}: 1 file(s), 0.0 MiB (100 bytes)" in out
    assert f"tune    {tmp_path / 'tune'}: 0 file(s), 0.0 MiB (0 bytes)" in out
    assert cli.main(["cache", "clear", "--triton"]) == 0
    assert f"triton  {tmp_path / 'triton'}: removed 1 file(s)" in capsys.readouterr().out
    assert not list((tmp_path / "triton").iterdir()) and len(list((tmp_path / "tvm").iterdir())) == 2
    assert cli.main(["cache", "clear"]) == 0
    assert f"tvm     {tmp_path / 'tvm'}: removed 2 file(s)" in capsys.readouterr().out
    assert [n for _, _, n, _ in cachedir.usage()] == [0, 0, 0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CACHE_HOME is the Linux convention")
def test_without_attncc_cache_dir_the_root_is_the_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNCC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cachedir.root() == tmp_path / "attncc"          # where attncc kept it before platformdirs
    assert cachedir.folder("tune") == tmp_path / "attncc" / "tune" and cachedir.folder("tune").is_dir()
    assert user_path() == tmp_path / "attncc" / "tune" / "records.json"
