// SDDMM on the CPU: the weight gradient at W's nonzeros only, out[j] = <dy[:, row_j], x[:, col_j]>.
// Rows are split across threads; each nonzero writes its own out[j], so no atomics.
#include "cpu/common_cpu.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include "cpu/sddmm_cpu.h"

namespace lth_sparse {
namespace cpu {

namespace {

template <typename T, typename I, int BS>
void gather_block(const T* dy, const T* x, int64_t N, int64_t K, const int32_t* indptr,
                  const I* indices, T* out, bool accumulate) {
  const int64_t nnz = indptr[N];
  const int64_t chunk = row_chunk(N);
#pragma omp parallel for schedule(dynamic, chunk) if (nnz * BS > kParallelMinWork)
  for (int64_t r = 0; r < N; ++r) {
    T d[BS];
    for (int b = 0; b < BS; ++b) d[b] = dy[b * N + r];
    for (int64_t j = indptr[r]; j < indptr[r + 1]; ++j) {
      const int64_t c = indices[j];
      T s = 0;
      for (int b = 0; b < BS; ++b) s += d[b] * x[b * K + c];
      out[j] = accumulate ? out[j] + s : s;
    }
  }
}

// out[j + u] (+)= horizontal sum of a[u], u = 0..7.
template <typename T, typename V>
inline void reduce8(const V* a, T* out, bool first) {
  for (int u = 0; u < 8; ++u) out[u] = (first ? T(0) : out[u]) + hsum<T>(a[u]);
}
#if defined(__AVX2__)
// The same for 8 float vectors as a transposing reduction: 9 shuffles/adds instead of 8 full
// horizontal sums.
template <>
inline void reduce8<float, Vec<float>::type>(const Vec<float>::type* a, float* out, bool first) {
  __m256 v[8];
  std::memcpy(v, a, sizeof(v));
  const __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                           _mm256_permute2f128_ps(s0123, s4567, 0x31));
  if (!first) r = _mm256_add_ps(r, _mm256_loadu_ps(out));
  _mm256_storeu_ps(out, r);
}
#endif

// One row's nonzeros against one batch tile: d is the row of dy^T's tile (NV vectors, kept in
// registers), xt the (K, ld) tile of x^T. Eight nonzeros at a time give eight independent
// accumulation chains and one transposing reduction. first: overwrite out instead of adding.
template <typename T, typename I, int NV>
inline void tile_row(const T* d, const T* xt, int64_t ld, const I* indices, int64_t lo,
                     int64_t hi, T* out, bool first) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  V dv[NV];
  for (int v = 0; v < NV; ++v) dv[v] = loadu<V>(d + v * L);
  int64_t j = lo;
  for (; j + 8 <= hi; j += 8) {
    V a[8];
    for (int u = 0; u < 8; ++u) {
      const T* p = xt + static_cast<int64_t>(indices[j + u]) * ld;
      a[u] = dv[0] * loadu<V>(p);
      for (int v = 1; v < NV; ++v) a[u] += dv[v] * loadu<V>(p + v * L);
    }
    reduce8<T, V>(a, out + j, first);
  }
  for (; j < hi; ++j) {
    const T* p = xt + static_cast<int64_t>(indices[j]) * ld;
    V a = dv[0] * loadu<V>(p);
    for (int v = 1; v < NV; ++v) a += dv[v] * loadu<V>(p + v * L);
    out[j] = (first ? T(0) : out[j]) + hsum<T>(a);
  }
}

}  // namespace

template <typename T, typename I>
void sddmm_gather(const T* dy, const T* x, int64_t B, int64_t N, int64_t K,
                  const int32_t* indptr, const I* indices, T* out) {
  const int64_t nnz = indptr[N];
  if (B == 0) {
    for (int64_t j = 0; j < nnz; ++j) out[j] = T(0);
    return;
  }
  for (int64_t b0 = 0; b0 < B; b0 += 8) {
    const T* db = dy + b0 * N;
    const T* xb = x + b0 * K;
    const bool acc = b0 > 0;  // later blocks add to the first block's sums
    switch (std::min<int64_t>(8, B - b0)) {
      case 1: gather_block<T, I, 1>(db, xb, N, K, indptr, indices, out, acc); break;
      case 2: gather_block<T, I, 2>(db, xb, N, K, indptr, indices, out, acc); break;
      case 3: gather_block<T, I, 3>(db, xb, N, K, indptr, indices, out, acc); break;
      case 4: gather_block<T, I, 4>(db, xb, N, K, indptr, indices, out, acc); break;
      case 5: gather_block<T, I, 5>(db, xb, N, K, indptr, indices, out, acc); break;
      case 6: gather_block<T, I, 6>(db, xb, N, K, indptr, indices, out, acc); break;
      case 7: gather_block<T, I, 7>(db, xb, N, K, indptr, indices, out, acc); break;
      default: gather_block<T, I, 8>(db, xb, N, K, indptr, indices, out, acc); break;
    }
  }
}

template <typename T, typename I>
void sddmm_batched(const T* dy, const T* x, int64_t B, int64_t N, int64_t K,
                   const int32_t* indptr, const I* indices, T* out, T* workspace) {
  constexpr int64_t L = Vec<T>::L;
  constexpr int64_t TW = tile_width<T>();
  const int64_t Bp = padded_batch<T>(B);
  T* dyt = workspace;
  T* xt = workspace + N * Bp;
  transpose_tiled(dy, B, N, dyt);
  transpose_tiled(x, B, K, xt);
  const int64_t nnz = indptr[N];
  const int64_t n_tiles = (Bp + TW - 1) / TW;
  const int64_t rc = csr_chunk(N, nnz, sizeof(T) + sizeof(I));
  const int64_t n_chunks = (N + rc - 1) / rc;
  // Same blocking as spmm_batched: the chunk's indices and outputs stay in L2 across the
  // batch tiles, each (K, tile) block of x^T stays in L2 while the chunk sweeps over it.
#pragma omp parallel for schedule(dynamic, 1) if (nnz * Bp > kParallelMinWork)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t r0 = ch * rc, r1 = std::min(N, r0 + rc);
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t b0 = t * TW, w = std::min(TW, Bp - b0);
      const T* dtile = dyt + N * b0;
      const T* xtile = xt + K * b0;
      const bool first = t == 0;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t lo = indptr[r], hi = indptr[r + 1];
        const T* d = dtile + r * w;
        switch (w / L) {
          case 1: tile_row<T, I, 1>(d, xtile, w, indices, lo, hi, out, first); break;
          case 2: tile_row<T, I, 2>(d, xtile, w, indices, lo, hi, out, first); break;
          case 3: tile_row<T, I, 3>(d, xtile, w, indices, lo, hi, out, first); break;
          default: tile_row<T, I, kTileVecs>(d, xtile, w, indices, lo, hi, out, first); break;
        }
      }
    }
  }
}

#define LTH_INSTANTIATE(T, I)                                                                  \
  template void sddmm_gather<T, I>(const T*, const T*, int64_t, int64_t, int64_t,              \
                                   const int32_t*, const I*, T*);                              \
  template void sddmm_batched<T, I>(const T*, const T*, int64_t, int64_t, int64_t,             \
                                    const int32_t*, const I*, T*, T*);
LTH_INSTANTIATE(float, int32_t)
LTH_INSTANTIATE(float, uint16_t)
LTH_INSTANTIATE(double, int32_t)
LTH_INSTANTIATE(double, uint16_t)
#undef LTH_INSTANTIATE

}  // namespace cpu
}  // namespace lth_sparse
