"""Every public name of DESIGN.md exists, is documented, and works end to end; explain();
the command line."""
import subprocess
import sys

import pytest
import torch

import attncc as ac
from attncc.ir.program import Dims

from oracle import make_inputs

PUBLIC = ["full", "causal", "sliding_window", "dilated", "window2d", "neighborhood2d", "axial", "stripes",
          "routing", "block_sparse", "mask", "per_head", "rel_pos_bias", "alibi", "softcap", "score_mod",
          "softmax", "sigmoid", "linear", "decay2d", "clipped", "Attention", "compile", "reference"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_exists_and_is_documented(name):
    obj = getattr(ac, name)
    assert callable(obj)
    assert obj.__doc__ and len(obj.__doc__.strip()) > 20, f"ac.{name} needs a docstring"


def test_kernel_modules_and_swap_are_documented():
    for obj in (ac.Kernel, ac.Kernel.explain, ac.TilePlan, ac.nn.MultiheadAttention, ac.swap):
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20


def test_compile_auto_picks_tvm_on_cpu_and_says_so():
    kern = ac.compile(ac.Attention(ac.causal()))
    assert kern.backend == "tvm"
    q, k, v = make_inputs(Dims(1, 2, 32, 32, 8, 8))
    torch.testing.assert_close(kern(q, k, v), ac.reference(ac.Attention(ac.causal()))(q, k, v))
    text = kern.explain(file=None)
    assert "backend: tvm (asked: 'auto')" in text


def test_auto_falls_back_to_the_reference_visibly():
    spec = ac.Attention(ac.routing((4, 4), (2, 2), 1) & ac.causal())     # routing composed: no generated kernel
    kern = ac.compile(spec)
    q, k, v = make_inputs(Dims(1, 2, 16, 16, 8, 8))
    with pytest.warns(UserWarning, match="backend='auto' runs the eager reference for this spec"):
        out = kern(q, k, v)
    torch.testing.assert_close(out, ac.reference(spec)(q, k, v))


def test_explain_prints_every_pass_the_plan_and_the_cost(capsys):
    spec = ac.Attention(ac.window2d((8, 8), (4, 4), (2, 2)) & ac.causal(), score_mods=ac.alibi())
    kern = ac.reference(spec)
    q, k, v = make_inputs(Dims(1, 2, 64, 64, 8, 8))
    kern(q, k, v)
    text = kern.explain()
    assert text == capsys.readouterr().out.rstrip("\n")
    for name in ("canonicalize", "gather", "classify_blocks", "simplify_masks", "plan", "cost"):
        assert f"=== after {name}" in text
    assert "B=1 H=2 N=64 M=64 d=8" in text                      # the last call's shapes
    assert "gather window2d: G=4 Lq=16 Lk=16" in text
    assert "plan TilePlan(block_m=16, block_n=16" in text
    assert "flops    =" in text and "bytes    =" in text
    # without a call it explains a default shape for the pattern
    assert "N=3136" in ac.reference(ac.Attention(ac.window2d((56, 56), (7, 7)))).explain(file=None)


def test_kernel_specialises_per_shape_and_caches_lowering():
    kern = ac.reference(ac.Attention(ac.sliding_window(4)))
    for n in (16, 24, 16):
        q, k, v = make_inputs(Dims(1, 1, n, n, 8, 8))
        kern(q, k, v)
    assert len(kern._lowered) == 2


def test_cli_demo_swaps_a_model_and_prints_the_catalogue_table():
    res = subprocess.run([sys.executable, "-m", "attncc", "demo", "--models", "vit", "--batch", "1", "--rounds", "1",
                          "--only", "causal", "swin_shifted", "biformer_routing", "linear_causal"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "ac.swap replaced 12 modules (torch.nn.MultiheadAttention)" in out and "outputs equal" in out
    layers = [l for l in out.splitlines() if l.startswith("| layers.")]
    assert len(layers) == 12 and all(float(l.split("|")[2]) > 0 and float(l.split("|")[3]) > 0 for l in layers)
    assert "| **end to end** |" in out
    train = [l for l in out.splitlines() if l.startswith("| ViT-B-sized")]
    assert len(train) == 1 and "## Training step before and after ac.swap" in out
    assert float(train[0].split("|")[5]) <= 1e-4            # the swapped model's parameter gradients
    head = "| pattern | family | shape | density | backend | first call s (compile) | attncc ms | eager ms"
    assert head in out
    rows = [l for l in out.splitlines() if l.startswith("| ") and l.split("|")[1].strip() in
            ("causal", "swin_shifted", "biformer_routing", "linear_causal")]
    assert [r.split("|")[1].strip() for r in rows] == ["causal", "swin_shifted", "biformer_routing", "linear_causal"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert cells[4] == "tvm" and cells[-1] == "ok" and float(cells[11]) < 1e-5
    assert "12/12 compiling: layers.11.self_attn" in res.stderr            # the progress bar
    assert "4/4 compiling and timing linear_causal" in res.stderr


def test_cli_catalogue_and_explain():
    res = subprocess.run([sys.executable, "-m", "attncc", "catalogue"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "swin_shifted" in res.stdout and "window2d(grid=(28, 28)" in res.stdout
    res = subprocess.run([sys.executable, "-m", "attncc", "explain", "neighborhood"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "gather neighborhood2d" in res.stdout and "(keys per query)" in res.stdout
