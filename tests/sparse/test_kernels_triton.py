"""Triton backend against the reference kernels.

Without CUDA these run on CPU tensors through Triton's interpreter (slow: shapes are tiny and
cover both launch paths: B <= SMALL_BATCH_MAX and the batch-tiled path). With CUDA the same
tests run on the GPU, plus the `cuda`-marked ones on larger shapes through the autotuners.
"""
import os

import torch

if not torch.cuda.is_available():
    # read when the @triton.jit functions are created: must precede the first Triton op
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from lth_sparse.errors import BackendUnavailableError  # noqa: E402
from lth_sparse.sparse import ops  # noqa: E402
from lth_sparse.sparse.kernels import reference  # noqa: E402
from tests.helpers import TOL, random_csr  # noqa: E402

triton_ok, triton_reason = ops.backend_status("triton")
pytestmark = pytest.mark.skipif(not triton_ok, reason=f"triton backend: {triton_reason}")

from lth_sparse.sparse.kernels import triton_backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SMALL = triton_backend.SMALL_BATCH_MAX
# batch sizes on both sides of the small-batch / batch-tiled switch
BATCHES = (1, 5, SMALL, SMALL + 1, 3 * SMALL + 2)


def _csr(n_rows, n_cols, density=0.3, *, index_dtype=torch.int32, dtype=torch.float32, **kw):
    return random_csr(n_rows, n_cols, density, index_dtype=index_dtype, value_dtype=dtype,
                      device=DEVICE, **kw)


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _check_spmm(x, ip, idx, val, n_out, bias=None, relu=False):
    out = ops.spmm(x, ip, idx, val, n_out, bias=bias, relu=relu, backend="triton",
                   out=_nan(x.shape[0], n_out, dtype=x.dtype))
    ref = reference.spmm(x, ip, idx, val, bias, relu, torch.empty_like(out))
    torch.testing.assert_close(out, ref, **TOL[x.dtype])


def _check_spmm_t(dy, tip, tidx, tval, n_in):
    out = ops.spmm_t(dy, tip, tidx, tval, n_in, backend="triton",
                     out=_nan(dy.shape[0], n_in, dtype=dy.dtype))
    ref = reference.spmm_t(dy, tip, tidx, tval, torch.empty_like(out))
    torch.testing.assert_close(out, ref, **TOL[dy.dtype])


def _check_sddmm(dy, x, ip, idx):
    out = ops.sddmm(dy, x, ip, idx, backend="triton", out=_nan(idx.numel(), dtype=torch.float32))
    ref = reference.sddmm(dy, x, ip, idx, torch.empty_like(out))
    # fp32 outputs of low-precision inputs: the inputs' tolerance applies
    torch.testing.assert_close(out, ref, **TOL[dy.dtype])


# ---------------------------------------------------------------------------- main coverage

@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spmm_matches_reference(dtype, batch):
    n, k = 13, 21  # odd sizes; some rows and columns empty on purpose
    ip, idx, val = _csr(n, k, dtype=dtype, empty_rows=3, empty_cols=4)
    x = _rand(batch, k, dtype=dtype)
    _check_spmm(x, ip, idx, val, n, bias=_rand(n, dtype=dtype), relu=True)
    ip, idx, val = _csr(n, k, dtype=dtype, index_dtype=torch.uint16, empty_rows=2, empty_cols=2)
    _check_spmm(x, ip, idx, val, n, bias=None, relu=False)


@pytest.mark.parametrize("batch", (1, SMALL + 1))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spmm_t_matches_reference(dtype, batch):
    n, k = 11, 19
    for index_dtype in (torch.int32, torch.uint16):
        tip, tidx, tval = _csr(k, n, dtype=dtype, index_dtype=index_dtype, empty_rows=2,
                               empty_cols=2)
        _check_spmm_t(_rand(batch, n, dtype=dtype), tip, tidx, tval, k)


@pytest.mark.parametrize("batch", (1, SMALL, SMALL + 3))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sddmm_matches_reference(dtype, batch):
    n, k = 9, 23
    index_dtype = torch.uint16 if batch == SMALL else torch.int32
    ip, idx, _ = _csr(n, k, dtype=dtype, index_dtype=index_dtype, empty_rows=2, empty_cols=3)
    _check_sddmm(_rand(batch, n, dtype=dtype), _rand(batch, k, dtype=dtype), ip, idx)


# ---------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("batch", (1, SMALL + 4))
def test_degenerate_shapes(batch):
    for n, k, density in ((1, 1, 1.0), (1, 1, 0.0), (6, 9, 0.0), (4, 1, 1.0), (1, 7, 1.0)):
        ip, idx, val = _csr(n, k, density)
        x, dy = _rand(batch, k), _rand(batch, n)
        _check_spmm(x, ip, idx, val, n, bias=_rand(n), relu=True)  # nnz 0: out = relu(bias)
        _check_spmm(x, ip, idx, val, n)
        tip, tidx, tval = _csr(k, n, density)
        _check_spmm_t(dy, tip, tidx, tval, k)
        _check_sddmm(dy, x, ip, idx)


def test_long_rows_span_several_blocks():
    # rows far longer than any BLOCK_NNZ, next to empty ones: the block loop and its tail mask
    n, k = 4, 150
    for batch in (3, SMALL + 2):
        ip, idx, val = _csr(n, k, 0.8, empty_rows=1)
        x = _rand(batch, k)
        _check_spmm(x, ip, idx, val, n, bias=_rand(n), relu=False)
        _check_sddmm(_rand(batch, n), x, ip, idx)
        # the same CSR read as a transposed weight (n_in=n, N=k): long rows in spmm_t too
        _check_spmm_t(x, ip, idx, val, n)


def test_uint16_indices_above_int16_range():
    # columns >= 32768 must be zero-extended, not sign-extended
    k = 40_000
    ip = torch.tensor([0, 2, 3, 3], dtype=torch.int32, device=DEVICE)
    idx = torch.tensor([5, 39_999, 32_768], dtype=torch.int64).to(torch.uint16).to(DEVICE)
    val = torch.tensor([1.5, -2.0, 0.5], device=DEVICE)
    for batch in (2, SMALL + 1):
        x, dy = _rand(batch, k), _rand(batch, 3)
        _check_spmm(x, ip, idx, val, 3)
        _check_sddmm(dy, x, ip, idx)


def test_noncontiguous_and_mixed_inputs():
    n, k = 10, 17
    ip, idx, val = _csr(n, k, empty_rows=2)
    # strided views of every CSR array and of x
    ip_s = torch.stack([ip, ip]).t().contiguous().t()[0]
    idx_s = torch.stack([idx, idx], 1)[:, 1]
    val_s = torch.stack([val, val], 1)[:, 0]
    assert not idx_s.is_contiguous() and not val_s.is_contiguous()
    for batch in (4, SMALL + 5):
        x = _rand(k, batch).t()
        _check_spmm(x, ip_s, idx_s, val_s, n, bias=_rand(2 * n)[::2], relu=True)
        _check_sddmm(_rand(n, batch).t(), x, ip_s, idx_s)
    # int64 indptr/indices and values in a different dtype from the activations
    _check_spmm(_rand(3, k, dtype=torch.bfloat16), ip.long(), idx.long(), val, n)


def test_row_order_is_longest_first_and_cached():
    ip = torch.tensor([0, 1, 4, 4, 6], dtype=torch.int32, device=DEVICE)
    order = triton_backend.row_order(ip)
    assert order.dtype == torch.int32
    assert order.tolist() == [1, 3, 0, 2]
    assert triton_backend.row_order(ip) is order
    ip[1:] = torch.tensor([3, 4, 4, 6], dtype=torch.int32)  # in place: version bump, new order
    assert triton_backend.row_order(ip).tolist() == [0, 3, 1, 2]


def test_float64_is_refused_with_a_clear_message():
    ip, idx, val = _csr(3, 4, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float64"):
        ops.spmm(_rand(2, 4, dtype=torch.float64), ip, idx, val, 3, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_unavailable_without_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, reason = triton_backend.available()
    assert not ok and "TRITON_INTERPRET" in reason


def test_import_lth_sparse_does_not_import_triton():
    # the backend module itself imports Triton only on the first op (available() may probe it)
    code = ("import sys, lth_sparse, lth_sparse.sparse.ops, lth_sparse.sparse.kernels.triton_backend; "
            "sys.exit('triton' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- GPU only

@pytest.mark.parametrize("batch", (1, 7, 16, 64, 257))
@pytest.mark.parametrize("index_dtype", (torch.int32, torch.uint16), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.cuda  # skipped without a GPU (tests/conftest.py)
def test_cuda_autotuned_paths(dtype, index_dtype, batch):
    n, k = 1000, 784  # LeNet-300-100 first layer scale, odd row count
    ip, idx, val = _csr(n, k, 0.1, dtype=dtype, index_dtype=index_dtype, empty_rows=17,
                        empty_cols=33)
    x = _rand(batch, k, dtype=dtype)
    _check_spmm(x, ip, idx, val, n, bias=_rand(n, dtype=dtype), relu=True)
    _check_spmm(x, ip, idx, val, n)
    tip, tidx, tval = _csr(k, n, 0.1, dtype=dtype, index_dtype=index_dtype)
    _check_spmm_t(_rand(batch, n, dtype=dtype), tip, tidx, tval, k)
    _check_sddmm(_rand(batch, n, dtype=dtype), x, ip, idx)


@pytest.mark.cuda  # skipped without a GPU (tests/conftest.py)
def test_cuda_benchmark_shape_bf16():
    # the benchmark's headline shape: 4096 x 4096 at 90% sparsity, bf16, uint16 indices
    n = k = 4096
    ip, idx, val = _csr(n, k, 0.1, dtype=torch.bfloat16, index_dtype=torch.uint16)
    for batch in (1, 16, 128):
        x = _rand(batch, k, dtype=torch.bfloat16)
        _check_spmm(x, ip, idx, val, n)
        # the second call hits the autotune and row-order caches and must agree
        a = ops.spmm(x, ip, idx, val, n, backend="triton")
        b = ops.spmm(x, ip, idx, val, n, backend="triton")
        torch.testing.assert_close(a, b, rtol=0, atol=0)
