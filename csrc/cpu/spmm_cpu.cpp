// SpMM on the CPU: out = x @ W^T (+ bias) (ReLU), W in CSR. Used for the forward pass and,
// with W^T in CSR and no bias, for dX = dY W (spmm_t): a row-parallel kernel needs no atomics.
#include "cpu/common_cpu.h"
#include "cpu/spmm_cpu.h"

namespace lth_sparse {
namespace cpu {

namespace {

template <typename T>
inline T finish(T acc, const T* bias, int64_t r, bool relu) {
  if (bias) acc += bias[r];
  return (relu && acc < T(0)) ? T(0) : acc;  // NaN passes through, as torch.relu does
}

// BS batch rows (x points at the first), one pass over the CSR; rows split across threads.
// Not auto-vectorised: GCC would turn the indexed loads into AVX2 gathers, which are slower
// than scalar loads on the AMD cores this was tuned on (2.8x at batch 1).
template <typename T, typename I, int BS>
__attribute__((optimize("no-tree-vectorize"))) void gather_block(const T* x, int64_t K, const int32_t* indptr, const I* indices,
                  const T* values, int64_t N, const T* bias, bool relu, T* out) {
  const int64_t nnz = indptr[N];
  const int64_t chunk = row_chunk(N);
#pragma omp parallel for schedule(dynamic, chunk) if (nnz * BS > kParallelMinWork)
  for (int64_t r = 0; r < N; ++r) {
    const int64_t lo = indptr[r], hi = indptr[r + 1];
    T res[BS];
    if (BS == 1) {
      // Eight independent chains hide the multiply-add latency (eight measured ~18% faster than
      // four at 4096x4096, 90%, batch 1); the loop is bound by loads.
      T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
      int64_t j = lo;
      for (; j + 8 <= hi; j += 8) {
        a0 += values[j] * x[indices[j]];
        a1 += values[j + 1] * x[indices[j + 1]];
        a2 += values[j + 2] * x[indices[j + 2]];
        a3 += values[j + 3] * x[indices[j + 3]];
        a4 += values[j + 4] * x[indices[j + 4]];
        a5 += values[j + 5] * x[indices[j + 5]];
        a6 += values[j + 6] * x[indices[j + 6]];
        a7 += values[j + 7] * x[indices[j + 7]];
      }
      for (; j < hi; ++j) a0 += values[j] * x[indices[j]];
      res[0] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    } else {
      T a[BS], c[BS];
      for (int b = 0; b < BS; ++b) a[b] = c[b] = 0;
      int64_t j = lo;
      for (; j + 2 <= hi; j += 2) {
        const int64_t c0 = indices[j], c1 = indices[j + 1];
        const T v0 = values[j], v1 = values[j + 1];
        for (int b = 0; b < BS; ++b) {
          a[b] += v0 * x[b * K + c0];
          c[b] += v1 * x[b * K + c1];
        }
      }
      if (j < hi) {
        const int64_t c0 = indices[j];
        const T v0 = values[j];
        for (int b = 0; b < BS; ++b) a[b] += v0 * x[b * K + c0];
      }
      for (int b = 0; b < BS; ++b) res[b] = a[b] + c[b];
    }
    for (int b = 0; b < BS; ++b) out[b * N + r] = finish(res[b], bias, r, relu);
  }
}

// acc[0 .. NV*L) = sum over the row's nonzeros of value * xt[col, b0 .. b0 + NV*L).
// NV vectors of accumulators stay in registers (NV = 8 uses 8 of AVX2's 16). Narrow tiles
// interleave U = 8 / NV nonzeros into separate accumulators: one chain of dependent
// multiply-adds would wait on the FMA latency at every nonzero.
template <typename T, typename I, int NV>
inline void tile_row(const T* xt, int64_t ld, const I* indices, const T* values, int64_t lo,
                     int64_t hi, T* acc_out) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  constexpr int U = NV >= 8 ? 1 : 8 / NV;
  V acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[u][v] = V{};
    int64_t j = lo;
  for (; j + U <= hi; j += U) {
    for (int u = 0; u < U; ++u) {
      const T s = values[j + u];
      const T* p = xt + static_cast<int64_t>(indices[j + u]) * ld;
      for (int v = 0; v < NV; ++v) acc[u][v] += s * loadu<V>(p + v * L);
    }
  }
  for (; j < hi; ++j) {
    const T s = values[j];
    const T* p = xt + static_cast<int64_t>(indices[j]) * ld;
    for (int v = 0; v < NV; ++v) acc[0][v] += s * loadu<V>(p + v * L);
  }
  for (int u = 1; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc[0][v] += acc[u][v];
  for (int v = 0; v < NV; ++v) storeu(acc_out + v * L, acc[0][v]);
}

}  // namespace

template <typename T, typename I>
void spmm_gather(const T* x, int64_t B, int64_t K, const int32_t* indptr, const I* indices,
                 const T* values, int64_t N, const T* bias, bool relu, T* out) {
  // Blocks of up to 8 batch rows: each block is one pass over the CSR arrays.
  for (int64_t b0 = 0; b0 < B; b0 += 8) {
    const T* xb = x + b0 * K;
    T* ob = out + b0 * N;
    switch (std::min<int64_t>(8, B - b0)) {
      case 1: gather_block<T, I, 1>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      case 2: gather_block<T, I, 2>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      case 3: gather_block<T, I, 3>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      case 4: gather_block<T, I, 4>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      case 5: gather_block<T, I, 5>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      case 6: gather_block<T, I, 6>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      case 7: gather_block<T, I, 7>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
      default: gather_block<T, I, 8>(xb, K, indptr, indices, values, N, bias, relu, ob); break;
    }
  }
}

template <typename T, typename I>
void spmm_batched(const T* x, int64_t B, int64_t K, const int32_t* indptr, const I* indices,
                  const T* values, int64_t N, const T* bias, bool relu, T* out, T* xt) {
  constexpr int64_t L = Vec<T>::L;
  constexpr int64_t TW = tile_width<T>();
  const int64_t Bp = padded_batch<T>(B);
  transpose_tiled(x, B, K, xt);
  const int64_t nnz = indptr[N];
  const int64_t n_tiles = (Bp + TW - 1) / TW;
  const int64_t rc = csr_chunk(N, nnz, sizeof(T) + sizeof(I));
  const int64_t n_chunks = (N + rc - 1) / rc;
  // Chunks of rows outside, batch tiles in the middle, rows inside: the chunk's CSR slice is
  // reused from L2 for every tile, and each tile of x^T is swept by a whole chunk of rows while
  // it sits in L2. A row's outputs are a column of out; consecutive rows fill the same lines.
#pragma omp parallel for schedule(dynamic, 1) if (nnz * Bp > kParallelMinWork)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t r0 = ch * rc, r1 = std::min(N, r0 + rc);
    alignas(64) T acc[TW];
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t b0 = t * TW, w = std::min(TW, Bp - b0), bend = std::min(B, b0 + w);
      const T* tile = xt + K * b0;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t lo = indptr[r], hi = indptr[r + 1];
        switch (w / L) {
          case 1: tile_row<T, I, 1>(tile, w, indices, values, lo, hi, acc); break;
          case 2: tile_row<T, I, 2>(tile, w, indices, values, lo, hi, acc); break;
          case 3: tile_row<T, I, 3>(tile, w, indices, values, lo, hi, acc); break;
          default: tile_row<T, I, kTileVecs>(tile, w, indices, values, lo, hi, acc); break;
        }
        for (int64_t b = b0; b < bend; ++b) out[b * N + r] = finish(acc[b - b0], bias, r, relu);
      }
    }
  }
}

#define LTH_INSTANTIATE(T, I)                                                                  \
  template void spmm_gather<T, I>(const T*, int64_t, int64_t, const int32_t*, const I*,        \
                                  const T*, int64_t, const T*, bool, T*);                      \
  template void spmm_batched<T, I>(const T*, int64_t, int64_t, const int32_t*, const I*,       \
                                   const T*, int64_t, const T*, bool, T*, T*);
LTH_INSTANTIATE(float, int32_t)
LTH_INSTANTIATE(float, uint16_t)
LTH_INSTANTIATE(double, int32_t)
LTH_INSTANTIATE(double, uint16_t)
#undef LTH_INSTANTIATE

}  // namespace cpu
}  // namespace lth_sparse
