// Stand-in for csrc/engine/sparse_mlp_engine.cpp while the real engine is being written on
// another branch: the same contract (csrc/engine/sparse_mlp_engine.h), in plain loops, so the
// runtime can be built and tested now. CMakeLists.txt uses it only when the real engine's
// source is absent; it goes away once the engine is on main.
#include "engine/sparse_mlp_engine.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef LTH_SPARSE_OPENMP
#include <omp.h>
#endif

namespace lth_sparse {
namespace engine {

struct SparseMLPEngine::Impl {
  std::vector<LayerView> layers;
  // kCopy storage: one owned copy per array, the views above point into them.
  std::vector<std::vector<int32_t>> indptr_store, index32_store;
  std::vector<std::vector<uint16_t>> index16_store;
  std::vector<std::vector<float>> value_store, bias_store;
  int64_t max_width = 0;
  int64_t nnz = 0;
  int threads = 0;
};

namespace {

void check_layers(const std::vector<LayerView>& layers) {
  if (layers.empty()) throw std::invalid_argument("a sparse MLP needs at least one layer");
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerView& l = layers[i];
    const std::string where = "layer " + std::to_string(i);
    if (l.n_out < 0 || l.n_in < 0 || l.nnz < 0)
      throw std::invalid_argument(where + ": negative count");
    if (i && l.n_in != layers[i - 1].n_out)
      throw std::invalid_argument(where + " takes " + std::to_string(l.n_in) +
                                  " inputs but layer " + std::to_string(i - 1) + " produces " +
                                  std::to_string(layers[i - 1].n_out) + " outputs");
    if (!l.indptr || (l.nnz && (!l.indices || !l.values)))
      throw std::invalid_argument(where + ": missing array");
    if (l.indptr[0] != 0 || l.indptr[l.n_out] != l.nnz)
      throw std::invalid_argument(where + ": indptr[n_out] != nnz");
  }
}

template <typename Index>
void layer_forward(const LayerView& l, const float* x, float* y) {
  const Index* idx = static_cast<const Index*>(l.indices);
  for (int64_t r = 0; r < l.n_out; ++r) {
    float acc = l.bias ? l.bias[r] : 0.0f;
    for (int32_t j = l.indptr[r]; j < l.indptr[r + 1]; ++j) acc += l.values[j] * x[idx[j]];
    y[r] = (l.relu && acc < 0.0f) ? 0.0f : acc;
  }
}

void sample_forward(const std::vector<LayerView>& layers, const float* x, float* y,
                    float* buf_a, float* buf_b) {
  const float* in = x;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerView& l = layers[i];
    float* out = (i + 1 == layers.size()) ? y : (i % 2 == 0 ? buf_a : buf_b);
    if (l.index_type == IndexType::kU16)
      layer_forward<uint16_t>(l, in, out);
    else
      layer_forward<int32_t>(l, in, out);
    in = out;
  }
}

}  // namespace

SparseMLPEngine::SparseMLPEngine(const std::vector<LayerView>& layers, Memory memory)
    : impl_(new Impl) {
  check_layers(layers);
  impl_->layers = layers;
  for (LayerView& l : impl_->layers) {
    impl_->nnz += l.nnz;
    impl_->max_width = std::max(impl_->max_width, l.n_out);
    if (memory != Memory::kCopy) continue;
    impl_->indptr_store.emplace_back(l.indptr, l.indptr + l.n_out + 1);
    l.indptr = impl_->indptr_store.back().data();
    if (l.index_type == IndexType::kU16) {
      const uint16_t* p = static_cast<const uint16_t*>(l.indices);
      impl_->index16_store.emplace_back(p, p + l.nnz);
      l.indices = impl_->index16_store.back().data();
    } else {
      const int32_t* p = static_cast<const int32_t*>(l.indices);
      impl_->index32_store.emplace_back(p, p + l.nnz);
      l.indices = impl_->index32_store.back().data();
    }
    impl_->value_store.emplace_back(l.values, l.values + l.nnz);
    l.values = impl_->value_store.back().data();
    if (l.bias) {
      impl_->bias_store.emplace_back(l.bias, l.bias + l.n_out);
      l.bias = impl_->bias_store.back().data();
    }
  }
}

SparseMLPEngine::~SparseMLPEngine() = default;

int64_t SparseMLPEngine::n_in() const { return impl_->layers.front().n_in; }
int64_t SparseMLPEngine::n_out() const { return impl_->layers.back().n_out; }
int64_t SparseMLPEngine::n_layers() const { return static_cast<int64_t>(impl_->layers.size()); }
int64_t SparseMLPEngine::nnz() const { return impl_->nnz; }

void SparseMLPEngine::forward(const float* x, int64_t batch, float* y, int threads) const {
  if (batch <= 0) return;
  const std::vector<LayerView>& layers = impl_->layers;
  const int64_t n_in = this->n_in(), n_out = this->n_out(), width = impl_->max_width;
  int nthreads = threads > 0 ? threads : impl_->threads;
#ifdef LTH_SPARSE_OPENMP
  if (nthreads <= 0) nthreads = omp_get_max_threads();
  if (batch < 2) nthreads = 1;
#pragma omp parallel num_threads(nthreads)
#endif
  {
    std::vector<float> buf(static_cast<size_t>(2 * width));
#ifdef LTH_SPARSE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t b = 0; b < batch; ++b)
      sample_forward(layers, x + b * n_in, y + b * n_out, buf.data(), buf.data() + width);
  }
  (void)nthreads;
}

void SparseMLPEngine::set_threads(int threads) { impl_->threads = threads > 0 ? threads : 0; }
int SparseMLPEngine::threads() const { return impl_->threads; }

}  // namespace engine
}  // namespace lth_sparse
