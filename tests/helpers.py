"""Shared test helpers: the tolerance table (the package's own), and random CSR matrices with
awkward structure."""
from __future__ import annotations

import os

import torch

from lth_sparse.sparse.tolerances import PRECISION_NAMES, TRAINING_TOLERANCES, tolerance

# The package's one tolerance table (lth_sparse.sparse.tolerances), as assert_close kwargs per
# dtype; no magic atol inside a test.
TOL = {dtype: tolerance(dtype).as_kwargs() for dtype in PRECISION_NAMES}

# The C runtime (csrc/runtime) against Python on one fp32 ticket: the same fp32 arithmetic in
# another summation order, so logits agree far more tightly than TOL[float32].
RUNTIME_ATOL = 1e-5


def fresh_seed() -> int:
    """A new seed per call (fresh random data every run) that, unlike torch.seed(), does not
    reseed the global generator other tests draw from."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def random_csr(n_rows: int, n_cols: int, density: float, *, empty_rows: int = 0,
               empty_cols: int = 0, index_dtype=torch.int32, value_dtype=torch.float32,
               generator: torch.Generator | None = None, device="cpu"):
    """(indptr int32, indices, values) of a random (n_rows, n_cols) CSR matrix.

    `empty_rows` / `empty_cols` rows and columns (chosen at random) hold no nonzeros on
    purpose; indices are sorted and unique within each row; values are never zero.
    """
    g = generator or torch.Generator().manual_seed(fresh_seed())
    keep = torch.rand(n_rows, n_cols, generator=g) < density
    if empty_rows:
        keep[torch.randperm(n_rows, generator=g)[:empty_rows]] = False
    if empty_cols:
        keep[:, torch.randperm(n_cols, generator=g)[:empty_cols]] = False
    rows, cols = keep.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=n_rows)
    indptr = torch.zeros(n_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    values = torch.randn(rows.numel(), generator=g, dtype=torch.float64)
    values = values + torch.sign(values) * 0.1  # keep away from zero
    return (indptr.to(torch.int32).to(device), cols.to(index_dtype).to(device),
            values.to(value_dtype).to(device))


def dense_of(indptr, indices, values, shape, dtype=torch.float64):
    """Dense matrix of a CSR triple, built independently of the package's own code."""
    w = torch.zeros(shape, dtype=dtype)
    ip = indptr.cpu().long().tolist()
    idx = indices.cpu().long().tolist()
    val = values.cpu().to(dtype)
    for r in range(shape[0]):
        for j in range(ip[r], ip[r + 1]):
            w[r, idx[j]] += val[j]
    return w


# The fused trainer's tolerances (lth_sparse.sparse.tolerances.TRAINING_TOLERANCES, where each
# is explained), as assert_close kwargs by check name.
TRAIN_TOL = {name: tol.as_kwargs() for name, tol in TRAINING_TOLERANCES.items()}
IMP_ACC_TOL = TRAINING_TOLERANCES["imp_accuracy"].atol
