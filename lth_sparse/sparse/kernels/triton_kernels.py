"""Triton kernels for CSR sparse matmul (GPU; CPU through TRITON_INTERPRET=1).

Importing this module imports Triton, so only `triton_backend` imports it, lazily, on the first
call. TRITON_INTERPRET is read when the `@triton.jit` functions below are created: set it
before the first Triton op runs.

Two kernels, each a function over raw pointers with its autotune configs in a named function
beside it:

* `spmm_csr_kernel`: out[b, r] = sum_j values[j] * x[b, indices[j]] over row r's nonzeros
  (+ bias[r], ReLU). One program owns ROWS_PER_PROG rows (taken in `row_order`, longest rows
  first, so programs launched together carry similar work) and BLOCK_B batch columns. Each
  block of BLOCK_NNZ values/indices is loaded once and reused for every batch column of the
  tile; the gathered activations form a [BLOCK_B, BLOCK_NNZ] tile. Accumulation is fp32 in a 2-D
  register tile reduced once per row. Used by spmm (W as CSR) and spmm_t (W^T as CSR).
  Launched through two autotuners: the small-batch one (B <= 16: BLOCK_B = next_pow2(B), one
  batch tile, x row-major) and the batched one (BLOCK_B tuned, x passed transposed so the
  BLOCK_B values of one gathered column are contiguous and the load coalesces).
* `sddmm_csr_kernel`: out[j] = sum_b dy[b, row_j] * x[b, col_j]; a program owns whole rows and
  walks the batch in BLOCK_B chunks, so every output is written once (no atomics).

Indices may be int32, int64 or uint16 (loaded and widened to int32 in the kernel); indptr
int32 or int64; values/activations fp32, fp16 or bf16, always accumulated in fp32. Offsets are
int32: the wrapper refuses tensors of 2**31 elements or more.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------------------- spmm / spmm_t

def spmm_small_batch_configs():
    """Configs for B <= 16 (memory-bound: the CSR arrays dominate the bytes moved).

    BLOCK_B is not tuned (the wrapper passes next_pow2(B)); the choice is how many nonzeros a
    program loads per step, how many rows it owns (short rows waste lanes otherwise) and warps.
    """
    if INTERPRETED:  # autotuning under the interpreter is slow and meaningless
        return [triton.Config({"BLOCK_NNZ": 16, "ROWS_PER_PROG": 2}, num_warps=1)]
    configs = []
    for block_nnz in (32, 64, 128, 256):
        for rows in (1, 2, 4):
            for warps in (1, 2, 4):
                if block_nnz * rows >= 512 and warps == 1:
                    continue
                configs.append(triton.Config({"BLOCK_NNZ": block_nnz, "ROWS_PER_PROG": rows},
                                             num_warps=warps, num_stages=2))
    return configs


def spmm_batched_configs():
    """Configs for B > 16: each loaded nonzero is reused across a BLOCK_B tile of the batch."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_B": 32, "BLOCK_NNZ": 8, "ROWS_PER_PROG": 1}, num_warps=1)]
    configs = []
    for block_b in (32, 64, 128):
        for block_nnz in (8, 16, 32, 64):
            if block_b * block_nnz > 4096:  # register tile of fp32 accumulators
                continue
            for rows in (1, 2):
                for warps in (2, 4, 8):
                    configs.append(triton.Config(
                        {"BLOCK_B": block_b, "BLOCK_NNZ": block_nnz, "ROWS_PER_PROG": rows},
                        num_warps=warps, num_stages=2))
    return configs


def _prune_batched(configs, named_args, **kwargs):
    """Drop batch tiles wider than twice the padded batch (all-masked lanes only cost time)."""
    bucket = kwargs.get("batch_bucket", named_args.get("batch_bucket"))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= max(32, bucket)]
    return kept or configs[:1]


@triton.jit
def spmm_csr_kernel(
    # pointers: dense input, CSR arrays of W (N x K), optional bias, row schedule, output
    x_ptr, indptr_ptr, indices_ptr, values_ptr, bias_ptr, row_order_ptr, out_ptr,
    # sizes: batch, rows of W (= output columns), columns of W (autotune key only), and the
    # batch lanes that may be read (B, or the zero-padded width of a batch-major copy of x: a
    # multiple of 16 keeps the load mask uniform over 16 lanes, so the gathers vectorise)
    B, N, K, B_LOAD,
    # strides (elements) of x (B, K) and out (B, N); x may be a transposed view (stride_xb == 1)
    stride_xb, stride_xk, stride_ob, stride_on,
    # autotune keys, not read: next_pow2(B) and next_pow2(mean nonzeros per row)
    batch_bucket, nnz_bucket,
    # meta-parameters: fused epilogue flags and tile sizes
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_NNZ: tl.constexpr, ROWS_PER_PROG: tl.constexpr,
):
    # batch tiles on axis 0: programs sharing rows run together, so the CSR arrays they all
    # read come from L2 after the first batch tile fetched them
    pid_b = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    mask_load_b = offs_b < B_LOAD
    x_tile = x_ptr + offs_b[:, None] * stride_xb
    for i in tl.static_range(ROWS_PER_PROG):
        slot = pid_r * ROWS_PER_PROG + i
        valid = slot < N
        row = tl.load(row_order_ptr + slot, mask=valid, other=0)
        # an invalid slot gets start == end == 0: no iterations, store masked off
        start = tl.load(indptr_ptr + row, mask=valid, other=0)
        end = tl.load(indptr_ptr + row + 1, mask=valid, other=0)
        acc = tl.zeros([BLOCK_B, BLOCK_NNZ], dtype=tl.float32)
        for j in range(start, end, BLOCK_NNZ):
            offs = j + tl.arange(0, BLOCK_NNZ)
            mask_nz = offs < end
            # uint16 indices are zero-extended here; that halves the index bytes streamed
            cols = tl.load(indices_ptr + offs, mask=mask_nz, other=0).to(tl.int32)
            vals = tl.load(values_ptr + offs, mask=mask_nz, other=0.0).to(tl.float32)
            xg = tl.load(x_tile + cols[None, :] * stride_xk,
                         mask=mask_load_b[:, None] & mask_nz[None, :], other=0.0).to(tl.float32)
            acc += xg * vals[None, :]
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(bias_ptr + row, mask=valid, other=0.0).to(tl.float32)
        if RELU:
            y = tl.maximum(y, 0.0)
        tl.store(out_ptr + offs_b * stride_ob + row * stride_on,
                 y.to(out_ptr.dtype.element_ty), mask=mask_b & valid)


_SPMM_KEY = ["batch_bucket", "N", "K", "nnz_bucket", "HAS_BIAS", "RELU"]
spmm_small_batch = triton.autotune(configs=spmm_small_batch_configs(), key=_SPMM_KEY)(
    spmm_csr_kernel)
spmm_batched = triton.autotune(configs=spmm_batched_configs(), key=_SPMM_KEY,
                               prune_configs_by={"early_config_prune": _prune_batched})(
    spmm_csr_kernel)


# ---------------------------------------------------------------------------- sddmm

def sddmm_configs():
    """Configs for the weight gradient at the nonzeros (any batch; BLOCK_B chunks the batch)."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_NNZ": 8, "BLOCK_B": 8, "ROWS_PER_PROG": 2}, num_warps=1)]
    configs = []
    for block_nnz in (16, 32, 64):
        for block_b in (16, 32, 64):
            for rows in (1, 2):
                for warps in (2, 4):
                    configs.append(triton.Config(
                        {"BLOCK_NNZ": block_nnz, "BLOCK_B": block_b, "ROWS_PER_PROG": rows},
                        num_warps=warps, num_stages=2))
    return configs


def _prune_sddmm(configs, named_args, **kwargs):
    """Batch chunks wider than the padded batch only add masked lanes; keep the useful ones."""
    bucket = kwargs.get("batch_bucket", named_args.get("batch_bucket"))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= max(16, bucket)]
    return kept or configs[:1]


@triton.jit
def sddmm_csr_kernel(
    # pointers: upstream gradient, layer input, CSR pattern of W (N x K), row schedule, output
    dy_ptr, x_ptr, indptr_ptr, indices_ptr, row_order_ptr, out_ptr,
    # sizes: batch, rows of W
    B, N,
    # strides (elements) of dy (B, N) and x (B, K); either may be a transposed view
    stride_dyb, stride_dyn, stride_xb, stride_xk,
    # autotune keys, not read: next_pow2(B) and next_pow2(mean nonzeros per row)
    batch_bucket, nnz_bucket,
    # meta-parameters: tile sizes
    BLOCK_NNZ: tl.constexpr, BLOCK_B: tl.constexpr, ROWS_PER_PROG: tl.constexpr,
):
    pid = tl.program_id(0)
    for i in tl.static_range(ROWS_PER_PROG):
        slot = pid * ROWS_PER_PROG + i
        valid = slot < N
        row = tl.load(row_order_ptr + slot, mask=valid, other=0)
        start = tl.load(indptr_ptr + row, mask=valid, other=0)
        end = tl.load(indptr_ptr + row + 1, mask=valid, other=0)
        for j in range(start, end, BLOCK_NNZ):
            offs = j + tl.arange(0, BLOCK_NNZ)
            mask_nz = offs < end
            cols = tl.load(indices_ptr + offs, mask=mask_nz, other=0).to(tl.int32)
            acc = tl.zeros([BLOCK_NNZ, BLOCK_B], dtype=tl.float32)
            for b0 in range(0, B, BLOCK_B):
                offs_b = b0 + tl.arange(0, BLOCK_B)
                mask_b = offs_b < B
                g = tl.load(dy_ptr + offs_b * stride_dyb + row * stride_dyn,
                            mask=mask_b, other=0.0).to(tl.float32)
                xg = tl.load(x_ptr + cols[:, None] * stride_xk + offs_b[None, :] * stride_xb,
                             mask=mask_nz[:, None] & mask_b[None, :], other=0.0).to(tl.float32)
                acc += xg * g[None, :]
            tl.store(out_ptr + offs, tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty),
                     mask=mask_nz)


sddmm = triton.autotune(configs=sddmm_configs(), key=["batch_bucket", "N", "nnz_bucket"],
                        prune_configs_by={"early_config_prune": _prune_sddmm})(sddmm_csr_kernel)
