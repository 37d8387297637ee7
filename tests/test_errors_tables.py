"""Captured tensors are checked against what the spec reads (the reads pass, runtime/inputs.py)
on every backend, before any kernel runs: the extent each index reaches over the pairs the
pattern computes (interval bounds, made exact where they are loose), the dtype each use needs,
the number of dims and the device. Kernels clamp table reads, so without this a table one row
short gave a silently wrong answer."""
import re

import pytest
import torch

import attncc as ac
from oracle import check_against_oracle

pytestmark = pytest.mark.filterwarnings("ignore::attncc.runtime.kernel.InterpreterWarning")
BACKENDS = ["reference", "tvm", "triton"]


def qkv(B=1, H=2, N=64, d=16):
    return tuple(torch.randn(B, H, N, d) for _ in range(3))


def swin(shift=(0, 0)):
    return ac.Attention(ac.window2d((8, 8), (4, 4), shift), score_mods=(ac.rel_pos_bias("rpb", (4, 4)),))


def call(spec, backend, *args, **tensors):
    return ac.compile(spec, backend=backend)(*args, **tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rel_pos_bias_one_row_short(backend):
    want = ("captured tensor 'rpb' of shape (48, 2) is too small for rel_pos_bias('rpb', window=(4, 4)) at B=1, "
            "H=2, N=64, M=64: dim 0 needs at least 49 entries (its index spans 0..48, read as rpb[")
    with pytest.raises(ValueError, match=re.escape(want)) as err:
        call(swin(), backend, *qkv(), rpb=torch.randn(48, 2))
    assert str(err.value).endswith("pass a tensor of shape at least (49, 2) (a larger one is fine)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rel_pos_bias_too_few_heads(backend):
    with pytest.raises(ValueError, match=re.escape("dim 1 needs at least 2 entries (its index spans 0..1")):
        call(swin((2, 2)), backend, *qkv(), rpb=torch.randn(49, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_larger_table_and_any_layout_are_fine(backend):
    """More rows or heads than read, a transposed view and an expanded one: correct answers."""
    q, k, v = qkv()
    rpb = torch.randn(60, 5)
    for table in (rpb, rpb.t().contiguous().t(), rpb[:, :1].expand(60, 5)):
        check_against_oracle(swin((2, 2)), q, k, v, {"rpb": table}, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_table_read_as_a_score_term(backend):
    with pytest.raises(TypeError, match=re.escape(
            "captured tensor 'rpb' must have a floating-point dtype, got torch.int64: its values are added to "
            "the scores or weights; cast it with .float() (an integer table here is often an index, e.g. Swin's "
            "relative_position_index, passed for the bias table)")):
        call(swin(), backend, *qkv(), rpb=torch.randint(0, 3, (49, 2)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_table_read_as_an_index(backend):
    spec = ac.Attention(ac.causal(), score_mods=(ac.score_mod(lambda s, b, h, q, k, seg, sb: s + sb[h, seg[b, q]]),))
    with pytest.raises(TypeError, match=re.escape("captured tensor 'seg' must have an integer dtype, got "
                                                  "torch.float32: its values index another tensor; cast it with "
                                                  ".long() (read as seg[b, i] by score_mod(")):
        call(spec, backend, *qkv(), seg=torch.zeros(1, 64), sb=torch.randn(2, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_table_values_decide_the_extent(backend):
    """seg's values index sb: sb needs max(seg) + 1 columns, checked at every call."""
    spec = ac.Attention(ac.causal(), score_mods=(ac.score_mod(lambda s, b, h, q, k, seg, sb: s + sb[h, seg[b, q]]),))
    q, k, v = qkv()
    seg = torch.randint(0, 4, (1, 64))
    check_against_oracle(spec, q, k, v, {"seg": seg, "sb": torch.randn(2, 4)}, backend=backend)
    seg[0, 10] = 4                      # the same shapes, one value further
    with pytest.raises(ValueError, match=re.escape("captured tensor 'sb' of shape (2, 4) is too small")):
        call(spec, backend, q, k, v, seg=seg, sb=torch.randn(2, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_loose_interval_bound_is_made_exact(backend):
    """bias[h, q - k] under a causal window of 10: the interval over all pairs is -299..299,
    the pairs the pattern computes read 0..10 only, so 11 columns are enough and 10 are not."""
    spec = ac.Attention(ac.sliding_window(10, 0),
                        score_mods=(ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q - k]),))
    q, k, v = qkv(N=300)
    check_against_oracle(spec, q, k, v, {"bias": torch.randn(2, 11)}, backend=backend)
    with pytest.raises(ValueError, match=re.escape("dim 1 needs at least 11 entries (its index spans 0..10, read "
                                                   "as bias[h, i - j])")):
        call(spec, backend, q, k, v, bias=torch.randn(2, 10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_index(backend):
    spec = ac.Attention(ac.full(), score_mods=(ac.score_mod(lambda s, b, h, q, k, bias: s + bias[h, q - k]),))
    with pytest.raises(ValueError, match=re.escape("captured tensor 'bias' is read at negative indices: its index on "
                                                   "dim 1 spans -63..63")):
        call(spec, backend, *qkv(), bias=torch.randn(2, 200))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_table_too_short(backend):
    spec = ac.Attention(ac.mask(lambda b, h, q, k, doc: doc[b, q] == doc[b, k]))
    with pytest.raises(ValueError, match=re.escape("captured tensor 'doc' of shape (1, 63) is too small for "
                                                   "mask(Eq(doc[b, i], doc[b, j])) at B=1, H=2, N=64, M=64: dim 1 "
                                                   "needs at least 64 entries")):
        call(spec, backend, *qkv(), doc=torch.zeros(1, 63, dtype=torch.long))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_number_of_dims(backend):
    with pytest.raises(ValueError, match=re.escape("captured tensor 'rpb' has 3 dims (49, 2, 1) but rel_pos_bias("
                                                   "'rpb', window=(4, 4)) reads it with 2 indices")):
        call(swin(), backend, *qkv(), rpb=torch.randn(49, 2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_table_on_another_device(backend):
    with pytest.raises(ValueError, match=re.escape("captured tensor 'rpb' is on meta but q is on cpu")):
        call(swin(), backend, *qkv(), rpb=torch.randn(49, 2, device="meta"))


def test_integer_values_beyond_int32():
    spec = ac.Attention(ac.mask(lambda b, h, q, k, doc: doc[b, q] == doc[b, k]))
    doc = torch.zeros(1, 64, dtype=torch.long)
    doc[0, 3] = 1 << 40
    with pytest.raises(ValueError, match=re.escape(f"captured tensor 'doc' holds values 0..{1 << 40}, beyond int32")):
        call(spec, "tvm", *qkv(), doc=doc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decay_gamma_per_head(backend):
    spec = ac.Attention(ac.window2d((8, 8), (4, 4)), post_mods=(ac.decay2d((8, 8)),))
    with pytest.raises(ValueError, match=re.escape("captured tensor 'gamma' of shape (1,) is too small for "
                                                   "decay2d(grid=(8, 8), gamma='gamma')")):
        call(spec, backend, *qkv(), gamma=torch.rand(1))


@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_routed_key_table_named_like_a_kernel_variable(backend):
    """A routed kernel with a key-side table called `kb` (the TVM kernels' key-block loop
    variable): the generated code prefixes every table, so the name cannot shadow anything."""
    spec = ac.Attention(ac.routing((8, 8), (2, 2), 2), score_mods=(ac.score_mod(lambda s, b, h, q, k, kb: s + kb[h, k]),))
    q, k, v = qkv()
    check_against_oracle(spec, q, k, v, {"kb": torch.randn(2, 64)}, backend=backend)
    with pytest.raises(ValueError, match=re.escape("captured tensor 'kb' of shape (2, 63) is too small")):
        call(spec, backend, q, k, v, kb=torch.randn(2, 63))


def test_sparse_table():
    with pytest.raises(TypeError, match=re.escape("captured tensor 'rpb' is a torch.sparse_coo tensor; attncc reads "
                                                  "dense (strided) tensors: pass rpb.to_dense()")):
        call(swin(), "reference", *qkv(), rpb=torch.randn(49, 2).to_sparse())


def test_sparse_query():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=re.escape("q is a torch.sparse_coo tensor; attncc reads dense (strided) "
                                                  "tensors: pass q.to_dense()")):
        call(swin(), "reference", q.to_sparse(), k, v, rpb=torch.randn(49, 2))


@pytest.mark.parametrize("backend", ["reference", "tvm"])
def test_index_table_itself_too_short(backend):
    """The inner table is checked first: the error names seg, not a failure evaluating sb's index."""
    spec = ac.Attention(ac.causal(), score_mods=(ac.score_mod(lambda s, b, h, q, k, seg, sb: s + sb[h, seg[b, q]]),))
    with pytest.raises(ValueError, match=re.escape("captured tensor 'seg' of shape (1, 63) is too small")):
        call(spec, backend, *qkv(), seg=torch.zeros(1, 63, dtype=torch.long), sb=torch.randn(2, 4))
