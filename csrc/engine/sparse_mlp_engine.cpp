// The whole-network engine (contract: sparse_mlp_engine.h). No Python, no torch.
//
// Two paths, chosen per call by batch size and thread count:
//
// * gather (batch <= kGatherMaxBatch): row-major activations, blocks of up to kGatherBlock
//   batch rows run through the whole network one after another; each nonzero is a scalar load of
//   x[col] (scalar loads beat AVX gathers on the AMD cores this was tuned on) feeding one of
//   eight independent accumulator chains. The block's activations (a few KiB) stay in L1.
//   At batch 1, a layer whose input is mostly one value (0 after a ReLU, or a constant
//   background such as standardised MNIST's) runs instead through a CSC copy of the layer,
//   touching only the columns whose input differs (scatter_layer).
// * tiled (larger batches): the batch is cut into tiles of up to kTileVecs SIMD vectors; a tile
//   of x is transposed once to (n_in, w), and then every layer reads a (n_in, w) and writes a
//   (n_out, w) tile, so each nonzero is one vector multiply-add per vector of the tile and the
//   activations of all layers stay in L2 for the whole network. Only the last layer's tile is
//   transposed back into y. Tiles of up to 8 rows use 8-lane vectors (their tile stays in L1).
//
// Threads: many tiles (or gather blocks) are shared out whole, each thread running the network
// on its own tiles with its own scratch (no barriers). With fewer tiles than threads, the team
// splits each layer's rows (balanced by nonzeros) and meets at a barrier between layers. Below
// kParallelMinWork multiply-adds everything runs on the calling thread: waking a team costs
// microseconds, as much as a whole small network.
#include "engine/sparse_mlp_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#ifdef LTH_SPARSE_OPENMP
#include <omp.h>
#endif

namespace lth_sparse {
namespace engine {

namespace {

// One SIMD vector of floats: 512-bit where the build targets AVX-512 (Zen 4/5 execute it at
// full width), else 256-bit. GCC vector extensions, so ARM builds get NEON pairs.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));

inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, const vfloat& v) { std::memcpy(p, &v, sizeof(v)); }

// Batches up to this size run the gather path. Measured on a LeNet-300-100 ticket (10.7%,
// 28.8K nonzeros, one Zen 5 core): batch 1 gather 9.8 us vs tiled 13.7 us; batch 2 14.4 vs
// 13.8; batch 3 18.3 vs 14.2 (one 16-lane tile costs about the same for 1..16 rows). Tried
// and dropped at batch 1: AVX-512 gathers (15-17 us) and uint16 indices read four per load
// (no change: not bound by load ports alone).
constexpr int64_t kGatherMaxBatch = 1;
// At batch 1 a layer whose input has at most this fraction of entries different from 0 (or
// from x[0]) runs the scatter path (its CSC copy, the other entries skipped). Measured (LeNet
// 10.7% ticket, input density p): p = 0.1: scatter 3.7 vs gather 9.7 us; 0.3: 6.5 vs 9.4;
// 0.5: 8.4 vs 9.6; 0.7: 11.8 vs 9.6. Standardised-MNIST-like input (-0.42 background, 19%
// foreground): 5.0 vs 9.8 us (3.6% ticket: 3.0 vs 4.2). Env LTH_ENGINE_SCATTER_MAX_DENSITY
// overrides it when an engine is built (0 turns the path off).
constexpr double kScatterMaxDensity = 0.5;
// Batch rows per gather block (one pass over the weights per block).
constexpr int kGatherBlock = 4;
// Tile width in vectors: 4 x 16 lanes = 64 batch rows. The first LeNet layer's input tile is
// 784 x 64 x 4 B = 196 KiB, which with the ticket's 160 KiB of weights sits in a 1 MiB L2.
constexpr int kTileVecs = 4;
constexpr int64_t kTileWidth = kTileVecs * kLanes;
// Below this many multiply-adds per call, one thread: a fork/join and the barriers between
// layers cost more than they save. Measured (same ticket, 2 threads on a shared 2-core VM):
// batch 1 gather 9.7 vs 9.5-10 us on two threads; batch 16 (one tile) 15.9 vs 29.5 us; batch
// 64 69 vs 42 us. The crossover lies between 0.5M and 1.8M multiply-adds.
constexpr int64_t kParallelMinWork = 1 << 20;

inline int default_threads() {
#ifdef LTH_SPARSE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
inline int thread_num() {
#ifdef LTH_SPARSE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int team_size() {
#ifdef LTH_SPARSE_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
inline void team_barrier(bool team) {
#ifdef LTH_SPARSE_OPENMP
  if (team) {
#pragma omp barrier
  }
#else
  (void)team;
#endif
}

// Per-thread scratch, grown on first use and then reused: the steady state allocates nothing.
// One buffer per thread serves every engine (a thread runs one forward at a time).
struct Scratch {
  float* data = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(data); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(data);
      const size_t bytes = (std::max<size_t>(n, 16) * sizeof(float) + 63) / 64 * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data) {
        cap = 0;
        throw std::bad_alloc();
      }
      cap = bytes / sizeof(float);
    }
    return data;
  }
};
thread_local Scratch tls_scratch;

inline float finish(float acc, const float* bias, int64_t r, bool relu) {
  if (bias) acc += bias[r];
  return (relu && acc < 0.f) ? 0.f : acc;  // NaN passes through, as torch.relu does
}

// Rows [r0, r1) of this thread's share of a layer: the team splits rows so that each thread
// gets about the same number of nonzeros (plus one per row, for the per-row work).
inline void row_share(const LayerView& l, bool team, int64_t* r0, int64_t* r1) {
  if (!team) {
    *r0 = 0;
    *r1 = l.n_out;
    return;
  }
  const int t = thread_num(), nt = team_size();
  auto split = [&](int k) -> int64_t {
    if (k <= 0) return 0;
    if (k >= nt) return l.n_out;
    const int64_t total = l.nnz + l.n_out;
    const int64_t target = total * k / nt;
    // smallest r with indptr[r] + r >= target
    int64_t lo = 0, hi = l.n_out;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (l.indptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  *r0 = split(t);
  *r1 = split(t + 1);
}

inline void even_share(int64_t n, bool team, int64_t* lo, int64_t* hi) {
  if (!team) {
    *lo = 0;
    *hi = n;
    return;
  }
  const int t = thread_num(), nt = team_size();
  *lo = n * t / nt;
  *hi = n * (t + 1) / nt;
}

// ------------------------------------------------------------------------- gather path

// out (BS rows, stride ldo)[:, r0:r1] = layer(x (BS rows, stride n_in)). Not auto-vectorised:
// GCC would turn the indexed loads into gathers, slower than scalar loads on these cores.
template <typename I, int BS>
__attribute__((optimize("no-tree-vectorize"))) void gather_rows(
    const LayerView& l, const float* __restrict x, float* __restrict out, int64_t ldo, int64_t r0,
    int64_t r1) {
  const I* __restrict indices = static_cast<const I*>(l.indices);
  const float* __restrict values = l.values;
  const int32_t* indptr = l.indptr;
  const int64_t K = l.n_in;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t lo = indptr[r], hi = indptr[r + 1];
    if (BS == 1) {
      // Eight chains hide the multiply-add latency; the loop is bound by loads.
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
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
      out[r] = finish(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), l.bias, r, l.relu);
    } else {
      float a[BS], c[BS];
      for (int b = 0; b < BS; ++b) a[b] = c[b] = 0;
      int64_t j = lo;
      for (; j + 2 <= hi; j += 2) {
        const int64_t c0 = indices[j], c1 = indices[j + 1];
        const float v0 = values[j], v1 = values[j + 1];
        for (int b = 0; b < BS; ++b) {
          a[b] += v0 * x[b * K + c0];
          c[b] += v1 * x[b * K + c1];
        }
      }
      if (j < hi) {
        const int64_t c0 = indices[j];
        const float v0 = values[j];
        for (int b = 0; b < BS; ++b) a[b] += v0 * x[b * K + c0];
      }
      for (int b = 0; b < BS; ++b) out[b * ldo + r] = finish(a[b] + c[b], l.bias, r, l.relu);
    }
  }
}

template <int BS>
inline void gather_layer(const LayerView& l, const float* x, float* out, int64_t ldo, int64_t r0,
                         int64_t r1) {
  if (l.index_type == IndexType::kU16) gather_rows<uint16_t, BS>(l, x, out, ldo, r0, r1);
  else gather_rows<int32_t, BS>(l, x, out, ldo, r0, r1);
}

inline void gather_layer(int bs, const LayerView& l, const float* x, float* out, int64_t ldo,
                         int64_t r0, int64_t r1) {
  switch (bs) {
    case 1: gather_layer<1>(l, x, out, ldo, r0, r1); break;
    case 2: gather_layer<2>(l, x, out, ldo, r0, r1); break;
    case 3: gather_layer<3>(l, x, out, ldo, r0, r1); break;
    default: gather_layer<4>(l, x, out, ldo, r0, r1); break;
  }
}

// One layer at batch 1 through its transposed (CSC) copy, touching only the columns where x
// differs from a base value v (0, or a constant background such as standardised MNIST's
// -0.42): out = bias + v * rowsum(W); out[row] += (x[k] - v) * w for the nonzeros of every
// column k in nz; then ReLU. ReLU zeroes about half of every hidden layer, and ~80% of MNIST
// pixels are background, so this skips most of the work gather would do. x[k] = NaN or inf
// differs from v and is used, as the reference does (v itself is always finite).
void scatter_layer(const LayerView& l, const int32_t* t_indptr, const int32_t* t_rows,
                   const float* t_values, const float* row_sums, const float* __restrict x,
                   float v, const int32_t* __restrict nz, int64_t n_nz, float* __restrict out) {
  for (int64_t r = 0; r < l.n_out; ++r)
    out[r] = (l.bias ? l.bias[r] : 0.f) + (v != 0.f ? v * row_sums[r] : 0.f);
  for (int64_t i = 0; i < n_nz; ++i) {
    const int32_t k = nz[i];
    const float xv = x[k] - v;
    for (int64_t j = t_indptr[k], e = t_indptr[k + 1]; j < e; ++j) out[t_rows[j]] += t_values[j] * xv;
  }
  if (l.relu)
    for (int64_t r = 0; r < l.n_out; ++r) out[r] = out[r] < 0.f ? 0.f : out[r];
}

// How many x[k] differ from v (a vectorisable count: most calls stop here).
inline int64_t count_not_equal(const float* x, int64_t n, float v) {
  int64_t c = 0;
  for (int64_t k = 0; k < n; ++k) c += x[k] != v;
  return c;
}

// The column ids k with x[k] != v into nz (branch-free: the pattern is data).
inline void columns_not_equal(const float* x, int64_t n, float v, int32_t* nz) {
  int64_t c = 0;
  for (int64_t k = 0; k < n; ++k) {
    nz[c] = static_cast<int32_t>(k);
    c += x[k] != v;
  }
}

// ------------------------------------------------------------------------- tiled path

// h_out (rows r0..r1, w lanes) = layer(h_in (n_in, w)) with bias and ReLU, NV = w / kLanes.
// Narrow tiles interleave U nonzeros into separate accumulators: a single chain of dependent
// multiply-adds would wait on the FMA latency at every nonzero.
template <typename I, int NV>
void tile_rows(const LayerView& l, const float* __restrict h_in, float* __restrict h_out,
               int64_t r0, int64_t r1) {
  constexpr int64_t w = NV * kLanes;
  constexpr int U = NV >= 4 ? 2 : 8 / NV;
  const I* __restrict indices = static_cast<const I*>(l.indices);
  const float* __restrict values = l.values;
  const int32_t* indptr = l.indptr;
  for (int64_t r = r0; r < r1; ++r) {
    vfloat acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[u][v] = vfloat{};
    const int64_t lo = indptr[r], hi = indptr[r + 1];
    int64_t j = lo;
    for (; j + U <= hi; j += U) {
      for (int u = 0; u < U; ++u) {
        const float s = values[j + u];
        const float* p = h_in + static_cast<int64_t>(indices[j + u]) * w;
        for (int v = 0; v < NV; ++v) acc[u][v] += s * vload(p + v * kLanes);
      }
    }
    for (; j < hi; ++j) {
      const float s = values[j];
      const float* p = h_in + static_cast<int64_t>(indices[j]) * w;
      for (int v = 0; v < NV; ++v) acc[0][v] += s * vload(p + v * kLanes);
    }
    for (int u = 1; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[0][v] += acc[u][v];
    const float b = l.bias ? l.bias[r] : 0.f;
    float* o = h_out + r * w;
    for (int v = 0; v < NV; ++v) {
      vfloat y = acc[0][v] + b;
      // y < 0 is false for NaN: NaN passes through the ReLU, as torch.relu does.
      if (l.relu) y = (y < 0.f) ? vfloat{} : y;
      vstore(o + v * kLanes, y);
    }
  }
}

// Tiles of at most 8 rows use 8-lane (256-bit) vectors: their (n_in, 8) input tile is half the
// size, so LeNet's first layer (784 x 8 x 4 B = 25 KiB) stays in L1. Measured (10.7% ticket,
// one thread): batch 2 13.0 vs 15.2 us, batch 8 12.8 vs 16.6 us with 16-lane tiles.
typedef float vfloat8 __attribute__((vector_size(8 * sizeof(float))));
template <typename I>
void tile_rows8(const LayerView& l, const float* __restrict h_in, float* __restrict h_out,
                int64_t r0, int64_t r1) {
  constexpr int U = 8;
  const I* __restrict indices = static_cast<const I*>(l.indices);
  const float* __restrict values = l.values;
  const int32_t* indptr = l.indptr;
  for (int64_t r = r0; r < r1; ++r) {
    vfloat8 acc[U];
    for (int u = 0; u < U; ++u) acc[u] = vfloat8{};
    const int64_t lo = indptr[r], hi = indptr[r + 1];
    int64_t j = lo;
    for (; j + U <= hi; j += U) {
      for (int u = 0; u < U; ++u) {
        vfloat8 v;
        std::memcpy(&v, h_in + static_cast<int64_t>(indices[j + u]) * 8, sizeof(v));
        acc[u] += values[j + u] * v;
      }
    }
    for (; j < hi; ++j) {
      vfloat8 v;
      std::memcpy(&v, h_in + static_cast<int64_t>(indices[j]) * 8, sizeof(v));
      acc[0] += values[j] * v;
    }
    vfloat8 y = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    y += l.bias ? l.bias[r] : 0.f;
    if (l.relu) y = (y < 0.f) ? vfloat8{} : y;
    std::memcpy(h_out + r * 8, &y, sizeof(y));
  }
}

template <int NV>
inline void tile_layer(const LayerView& l, const float* h_in, float* h_out, int64_t r0,
                       int64_t r1) {
  if (l.index_type == IndexType::kU16) tile_rows<uint16_t, NV>(l, h_in, h_out, r0, r1);
  else tile_rows<int32_t, NV>(l, h_in, h_out, r0, r1);
}

inline void tile_layer(int nv, const LayerView& l, const float* h_in, float* h_out, int64_t r0,
                       int64_t r1) {
  if (nv == 0) {  // the 8-row tile
    if (l.index_type == IndexType::kU16) tile_rows8<uint16_t>(l, h_in, h_out, r0, r1);
    else tile_rows8<int32_t>(l, h_in, h_out, r0, r1);
    return;
  }
  switch (nv) {
    case 1: tile_layer<1>(l, h_in, h_out, r0, r1); break;
    case 2: tile_layer<2>(l, h_in, h_out, r0, r1); break;
    case 3: tile_layer<3>(l, h_in, h_out, r0, r1); break;
    default: tile_layer<kTileVecs>(l, h_in, h_out, r0, r1); break;
  }
}

// xt (K, w)[k, b] = x[b, k] for b < nb (the batch rows of this tile), 0 for nb <= b < w;
// columns [k0, k1) only (the team splits them).
inline void transpose_in(const float* x, int64_t nb, int64_t K, int64_t w, float* xt, int64_t k0,
                         int64_t k1) {
  constexpr int64_t KB = 64;  // a (KB, w) block of xt and (nb, KB) of x stay in L1
  for (int64_t kb = k0; kb < k1; kb += KB) {
    const int64_t ke = std::min(k1, kb + KB);
    for (int64_t b = 0; b < nb; ++b) {
      const float* s = x + b * K;
      for (int64_t k = kb; k < ke; ++k) xt[k * w + b] = s[k];
    }
    for (int64_t k = kb; k < ke; ++k)
      for (int64_t b = nb; b < w; ++b) xt[k * w + b] = 0.f;
  }
}

}  // namespace

// ------------------------------------------------------------------------- the engine

struct SparseMLPEngine::Impl {
  std::vector<LayerView> layers;
  // Owned copies (kCopy); the views point into these.
  std::vector<std::vector<int32_t>> own_indptr;
  std::vector<std::vector<int32_t>> own_i32;
  std::vector<std::vector<uint16_t>> own_u16;
  std::vector<std::vector<float>> own_values, own_bias;
  int64_t nnz = 0;
  int64_t max_hidden = 0;    // widest layer output except the last
  int64_t tile_floats = 0;   // scratch floats of one full-width tile (all layers' tiles)
  int threads = 0;
  int64_t parallel_min_work = kParallelMinWork;
  int64_t max_in = 0;  // widest layer input
  // Transposed (CSC) copy of every layer for the batch-1 scatter path: column k's nonzeros
  // are t_rows/t_values[t_indptr[k] .. t_indptr[k+1]).
  std::vector<std::vector<int32_t>> t_indptr, t_rows;
  std::vector<std::vector<float>> t_values;
  std::vector<std::vector<float>> row_sums;  // sum of each row's values (the base term)

  // Scratch layout of one tile: layer i's input tile at offset in_off[i]; the last layer's
  // output tile at in_off[n_layers]. Each region holds (width, kTileWidth) floats.
  std::vector<int64_t> in_off;

  double scatter_max_density = kScatterMaxDensity;
  void gather_block(const float* x, int bs, float* y, float* buf, bool team) const;
  void run_tile(const float* x, int64_t nb, float* y, float* buf, bool team) const;
};

SparseMLPEngine::SparseMLPEngine(const std::vector<LayerView>& layers, Memory memory)
    : impl_(new Impl) {
  Impl& m = *impl_;
  if (const char* e = std::getenv("LTH_ENGINE_SCATTER_MAX_DENSITY")) m.scatter_max_density = std::atof(e);
  // Borrowed values may change in place under the engine (an optimizer step, which fused
  // optimizers do without bumping torch's version counters): the scatter path's transposed
  // copy and row sums would go stale, so only owning engines take it.
  if (memory == Memory::kBorrow) m.scatter_max_density = 0;
  if (layers.empty()) throw std::invalid_argument("SparseMLPEngine: the network needs at least one layer");
  const size_t n = layers.size();
  for (size_t i = 0; i < n; ++i) {
    const LayerView& l = layers[i];
    const std::string where = "SparseMLPEngine: layer " + std::to_string(i) + ": ";
    if (l.n_out < 0 || l.n_in < 0 || l.nnz < 0)
      throw std::invalid_argument(where + "n_out, n_in and nnz must be >= 0");
    if (l.n_out > INT32_MAX - 1 || l.nnz > INT32_MAX)
      throw std::invalid_argument(where + "n_out and nnz must fit int32 (indptr is int32)");
    if (i && l.n_in != layers[i - 1].n_out)
      throw std::invalid_argument(where + "takes " + std::to_string(l.n_in) +
                                  " inputs but layer " + std::to_string(i - 1) + " produces " +
                                  std::to_string(layers[i - 1].n_out) + " (layers must chain)");
    if (!l.indptr) throw std::invalid_argument(where + "indptr is null");
    if (l.nnz && (!l.indices || !l.values))
      throw std::invalid_argument(where + "indices/values are null but nnz > 0");
    if (l.index_type != IndexType::kU16 && l.index_type != IndexType::kI32)
      throw std::invalid_argument(where + "index_type must be kU16 or kI32");
    if (l.indptr[0] != 0 || l.indptr[l.n_out] != l.nnz)
      throw std::invalid_argument(where + "indptr must start at 0 and end at nnz = " +
                                  std::to_string(l.nnz) + ", got " + std::to_string(l.indptr[0]) +
                                  ".." + std::to_string(l.indptr[l.n_out]));
    // O(nnz) once: the kernels index activations with these, so a bad pattern would read
    // out of bounds on every call. Cheap next to one forward at any batch.
    for (int64_t r = 0; r < l.n_out; ++r)
      if (l.indptr[r + 1] < l.indptr[r])
        throw std::invalid_argument(where + "indptr must be non-decreasing (row " +
                                    std::to_string(r) + ")");
    for (int64_t j = 0; j < l.nnz; ++j) {
      const int64_t c = l.index_type == IndexType::kU16
                            ? static_cast<const uint16_t*>(l.indices)[j]
                            : static_cast<const int32_t*>(l.indices)[j];
      if (c < 0 || c >= l.n_in)
        throw std::invalid_argument(where + "column index " + std::to_string(c) + " at " +
                                    std::to_string(j) + " is outside [0, " +
                                    std::to_string(l.n_in) + ")");
    }
  }

  m.layers = layers;
  if (memory == Memory::kCopy) {
    m.own_indptr.resize(n);
    m.own_i32.resize(n);
    m.own_u16.resize(n);
    m.own_values.resize(n);
    m.own_bias.resize(n);
    for (size_t i = 0; i < n; ++i) {
      LayerView& l = m.layers[i];
      m.own_indptr[i].assign(l.indptr, l.indptr + l.n_out + 1);
      l.indptr = m.own_indptr[i].data();
      if (l.index_type == IndexType::kU16) {
        const uint16_t* p = static_cast<const uint16_t*>(l.indices);
        m.own_u16[i].assign(p, p + l.nnz);
        l.indices = m.own_u16[i].data();
      } else {
        const int32_t* p = static_cast<const int32_t*>(l.indices);
        m.own_i32[i].assign(p, p + l.nnz);
        l.indices = m.own_i32[i].data();
      }
      m.own_values[i].assign(l.values, l.values + l.nnz);
      l.values = m.own_values[i].data();
      if (l.bias) {
        m.own_bias[i].assign(l.bias, l.bias + l.n_out);
        l.bias = m.own_bias[i].data();
      }
    }
  }
  m.in_off.resize(n + 1);
  int64_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    m.nnz += m.layers[i].nnz;
    if (i + 1 < n) m.max_hidden = std::max(m.max_hidden, m.layers[i].n_out);
    m.in_off[i] = off;
    off += m.layers[i].n_in * kTileWidth;
  }
  m.in_off[n] = off;
  off += m.layers[n - 1].n_out * kTileWidth;
  m.tile_floats = off;

  m.t_indptr.resize(n);
  m.t_rows.resize(n);
  m.t_values.resize(n);
  m.row_sums.resize(n);
  for (size_t i = 0; i < n; ++i) m.max_in = std::max(m.max_in, m.layers[i].n_in);
  for (size_t i = 0; i < n && memory == Memory::kCopy; ++i) {
    const LayerView& l = m.layers[i];
    std::vector<int32_t>& tp = m.t_indptr[i];
    tp.assign(l.n_in + 1, 0);
    auto col = [&](int64_t j) -> int64_t {
      return l.index_type == IndexType::kU16 ? static_cast<const uint16_t*>(l.indices)[j]
                                             : static_cast<const int32_t*>(l.indices)[j];
    };
    for (int64_t j = 0; j < l.nnz; ++j) ++tp[col(j) + 1];
    for (int64_t k = 0; k < l.n_in; ++k) tp[k + 1] += tp[k];
    std::vector<int32_t> fill(tp.begin(), tp.end() - 1);
    m.t_rows[i].resize(l.nnz);
    m.t_values[i].resize(l.nnz);
    m.row_sums[i].assign(l.n_out, 0.f);
    for (int64_t r = 0; r < l.n_out; ++r) {
      double sum = 0;
      for (int64_t j = l.indptr[r]; j < l.indptr[r + 1]; ++j) sum += l.values[j];
      m.row_sums[i][r] = static_cast<float>(sum);
      for (int64_t j = l.indptr[r]; j < l.indptr[r + 1]; ++j) {
        const int32_t dst = fill[col(j)]++;
        m.t_rows[i][dst] = static_cast<int32_t>(r);
        m.t_values[i][dst] = l.values[j];
      }
    }
  }
}

SparseMLPEngine::~SparseMLPEngine() = default;

int64_t SparseMLPEngine::n_in() const { return impl_->layers.front().n_in; }
int64_t SparseMLPEngine::n_out() const { return impl_->layers.back().n_out; }
int64_t SparseMLPEngine::n_layers() const { return static_cast<int64_t>(impl_->layers.size()); }
int64_t SparseMLPEngine::nnz() const { return impl_->nnz; }
void SparseMLPEngine::set_threads(int threads) { impl_->threads = threads > 0 ? threads : 0; }
int SparseMLPEngine::threads() const { return impl_->threads; }

// bs (<= kGatherBlock) batch rows through the whole network. buf: 2 * bs * max_hidden floats
// (ping-pong hidden activations). team: the calling team splits every layer's rows.
void SparseMLPEngine::Impl::gather_block(const float* x, int bs, float* y, float* buf,
                                         bool team) const {
  const size_t n = layers.size();
  const float* h = x;
  float* next = buf;
  float* other = buf + bs * max_hidden;
  for (size_t i = 0; i < n; ++i) {
    const LayerView& l = layers[i];
    const bool last = i + 1 == n;
    float* o = last ? y : next;
    int64_t r0, r1;
    row_share(l, team, &r0, &r1);
    bool done = false;
    if (bs == 1 && !team && scatter_max_density > 0 && l.n_in > 0) {
      // base value: 0 (ReLU outputs), else x[0] (a constant background, e.g. a corner pixel)
      const double limit = scatter_max_density * static_cast<double>(l.n_in);
      float v = 0.f;
      int64_t n_nz = count_not_equal(h, l.n_in, v);
      if (n_nz > limit && h[0] != 0.f && std::isfinite(h[0])) {
        v = h[0];
        n_nz = count_not_equal(h, l.n_in, v);
      }
      if (n_nz <= limit) {
        int32_t* nz = reinterpret_cast<int32_t*>(buf + 2 * bs * max_hidden);
        columns_not_equal(h, l.n_in, v, nz);
        scatter_layer(l, t_indptr[i].data(), t_rows[i].data(), t_values[i].data(),
                      row_sums[i].data(), h, v, nz, n_nz, o);
        done = true;
      }
    }
    if (!done) gather_layer(bs, l, h, o, l.n_out, r0, r1);
    if (!last) {
      team_barrier(team);  // the next layer reads every row of this one
      h = o;
      std::swap(next, other);
    }
  }
  team_barrier(team);  // a next block overwrites buf, which slower threads may still read
}

// nb (<= kTileWidth) batch rows of x through the whole network as one tile; y gets nb rows.
void SparseMLPEngine::Impl::run_tile(const float* x, int64_t nb, float* y, float* buf,
                                     bool team) const {
  const size_t n = layers.size();
  const bool narrow = kLanes > 8 && nb <= 8;
  const int64_t w = narrow ? 8 : (nb + kLanes - 1) / kLanes * kLanes;
  const int nv = narrow ? 0 : static_cast<int>(w / kLanes);
  // Region strides use the tile's own width w, so narrow tiles are dense too.
  auto region = [&](size_t i) { return buf + in_off[i] / kTileWidth * w; };
  int64_t lo, hi;
  even_share(layers[0].n_in, team, &lo, &hi);
  transpose_in(x, nb, layers[0].n_in, w, region(0), lo, hi);
  team_barrier(team);
  for (size_t i = 0; i < n; ++i) {
    const LayerView& l = layers[i];
    int64_t r0, r1;
    row_share(l, team, &r0, &r1);
    tile_layer(nv, l, region(i), region(i + 1), r0, r1);
    team_barrier(team);
  }
  // y (nb, N) = the last tile (N, w) transposed back.
  const int64_t N = layers[n - 1].n_out;
  const float* t = region(n);
  even_share(nb, team, &lo, &hi);
  for (int64_t b = lo; b < hi; ++b)
    for (int64_t r = 0; r < N; ++r) y[b * N + r] = t[r * w + b];
}

void SparseMLPEngine::set_parallel_min_work(int64_t work) {
  impl_->parallel_min_work = work >= 0 ? work : kParallelMinWork;
}
int64_t SparseMLPEngine::parallel_min_work() const { return impl_->parallel_min_work; }
int64_t SparseMLPEngine::gather_max_batch() { return kGatherMaxBatch; }
int64_t SparseMLPEngine::tile_width() { return kTileWidth; }

void SparseMLPEngine::forward(const float* x, int64_t batch, float* y, int threads) const {
  forward_path(x, batch, y, threads, Path::kAuto);
}

void SparseMLPEngine::forward_path(const float* x, int64_t batch, float* y, int threads,
                                   Path path) const {
  const Impl& m = *impl_;
  if (batch <= 0) return;
  const int64_t N = m.layers.back().n_out, K = m.layers.front().n_in;
  if (N == 0) return;
  int nt = threads > 0 ? threads : (m.threads > 0 ? m.threads : default_threads());
  const int64_t work = (m.nnz + N) * batch;
  if (work < m.parallel_min_work) nt = 1;

  if (path == Path::kGather || (path == Path::kAuto && batch <= kGatherMaxBatch)) {
    const int64_t n_blocks = (batch + kGatherBlock - 1) / kGatherBlock;
    // ping-pong hidden activations, then room for one layer's nonzero column ids
    const size_t need =
        static_cast<size_t>(2 * kGatherBlock * std::max<int64_t>(1, m.max_hidden) + m.max_in + 1);
    auto block = [&](int64_t blk, float* buf, bool team) {
      const int64_t b0 = blk * kGatherBlock;
      const int bs = static_cast<int>(std::min<int64_t>(kGatherBlock, batch - b0));
      m.gather_block(x + b0 * K, bs, y + b0 * N, buf, team);
    };
    if (nt == 1 || n_blocks >= nt) {
      // whole blocks per thread (or all on this one)
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
      for (int64_t blk = 0; blk < n_blocks; ++blk) block(blk, tls_scratch.get(need), false);
    } else {
      float* buf = tls_scratch.get(need);
#pragma omp parallel num_threads(nt)
      for (int64_t blk = 0; blk < n_blocks; ++blk) block(blk, buf, true);
    }
    return;
  }

  const int64_t n_tiles = (batch + kTileWidth - 1) / kTileWidth;
  const size_t need = static_cast<size_t>(m.tile_floats);
  auto tile = [&](int64_t t, float* buf, bool team) {
    const int64_t b0 = t * kTileWidth;
    m.run_tile(x + b0 * K, std::min(kTileWidth, batch - b0), y + b0 * N, buf, team);
  };
  if (nt == 1 || n_tiles >= 2 * nt) {
    // Tiles shared out whole: no barriers; dynamic, since a thread may share its core.
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < n_tiles; ++t) tile(t, tls_scratch.get(need), false);
  } else {
    float* buf = tls_scratch.get(need);
#pragma omp parallel num_threads(nt)
    for (int64_t t = 0; t < n_tiles; ++t) tile(t, buf, true);
  }
}

}  // namespace engine
}  // namespace lth_sparse
