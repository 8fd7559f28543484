// CPU CSR kernels over raw pointers. The bindings (kernels_cpu.cpp) check every shape and dtype
// and own the memory: nothing here allocates, and nothing here touches Python.
//
// CSR follows SciPy names: W has n_rows rows; row r holds the columns indices[indptr[r] ..
// indptr[r+1]) with values values[...]. Indices are trusted to lie in [0, n_cols).
// T is float or double (activations, values, bias, output, accumulation); I is int32_t or
// uint16_t (column indices); indptr is always int32_t.
#pragma once

#include <cstdint>

namespace lth_sparse {
namespace cpu {

// Batches up to this size take the gather path (no transpose, no workspace) by default.
// Measured (4096 x 4096, 90% sparse, one AMD EPYC core): gather wins at B = 1 (0.75 vs 1.2 ms),
// ties at B = 2 and loses from B = 3 on (2.2 vs 1.2 ms; at B = 8, 9.7 vs 1.3 ms: the B rows of x
// sit a power-of-two stride apart and their gathers conflict in L1).
constexpr int64_t kSmallBatch = 2;

// out (B, N) = x (B, K) @ W^T (+ bias) (ReLU), gathering x[b, col] for each nonzero.
// Best for small B: one pass over the CSR arrays per 8 batch rows. bias may be null.
template <typename T, typename I>
void spmm_gather(const T* x, int64_t B, int64_t K, const int32_t* indptr, const I* indices,
                 const T* values, int64_t N, const T* bias, bool relu, T* out);

// out (B, N) = x (B, K) @ W^T (+ bias) (ReLU) through xt, x transposed and zero-padded to
// (K, Bp) (Bp = padded_batch<T>(B), see transpose_pad): each nonzero becomes one SIMD
// multiply-add over a contiguous stretch of the batch. xt is written (by transpose_pad) and
// read here; it is the caller's workspace.
template <typename T, typename I>
void spmm_batched(const T* x, int64_t B, int64_t K, const int32_t* indptr, const I* indices,
                  const T* values, int64_t N, const T* bias, bool relu, T* out, T* xt);

// out (nnz,) : out[j] = sum_b dy[b, row_j] * x[b, col_j], gathering from row-major dy and x.
template <typename T, typename I>
void sddmm_gather(const T* dy, const T* x, int64_t B, int64_t N, int64_t K,
                  const int32_t* indptr, const I* indices, T* out);

// The same through workspace = [dy^T (N, Bp) | x^T (K, Bp)], both zero-padded: each nonzero
// is a contiguous Bp-long dot product.
template <typename T, typename I>
void sddmm_batched(const T* dy, const T* x, int64_t B, int64_t N, int64_t K,
                   const int32_t* indptr, const I* indices, T* out, T* workspace);

}  // namespace cpu
}  // namespace lth_sparse
