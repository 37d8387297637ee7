"""Block sparsity with the layout passed at each call (`ac.block_sparse("name", block)`): the
key-tile tables come from the call's layout (no recompile), skip its empty blocks and sweep
its fully set blocks without a mask; every layout checked at the call with a clear error."""
import re
import warnings

import pytest
import torch

import attncc as ac
from attncc.codegen.tiles import RuntimeLayout
from attncc.ir.program import EMPTY, FULL, PARTIAL, Dims
from attncc.passes.pipeline import lower
from attncc.runtime.inputs import layouts

from oracle import check_against_oracle, make_inputs

pytestmark = pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")


def test_one_kernel_serves_every_layout_of_the_call():
    spec = ac.Attention(ac.block_sparse("layout", (64, 64)) & ac.causal())
    dims = Dims(1, 2, 256, 256, 32, 32)
    q, k, v = make_inputs(dims, torch.float32)
    kern = ac.compile(spec, backend="tvm")
    gen = torch.Generator().manual_seed(0)
    for density in (0.2, 0.7, 1.0):
        layout = torch.rand(2, 4, 4, generator=gen) < density
        check_against_oracle(spec, q, k, v, {"layout": layout}, backend="tvm")
        kern(q, k, v, layout=layout)
    assert len(kern._compiled) == 1                  # one compile, three layouts
    # the same unmodified tensor again: the same converted layout (tables reused); modified: new
    again = layouts(spec, {"layout": layout}, dims)["layout"]
    assert layouts(spec, {"layout": layout}, dims)["layout"] is again
    layout[0, 0, 0] = ~layout[0, 0, 0]
    changed = layouts(spec, {"layout": layout}, dims)["layout"]
    assert changed is not again and changed[0, 0, 0] != again[0, 0, 0]
    check_against_oracle(spec, q, k, v, {"layout": layout}, backend="tvm")


def test_tables_of_a_diagonal_layout_visit_one_full_tile_per_query_tile():
    spec = ac.Attention(ac.block_sparse("layout", (64, 64)))
    dims = Dims(1, 2, 256, 256, 32, 32)
    layout = layouts(spec, {"layout": torch.eye(4, dtype=torch.bool)}, dims)["layout"]
    for target in ("tvm", "sm_80"):
        grp = lower(spec, dims, "float32", target=target).program.groups[0]
        assert (grp.plan.block_m, grp.plan.block_n) == (64, 64)          # tiles are the layout's blocks
        rt = RuntimeLayout.of(lower(spec, dims, "float32", target=target).program, grp)
        assert rt == RuntimeLayout("layout", (64, 64), exact=True)
        cnt, lst, cls, acls = rt.tables(grp, layout, clean_first=True)
        assert cnt.tolist() == [[[1, 1]] * 4] * 2               # (tiles, FULL tiles swept first)
        assert lst[..., 0].tolist() == [[0, 1, 2, 3]] * 2 and (cls[..., 0] == FULL).all()
        assert set(acls.unique().tolist()) == {EMPTY, FULL}


def test_per_head_layout_and_causal_make_the_diagonal_partial():
    spec = ac.Attention(ac.block_sparse("layout", (64, 64)) & ac.causal())
    dims = Dims(1, 2, 128, 128, 16, 16)
    lay = torch.tensor([[[1, 0], [1, 1]], [[1, 0], [0, 1]]], dtype=torch.bool)
    prog = lower(spec, dims, "float32", target="tvm").program
    grp = prog.groups[0]
    cnt, lst, cls, _ = RuntimeLayout.of(prog, grp).tables(grp, layouts(spec, {"layout": lay}, dims)["layout"])
    assert cnt.tolist() == [[1, 2], [1, 1]]
    assert cls[0].tolist() == [[PARTIAL, EMPTY], [FULL, PARTIAL]] and lst[1, 1, 0].item() == 1


def test_a_layout_that_is_not_anded_in_stays_a_mask_read_per_pair():
    """block_sparse | causal: the layout cannot empty a tile, so no per-call tables; the
    kernels read it per pair on PARTIAL tiles (still exact)."""
    spec = ac.Attention(ac.block_sparse("layout", (32, 32)) | ac.causal())
    dims = Dims(1, 1, 96, 96, 16, 16)
    prog = lower(spec, dims, "float32", target="tvm").program
    assert RuntimeLayout.of(prog, prog.groups[0]) is None
    q, k, v = make_inputs(dims, torch.float32)
    check_against_oracle(spec, q, k, v, {"layout": torch.rand(3, 3) < 0.5}, backend="tvm")


@pytest.mark.parametrize("backend", ["tvm", "triton"])
def test_an_empty_layout_gives_zero_rows(backend):
    spec = ac.Attention(ac.block_sparse("layout", (32, 32)))
    q, k, v = make_inputs(Dims(1, 2, 64, 64, 16, 16), torch.float32)
    layout = torch.tensor([[True, True], [False, False]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, lse = ac.compile(spec, backend=backend)(q, k, v, return_lse=True, layout=layout)
    assert (out[:, :, 32:] == 0).all() and torch.isneginf(lse[:, :, 32:]).all()
    assert out[:, :, :32].abs().sum() > 0


@pytest.mark.parametrize("layout, err, msg", [
    (torch.ones(3, 4, dtype=torch.bool), ValueError,
     "block_sparse layout 'layout' has shape (3, 4) but N=64, M=64, H=2 with block (32, 32) need (2, 2) or "
     "(2, 2, 2); build the layout for the call's shapes"),
    (torch.ones(3, 2, 2, dtype=torch.bool), ValueError, "has shape (3, 2, 2)"),
    (torch.ones(2, 2), TypeError, "block_sparse layout 'layout' must hold bools (or 0/1 integers), got dtype "
                                  "torch.float32"),
    (torch.tensor([[0, 2], [1, 1]]), ValueError, "block_sparse layout 'layout' must hold bools (or 0/1 integers), "
                                                 "got the values [2]"),
], ids=["shape", "heads", "float", "values"])
def test_bad_layouts_are_named_at_the_call(layout, err, msg):
    spec = ac.Attention(ac.block_sparse("layout", (32, 32)))
    q, k, v = make_inputs(Dims(1, 2, 64, 64, 16, 16), torch.float32)
    with pytest.raises(err, match=re.escape(msg)):
        ac.compile(spec, backend="tvm")(q, k, v, layout=layout)


def test_missing_layout_and_bad_name():
    spec = ac.Attention(ac.block_sparse("layout", (32, 32)))
    q, k, v = make_inputs(Dims(1, 2, 64, 64, 16, 16), torch.float32)
    with pytest.raises(TypeError, match=re.escape("the spec reads tensors ['layout'] passed by keyword")):
        ac.compile(spec, backend="tvm")(q, k, v)
    with pytest.raises(ValueError, match="layout name must be a Python identifier"):
        ac.block_sparse("my layout", (32, 32))
