// CPU CSR spmm kernels (also spmm_t, the same kernel over W^T) over raw pointers. The bindings (csrc/spmm.cpp, csrc/sddmm.cpp) check every shape and dtype
// and own the memory: nothing here allocates, and nothing here touches Python.
//
// CSR follows SciPy names: W has n_rows rows; row r holds the columns indices[indptr[r] ..
// indptr[r+1]) with values values[...]. Indices are trusted to lie in [0, n_cols).
// T is float or double (activations, values, bias, output, accumulation); I is int32_t or
// uint16_t (column indices); indptr is always int32_t.
#pragma once

#include <cstdint>

#include "cpu/common_cpu.h"

namespace lth_sparse {
namespace cpu {

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

}  // namespace cpu
}  // namespace lth_sparse
