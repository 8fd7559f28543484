// Shared pieces of the CPU CSR kernels: a portable 32-byte SIMD vector (GCC/Clang vector
// extensions, so the same code is AVX2 on x86 and NEON pairs on ARM), OpenMP scheduling
// helpers, and the batch-padded transpose that the batched kernels read from.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#ifdef LTH_SPARSE_OPENMP
#include <omp.h>
#endif

namespace lth_sparse {
namespace cpu {

// Batches up to this size take the gather path (no transpose, no workspace) by default.
// Measured (4096 x 4096, 90% sparse, one AMD EPYC core): gather wins at B = 1 (0.75 vs 1.2 ms),
// ties at B = 2 and loses from B = 3 on (2.2 vs 1.2 ms; at B = 8, 9.7 vs 1.3 ms: the B rows of x
// sit a power-of-two stride apart and their gathers conflict in L1).
constexpr int64_t kSmallBatch = 2;

// One 32-byte vector of T: 8 floats or 4 doubles.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int L = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int L = 4;
};

// memcpy loads/stores: unaligned-safe and alias-safe; compilers turn them into vmovups.
template <typename V, typename T>
inline V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename T, typename V>
inline T hsum(const V& v) {
  constexpr int L = Vec<T>::L;
  T s[L];
  std::memcpy(s, &v, sizeof(V));
  T r = 0;
  for (int i = 0; i < L; ++i) r += s[i];
  return r;
}

// Batch width the batched kernels work on: B rounded up to a whole number of vectors, so
// every load of a transposed row is a full vector (the padding lanes are zero).
template <typename T>
inline int64_t padded_batch(int64_t B) {
  constexpr int64_t L = Vec<T>::L;
  return (B + L - 1) / L * L;
}

// Below this many multiply-adds a kernel runs on the calling thread: waking the OpenMP team
// costs more than the work.
constexpr int64_t kParallelMinWork = 1 << 15;

inline int max_threads() {
#ifdef LTH_SPARSE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Rows per dynamic-schedule chunk: about 8 chunks per thread (so rows of uneven length even out
// and a thread delayed by another process on the core does not hold the others up), at most
// 256 rows, and a multiple of 16 rows where possible (16 fp32 outputs = one cache line, so two
// threads rarely write into the same line of the output).
inline int64_t row_chunk(int64_t n_rows) {
  int64_t c = n_rows / (static_cast<int64_t>(max_threads()) * 8);
  if (c >= 16) c = c / 16 * 16;
  return std::max<int64_t>(1, std::min<int64_t>(c, 256));
}

// Batch tile of the batched kernels: kTileVecs vectors (32 floats / 16 doubles). One tile of
// a transposed (K, tile) operand is 128 KiB for K = 1024 and 512 KiB for K = 4096, so it stays
// in the per-core L2 while every row of W sweeps over it; wider tiles fell out to L3 and ran
// the forward pass L3-bandwidth bound (4x slower at batch 256).
constexpr int kTileVecs = 4;
template <typename T>
constexpr int64_t tile_width() {
  return kTileVecs * Vec<T>::L;
}

// Transposed, zero-padded, tiled copy of src (B, K): the batch is cut into tiles of
// tile_width<T>() columns (the last one narrower, a multiple of the vector length); tile t is
// a contiguous (K, w_t) block at dst + K * t * tile_width. Element (k, b) of tile t sits at
// dst[K * t * TW + k * w_t + (b - t * TW)]; lanes b >= B hold zero. dst holds K * Bp elements.
template <typename T>
void transpose_tiled(const T* src, int64_t B, int64_t K, T* dst) {
  constexpr int64_t TW = tile_width<T>();
  constexpr int64_t KB = 64;  // k block: a (KB, TW) piece of dst and a (TW, KB) one of src
  const int64_t Bp = padded_batch<T>(B);
  const int64_t n_tiles = (Bp + TW - 1) / TW;
  const int64_t k_blocks = (K + KB - 1) / KB;
#pragma omp parallel for schedule(static) collapse(2) if (B * K > kParallelMinWork)
  for (int64_t t = 0; t < n_tiles; ++t) {
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const int64_t b0 = t * TW, w = std::min(TW, Bp - b0), bend = std::min(B, b0 + w);
      const int64_t k0 = kb * KB, k1 = std::min(K, k0 + KB);
      T* tile = dst + K * b0;
      for (int64_t b = b0; b < bend; ++b) {
        const T* s = src + b * K;
        for (int64_t k = k0; k < k1; ++k) tile[k * w + (b - b0)] = s[k];
      }
      for (int64_t b = bend; b < b0 + w; ++b)
        for (int64_t k = k0; k < k1; ++k) tile[k * w + (b - b0)] = T(0);
    }
  }
}

// Rows per dynamic-schedule chunk for the batched kernels: enough rows that the chunk's CSR
// slice (about 64 KiB) is reused from L2 across the batch tiles, few enough that every thread
// gets at least four chunks.
inline int64_t csr_chunk(int64_t n_rows, int64_t nnz, int64_t bytes_per_nnz) {
  const int64_t per_row = std::max<int64_t>(1, nnz * bytes_per_nnz / std::max<int64_t>(1, n_rows));
  int64_t c = std::max<int64_t>(1, (64 << 10) / per_row);
  const int64_t cap = (n_rows + 4 * max_threads() - 1) / (4 * max_threads());
  return std::max<int64_t>(1, std::min(c, cap));
}

}  // namespace cpu
}  // namespace lth_sparse
