"""Property-based: random CSR patterns through every available backend's spmm / spmm_t / sddmm,
against SciPy. Patterns include empty rows and columns, nnz = 0, and n_cols = 65,536 with uint16
indices (the uint16 boundary: column 65,535 is the largest id that fits).

The Triton backend runs under TRITON_INTERPRET=1 without a GPU (conftest sets it); the
interpreter is slow, so its examples are few and small."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lth_sparse.sparse import ops
from tests.helpers import TOL

UINT16_COLS = 65536


@st.composite
def csr_patterns(draw, max_rows=8, wide=True):
    """(n_rows, n_cols, indptr int32, indices, values float64) of a random CSR matrix."""
    n_rows = draw(st.integers(1, max_rows))
    small = st.integers(1, 24)
    n_cols = draw(st.one_of(small, st.sampled_from([UINT16_COLS - 1, UINT16_COLS]))
                  if wide else small)
    row_cols = []
    for _ in range(n_rows):
        # empty rows are common on purpose; the largest column id is drawn often on wide matrices
        k = draw(st.integers(0, min(4, n_cols)))
        cols = draw(st.lists(st.one_of(st.integers(0, n_cols - 1), st.just(n_cols - 1)),
                             min_size=k, max_size=k, unique=True))
        row_cols.append(sorted(cols))
    counts = [len(c) for c in row_cols]
    indptr = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int32)
    flat = [c for cols in row_cols for c in cols]
    index_dtype = draw(st.sampled_from([torch.uint16, torch.int32, torch.int64]
                                       if n_cols <= UINT16_COLS else [torch.int32, torch.int64]))
    indices = torch.tensor(flat, dtype=torch.int64).to(index_dtype)
    seed = draw(st.integers(0, 2**31 - 1))
    values = torch.randn(len(flat), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    return n_rows, n_cols, indptr, indices, values


def _scipy(n_rows, n_cols, indptr, indices, values):
    return sp.csr_matrix((values.numpy(), indices.long().numpy(), indptr.long().numpy()),
                         shape=(n_rows, n_cols))


def _transpose(n_rows, n_cols, indptr, indices, values):
    """W^T as CSR (n_cols, n_rows) built by SciPy, independently of the package."""
    t = _scipy(n_rows, n_cols, indptr, indices, values).T.tocsr()
    t.sort_indices()
    return (torch.from_numpy(t.indptr.astype(np.int32)), torch.from_numpy(t.indices.astype(np.int32)),
            torch.from_numpy(t.data.copy()))


def _check_all_ops(backend, dtype, pattern, batch, seed):
    n_rows, n_cols, indptr, indices, values = pattern
    g = torch.Generator().manual_seed(seed)
    w = _scipy(n_rows, n_cols, indptr, indices, values.to(dtype).double())
    x = torch.randn(batch, n_cols, generator=g, dtype=torch.float64).to(dtype)
    dy = torch.randn(batch, n_rows, generator=g, dtype=torch.float64).to(dtype)
    tol = TOL[dtype]

    y = ops.spmm(x, indptr, indices, values.to(dtype), n_rows, backend=backend)
    want = (w @ x.double().numpy().T).T if batch else np.zeros((0, n_rows))
    torch.testing.assert_close(y.double(), torch.from_numpy(np.asarray(want)), **tol)

    t_indptr, t_indices, t_values = _transpose(n_rows, n_cols, indptr, indices, values.to(dtype).double())
    dx = ops.spmm_t(dy, t_indptr, t_indices, t_values.to(dtype), n_cols, backend=backend)
    want = (w.T @ dy.double().numpy().T).T if batch else np.zeros((0, n_cols))
    torch.testing.assert_close(dx.double(), torch.from_numpy(np.asarray(want)), **tol)

    dv = ops.sddmm(dy, x, indptr, indices, backend=backend)
    rows = np.repeat(np.arange(n_rows), np.diff(indptr.long().numpy()))
    cols = indices.long().numpy()
    want = (dy.double().numpy()[:, rows] * x.double().numpy()[:, cols]).sum(axis=0)
    torch.testing.assert_close(dv.double(), torch.from_numpy(want), **TOL[dv.dtype])


def _available(backend):
    ok, reason = ops.backend_status(backend)
    if not ok:
        pytest.skip(reason)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(pattern=csr_patterns(), batch=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_reference_and_cpu_match_scipy(backend, dtype, pattern, batch, seed):
    _available(backend)
    _check_all_ops(backend, dtype, pattern, batch, seed)


@pytest.mark.parametrize("op_pattern", ["narrow", "wide"])
@settings(max_examples=4, deadline=None,  # the interpreter compiles per new shape: slow, not hung
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_triton_matches_scipy(op_pattern, data, seed):
    _available("triton")
    if op_pattern == "narrow":
        pattern = data.draw(csr_patterns(max_rows=5, wide=False))
        _check_all_ops("triton", torch.float32, pattern, data.draw(st.integers(0, 2)), seed)
        return
    # uint16 boundary under Triton: spmm and sddmm over a 65,536-column pattern (spmm_t would
    # launch one program per column: too slow for the interpreter)
    n_rows, n_cols, indptr, indices, values = data.draw(csr_patterns(max_rows=3).filter(
        lambda p: p[1] >= UINT16_COLS - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n_cols, generator=g)
    dy = torch.randn(2, n_rows, generator=g)
    w = _scipy(n_rows, n_cols, indptr, indices, values.float().double())
    y = ops.spmm(x, indptr, indices, values.float(), n_rows, backend="triton")
    torch.testing.assert_close(y.double(), torch.from_numpy((w @ x.double().numpy().T).T),
                               **TOL[torch.float32])
    dv = ops.sddmm(dy, x, indptr, indices, backend="triton")
    rows = np.repeat(np.arange(n_rows), np.diff(indptr.long().numpy()))
    want = (dy.double().numpy()[:, rows] * x.double().numpy()[:, indices.long().numpy()]).sum(0)
    torch.testing.assert_close(dv.double(), torch.from_numpy(want), **TOL[torch.float32])
