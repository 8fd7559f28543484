// CPU CSR sddmm kernels over raw pointers. The bindings (csrc/spmm.cpp, csrc/sddmm.cpp) check every shape and dtype
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
