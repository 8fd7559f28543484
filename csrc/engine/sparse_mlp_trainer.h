// The whole-network sparse trainer: one native call runs a full Adam training step of a sparse
// MLP (CSR layers, bias + ReLU) -- forward, softmax cross-entropy, backward at the nonzeros only,
// and the Adam update -- so a LeNet-sized step costs its arithmetic, not Python/autograd overhead.
//
// No Python and no torch here (bound in csrc/trainer.cpp). The trainer owns copies of every
// array: the pattern of each layer is fixed for its lifetime (a pruning round), the values,
// biases and Adam state change with every step and are read back through the accessors.
//
// Layout inside: activations and gradients are stored feature-major, (features, S) with the
// batch padded to S (a multiple of 64 lanes), so every nonzero costs one contiguous 64-lane
// multiply-add in the forward pass, one 64-lane dot product for its gradient (SDDMM) and one
// more multiply-add through the cached transpose pattern for the input gradient.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lth_sparse {
namespace engine {

// One layer: z (B, n_out) = x (B, n_in) W^T + bias, then ReLU if `relu`.
struct TrainerLayer {
  int64_t n_out = 0, n_in = 0;
  std::vector<int32_t> indptr;   // n_out + 1, 0 = indptr[0] <= ... <= indptr[n_out] = nnz
  std::vector<int32_t> indices;  // nnz column ids in [0, n_in)
  std::vector<float> values;     // nnz
  std::vector<float> bias;       // n_out, or empty for a layer without bias
  bool relu = false;
};

// torch.optim.Adam's hyperparameters (amsgrad / maximize are not supported).
struct AdamConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// Per-parameter tensors readable/writeable by name (see SparseMLPTrainer::state).
enum class StateKind : int {
  kValues, kBias, kExpAvg, kExpAvgSq, kBiasExpAvg, kBiasExpAvgSq, kGradValues, kGradBias
};

class SparseMLPTrainer {
 public:
  // Throws std::invalid_argument naming the layer when a pattern is malformed (indptr not
  // monotone from 0 to nnz, a column id out of range, sizes that disagree) or the layers do not
  // chain. threads <= 0: the OpenMP default.
  SparseMLPTrainer(std::vector<TrainerLayer> layers, const AdamConfig& adam, int threads = 0);
  ~SparseMLPTrainer();
  SparseMLPTrainer(const SparseMLPTrainer&) = delete;
  SparseMLPTrainer& operator=(const SparseMLPTrainer&) = delete;

  // One training step on `batch` examples: example b is row r_b of `data` (row-major,
  // n_in floats per row) with class labels[r_b], where r_b = rows[b], or b when rows is null.
  // The caller has checked that every r_b is a valid row and every label in [0, n_out).
  // Returns the mean cross-entropy loss of the batch before the update (as F.cross_entropy).
  double step(const float* data, const int64_t* labels, const int64_t* rows, int64_t batch);

  // (sum of per-example cross-entropy losses, number of correct argmax predictions) over n rows.
  std::pair<double, int64_t> evaluate(const float* data, const int64_t* labels, int64_t n);

  // logits (n, n_out) row-major of n rows of data.
  void forward(const float* data, int64_t n, float* logits);

  int64_t n_layers() const;
  int64_t n_in() const;
  int64_t n_out() const;
  const TrainerLayer& layer(int64_t l) const;  // pattern and shape (values are live)
  int64_t state_size(int64_t l, StateKind kind) const;
  float* state(int64_t l, StateKind kind);  // nnz or n_out floats, live

  int64_t step_count() const;
  void set_step_count(int64_t t);
  double lr() const;
  void set_lr(double lr);
  void set_threads(int threads);
  int threads() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engine
}  // namespace lth_sparse
