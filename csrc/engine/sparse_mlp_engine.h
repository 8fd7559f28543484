// The whole-network engine: a sparse MLP (CSR layers, fused bias + ReLU) run in one call.
//
// No Python and no torch here: the same engine serves the pybind11 module (lth_sparse._C,
// bound in csrc/engine.cpp) and the Python-free runtime (csrc/runtime/, liblth_ticket).
// Callers validate the CSR arrays before building an engine (CSRMatrix.validate in Python,
// the runtime's loader in C); the engine checks what it needs to stay memory-safe once, at
// construction (chaining, counts, indptr monotone, every column index in [0, n_in): O(nnz)),
// and nothing per call. An owning engine (kCopy) also builds a transposed copy of every layer
// (the batch-1 path that skips inputs equal to 0 or a background value reads it); a borrowing
// one does not take that path, so in-place changes of the borrowed values are always seen.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace lth_sparse {
namespace engine {

enum class IndexType : int { kU16 = 0, kI32 = 1 };

// One layer as borrowed arrays: y (B, n_out) = x (B, n_in) W^T + bias, then ReLU if `relu`.
struct LayerView {
  int64_t n_out = 0, n_in = 0, nnz = 0;
  const int32_t* indptr = nullptr;  // n_out + 1: 0 = indptr[0] <= ... <= indptr[n_out] = nnz
  const void* indices = nullptr;    // nnz column ids in [0, n_in), sorted per row; kU16 or kI32
  IndexType index_type = IndexType::kI32;
  const float* values = nullptr;    // nnz
  const float* bias = nullptr;      // n_out, or nullptr for no bias
  bool relu = false;
};

// Memory: kCopy makes the engine own copies of every array; kBorrow keeps the caller's
// pointers (the caller keeps them alive and unchanged while the engine exists).
enum class Memory : int { kBorrow = 0, kCopy = 1 };

class SparseMLPEngine {
 public:
  // Throws std::invalid_argument with a message naming the layer when the layers do not
  // chain (layer i's n_in != layer i-1's n_out), a count is negative, indptr[n_out] != nnz,
  // indptr decreases, or a column index lies outside [0, n_in).
  SparseMLPEngine(const std::vector<LayerView>& layers, Memory memory);
  ~SparseMLPEngine();
  SparseMLPEngine(const SparseMLPEngine&) = delete;
  SparseMLPEngine& operator=(const SparseMLPEngine&) = delete;

  int64_t n_in() const;
  int64_t n_out() const;
  int64_t n_layers() const;
  int64_t nnz() const;

  // y (batch, n_out) = the network applied to x (batch, n_in); both row-major, contiguous,
  // fp32, caller-owned, not aliased. batch >= 0 (0 writes nothing). threads <= 0 uses the
  // engine's default (set_threads; initially the OpenMP default). Safe to call from several
  // threads at once on one engine (activation buffers are per calling thread, grown on first
  // use and reused, so the steady state allocates nothing).
  void forward(const float* x, int64_t batch, float* y, int threads = 0) const;

  void set_threads(int threads);  // <= 0: the OpenMP default
  int threads() const;

  // --- Extensions (tests, benchmarks, tuning); forward() is forward_path(..., kAuto).
  // kGather: row-major activations, a scalar gather per nonzero (best for a few rows);
  // kTiled: batch tiles transposed so each nonzero is a SIMD multiply-add over the tile.
  // kAuto picks gather for batch <= gather_max_batch().
  enum class Path : int { kAuto = 0, kGather = 1, kTiled = 2 };
  void forward_path(const float* x, int64_t batch, float* y, int threads, Path path) const;
  // Calls with fewer multiply-adds than this ((nnz + n_out) * batch) run on the calling thread
  // (a fork/join costs microseconds); < 0 restores the default. 0 forces the team (tests).
  void set_parallel_min_work(int64_t work);
  int64_t parallel_min_work() const;
  static int64_t gather_max_batch();
  static int64_t tile_width();  // batch rows per tile of the tiled path

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engine
}  // namespace lth_sparse
