"""Pure-PyTorch reference kernels: the oracle every backend is tested against.

CSR follows SciPy naming and PyTorch weight layout: W has shape (n_rows, n_cols) = (out, in);
row r holds columns indices[indptr[r]:indptr[r+1]] with values values[indptr[r]:indptr[r+1]].
Indices may be int32, int64 or uint16; values fp32/fp16/bf16/fp64. Accumulation is fp32 (fp64
when the activations are fp64); results are written into `out` in out's dtype.
"""
from __future__ import annotations

import torch


def available() -> tuple[bool, str]:
    return True, "ok"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_ids(indptr: torch.Tensor) -> torch.Tensor:
    """Row index of every nonzero, shape (nnz,), int64."""
    counts = (indptr[1:] - indptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=indptr.device), counts)


def to_dense(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
             shape: tuple[int, int], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense (n_rows, n_cols) matrix of a CSR pattern (duplicates, if any, are summed)."""
    dtype = dtype or values.dtype
    dense = torch.zeros(shape, dtype=dtype, device=values.device)
    dense.index_put_((row_ids(indptr), indices.long()), values.to(dtype), accumulate=True)
    return dense


def spmm(x, indptr, indices, values, bias, relu, out):
    """out (B, N) = x (B, K) @ W.T + bias, W CSR of shape (N, K); ReLU applied when relu."""
    acc = accumulation_dtype(x.dtype)
    w = to_dense(indptr, indices, values, (out.shape[1], x.shape[1]), acc)
    y = x.to(acc) @ w.T
    if bias is not None:
        y = y + bias.to(acc)
    if relu:
        y = torch.relu(y)
    out.copy_(y)
    return out


def spmm_t(dy, t_indptr, t_indices, t_values, out):
    """out (B, K) = dy (B, N) @ W, given W^T as CSR of shape (K, N)."""
    return spmm(dy, t_indptr, t_indices, t_values, None, False, out)


def sddmm(dy, x, indptr, indices, out):
    """out (nnz,) = (dy^T @ x)[row, col] at each nonzero of W (N, K); dy (B, N), x (B, K)."""
    acc = accumulation_dtype(x.dtype)
    rows = row_ids(indptr)
    cols = indices.long()
    # Gather the two B-vectors of each nonzero and reduce over the batch: no dense N x K product.
    vals = (dy.to(acc).index_select(1, rows) * x.to(acc).index_select(1, cols)).sum(dim=0)
    out.copy_(vals)
    return out
