"""Triton backend: launch wrappers for the CSR kernels in `triton_kernels`.

Importing this module does not import Triton; the kernels module is imported on the first op,
so `import lth_sparse` (and even `available()`) stays cheap. Runs on CUDA tensors, or on CPU
tensors through Triton's interpreter when TRITON_INTERPRET=1 was set before the first op.

Arguments arrive checked from `lth_sparse.sparse.ops` with `out` preallocated; these functions trust
them, except for what only this backend cannot do (float64, tensors of 2**31+ elements), which
raises a clear error.

Paths (see `triton_kernels` for the kernels themselves):
  B <= SMALL_BATCH_MAX  one batch tile (BLOCK_B = next_pow2(B)), x read row-major: the CSR
                        arrays are streamed once and dominate the bytes moved.
  B >  SMALL_BATCH_MAX  batch tiled by the autotuned BLOCK_B and x transposed once (B*K copy) so
                        each gathered column's BLOCK_B activations are one contiguous load.
"""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict

import torch

from lth_sparse.errors import BackendUnavailableError

SMALL_BATCH_MAX = 16
_INT32_LIMIT = 2**31
_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> tuple[bool, str]:
    """(True, "ok") when Triton imports and there is a CUDA GPU or TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401  (the import itself is the probe)
    except ImportError as exc:
        return False, f"triton is not installed ({exc}); install it with `pip install triton`"
    if torch.cuda.is_available() or _interpret_requested():
        return True, "ok"
    return False, ("no CUDA GPU visible; set TRITON_INTERPRET=1 (before the first Triton op) to "
                   "run the Triton kernels on the CPU through Triton's interpreter")


def _kernels():
    from lth_sparse.sparse.kernels import triton_kernels
    return triton_kernels


def _require_supported(op: str, tensors: dict) -> None:
    """What only this backend cannot do (float64, 2**31+ elements, CPU tensors without the
    interpreter) raises here; CSR contents were validated where the pattern entered."""
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype == torch.float64:
            raise BackendUnavailableError(
                f"backend 'triton' does not support float64 ({op}: {name} is float64); use "
                "backend='reference' or 'cpu' for float64, or cast to float32/float16/bfloat16")
        if t.is_floating_point() and t.dtype not in _SUPPORTED:
            raise BackendUnavailableError(
                f"backend 'triton' supports float32, float16 and bfloat16 ({op}: {name} is "
                f"{t.dtype}); cast it or use backend='reference'")
        if t.numel() >= _INT32_LIMIT:
            raise BackendUnavailableError(
                f"backend 'triton' uses 32-bit offsets ({op}: {name} has {t.numel()} elements, "
                f"limit {_INT32_LIMIT - 1}); split the batch or use backend='reference'")
    if not torch.cuda.is_available() or any(
            t is not None and t.device.type != "cuda" for t in tensors.values()):
        if not _interpret_requested():
            raise BackendUnavailableError(
                f"backend 'triton' ({op}) needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        if not _kernels().INTERPRETED:
            raise BackendUnavailableError(
                "TRITON_INTERPRET=1 was set after the Triton kernels were compiled for the GPU; "
                "set it before the first Triton op (e.g. at the top of the script)")


# ---------------------------------------------------------------------------- row schedule

_ROW_ORDER_CACHE: OrderedDict = OrderedDict()
_ROW_ORDER_CACHE_SIZE = 32


def row_order(indptr: torch.Tensor) -> torch.Tensor:
    """Rows sorted by nonzero count, longest first, int32 (N,), cached per indptr.

    Programs take rows in this order, so the ones resident together do similar work and the
    long rows start first. Cached per indptr tensor object and version (recomputing costs a sort
    and a launch per call); a weak reference confirms the hit is the same live tensor, so memory
    freed and reused by another indptr never returns a stale order.
    """
    key = (indptr.data_ptr(), indptr._version, indptr.numel(), str(indptr.device))
    hit = _ROW_ORDER_CACHE.get(key)
    if hit is not None and hit[0]() is indptr:
        _ROW_ORDER_CACHE.move_to_end(key)
        return hit[1]
    counts = indptr[1:] - indptr[:-1]
    order = torch.argsort(counts, descending=True, stable=True).to(torch.int32)
    _ROW_ORDER_CACHE[key] = (weakref.ref(indptr), order)
    while len(_ROW_ORDER_CACHE) > _ROW_ORDER_CACHE_SIZE:
        _ROW_ORDER_CACHE.popitem(last=False)
    return order


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _batch_major(t: torch.Tensor) -> torch.Tensor:
    """(B, C) view of a (C, B_pad) copy of t, B_pad = B rounded up to 16.

    The BLOCK_B values of one column are then contiguous, and the column stride is a multiple
    of 16, which Triton specialises on: the gathers become vector loads.
    """
    b, c = t.shape
    buf = torch.empty((c, _cdiv(b, 16) * 16), dtype=t.dtype, device=t.device)
    buf[:, b:].zero_()  # the pad may be read (spmm: B_LOAD) but is never stored
    buf[:, :b].copy_(t.t())
    return buf[:, :b].t()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _nnz_bucket(nnz: int, n_rows: int) -> int:
    return _next_pow2(max(1, nnz // max(1, n_rows)))


# ---------------------------------------------------------------------------- ops

def _spmm_launch(x, indptr, indices, values, bias, relu, out):
    k = _kernels()
    B, K = x.shape
    N = out.shape[1]
    if out.numel() == 0:
        return out
    indptr, indices, values = indptr.contiguous(), indices.contiguous(), values.contiguous()
    bias_arg = bias.contiguous() if bias is not None else out  # dummy pointer, never read
    order = row_order(indptr)
    common = dict(indptr_ptr=indptr, indices_ptr=indices, values_ptr=values, bias_ptr=bias_arg,
                  row_order_ptr=order, out_ptr=out, B=B, N=N, K=K,
                  stride_ob=out.stride(0), stride_on=out.stride(1),
                  batch_bucket=_next_pow2(B), nnz_bucket=_nnz_bucket(indices.numel(), N),
                  HAS_BIAS=bias is not None, RELU=bool(relu))
    if B <= SMALL_BATCH_MAX:
        block_b = _next_pow2(B)

        def grid(meta):
            return (1, _cdiv(N, meta["ROWS_PER_PROG"]))

        k.spmm_small_batch[grid](x_ptr=x, B_LOAD=B, stride_xb=x.stride(0),
                                 stride_xk=x.stride(1), BLOCK_B=block_b, **common)
    else:
        xt = _batch_major(x)

        def grid(meta):
            return (_cdiv(B, meta["BLOCK_B"]), _cdiv(N, meta["ROWS_PER_PROG"]))

        k.spmm_batched[grid](x_ptr=xt, B_LOAD=xt.stride(1), stride_xb=xt.stride(0),
                             stride_xk=xt.stride(1), **common)
    return out


def spmm(x, indptr, indices, values, bias, relu, out):
    """out (B, N) = x (B, K) @ W.T (+ bias) (ReLU), W CSR (N, K); fp32 accumulation.

    x, values, bias, out: fp32/fp16/bf16 (values may differ from x); indices int32/int64/uint16;
    indptr int32/int64. Returns out.
    """
    _require_supported("spmm", dict(x=x, indptr=indptr, indices=indices, values=values,
                                    bias=bias, out=out))
    return _spmm_launch(x, indptr, indices, values, bias, relu, out)


def spmm_t(dy, t_indptr, t_indices, t_values, out):
    """out (B, K) = dy (B, N) @ W, with W^T given as CSR (K, N); no atomics (row-owned outputs)."""
    _require_supported("spmm_t", dict(dy=dy, t_indptr=t_indptr, t_indices=t_indices,
                                      t_values=t_values, out=out))
    return _spmm_launch(dy, t_indptr, t_indices, t_values, None, False, out)


def sddmm(dy, x, indptr, indices, out):
    """out (nnz,) = sum_b dy[b, row_j] * x[b, col_j] for each nonzero j of W's CSR (N, K).

    dy (B, N), x (B, K): fp32/fp16/bf16; out fp32 (or any float dtype: stored in out's dtype).
    """
    _require_supported("sddmm", dict(dy=dy, x=x, indptr=indptr, indices=indices, out=out))
    k = _kernels()
    B, N = dy.shape
    nnz = indices.numel()
    if nnz == 0:
        return out
    if B == 0:
        return out.zero_()
    indptr, indices = indptr.contiguous(), indices.contiguous()
    if B > SMALL_BATCH_MAX:  # batch-major copies: a chunk of the batch is one contiguous load
        dy = _batch_major(dy)
        x = _batch_major(x)
    order = row_order(indptr)

    def grid(meta):
        return (_cdiv(N, meta["ROWS_PER_PROG"]),)

    k.sddmm[grid](dy_ptr=dy, x_ptr=x, indptr_ptr=indptr, indices_ptr=indices,
                  row_order_ptr=order, out_ptr=out, B=B, N=N,
                  stride_dyb=dy.stride(0), stride_dyn=dy.stride(1),
                  stride_xb=x.stride(0), stride_xk=x.stride(1),
                  batch_bucket=_next_pow2(B), nnz_bucket=_nnz_bucket(nnz, N))
    return out
