// SparseMLPTrainer (see sparse_mlp_trainer.h): a whole Adam step of a sparse MLP in one call.
//
// A LeNet-300-100 step at batch 60 and 10% density is ~10 MFLOP, a tenth of a millisecond of
// arithmetic: the framework overhead of an autograd step (tens of kernel launches, allocator
// traffic, Python) is the real cost, so everything here runs in one OpenMP parallel region per
// step, with a barrier between dependent phases instead of a fork/join per kernel, and no
// allocation after the first step of a given batch size.
#include "engine/sparse_mlp_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#ifdef LTH_SPARSE_OPENMP
#include <omp.h>
#endif

namespace lth_sparse {
namespace engine {

namespace {

// One SIMD vector of floats: 16 lanes where AVX-512 is on (Zen 4/5, Ice Lake: full-width
// units), else 8 (AVX2 / two NEON registers).
#if defined(__AVX512F__)
constexpr int kW = 16;
#else
constexpr int kW = 8;
#endif
typedef float vf __attribute__((vector_size(kW * sizeof(float))));

// Batch lanes per tile: the batch is padded to a multiple of this, so every inner loop runs
// over whole vectors. 64 fits the paper's batch of 60 in one tile.
constexpr int64_t kLanes = 64;
constexpr int kVecs = static_cast<int>(kLanes / kW);

inline vf ld(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, const vf& v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }
inline float hsum(const vf& v) {
  float s[kW];
  std::memcpy(s, &v, sizeof v);
  float r = 0.f;
  for (int i = 0; i < kW; ++i) r += s[i];
  return r;
}

inline int64_t padded(int64_t batch) { return (batch + kLanes - 1) / kLanes * kLanes; }

// Rows (or examples) per evaluation chunk: its transposed input (784 x 256 floats, 800 KB)
// stays in a core's L2 while every row of the first layer sweeps over it.
constexpr int64_t kEvalChunk = 256;

// Below this many multiply-adds per step, one thread: waking the team costs more than the work.
constexpr int64_t kParallelMinWork = 1 << 16;

inline int default_threads() {
#ifdef LTH_SPARSE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline void barrier() {
#ifdef LTH_SPARSE_OPENMP
#pragma omp barrier
#endif
}

// Boundaries b[0] = 0 <= ... <= b[T] = n that split items 0..n-1 into T ranges of about equal
// cost, item i costing (ptr[i+1] - ptr[i]) + per_item (its nonzeros plus fixed work).
std::vector<int64_t> balanced(const int32_t* ptr, int64_t n, int T, int64_t per_item) {
  std::vector<int64_t> b(T + 1, 0);
  const int64_t total = static_cast<int64_t>(ptr[n]) + per_item * n;
  int64_t i = 0;
  for (int t = 1; t < T; ++t) {
    const int64_t target = total * t / T;
    while (i < n && static_cast<int64_t>(ptr[i]) + per_item * i < target) ++i;
    b[t] = i;
  }
  b[T] = n;
  return b;
}

}  // namespace

struct Layer {
  TrainerLayer p;  // pattern, values, bias
  int64_t nnz = 0;
  bool has_bias = false;
  // W^T as CSR over the same nonzeros: column i's entries t_indptr[i]..t_indptr[i+1] have rows
  // t_rows[.] (ascending) and values values[perm[.]] (CSRMatrix.transpose_pattern's order).
  std::vector<int32_t> t_indptr, t_rows, perm;
  std::vector<float> grad_values, grad_bias, m_values, v_values, m_bias, v_bias;
};

// Per-thread-count work split: rows (forward, weight gradients) and columns (input gradient)
// balanced by nonzeros, and plain even splits of every layer's values and biases (Adam).
struct Split {
  std::vector<std::vector<int64_t>> rows, cols;
};

// Activation / gradient buffers for one padded batch width S, feature-major (features, S).
struct Work {
  int64_t S = 0, batch = -1;
  std::vector<float> x;                        // n_in x S
  std::vector<std::vector<float>> act, grad;  // per layer: n_out x S
};

struct SparseMLPTrainer::Impl {
  std::vector<Layer> layers;
  AdamConfig adam;
  int64_t t = 0;  // Adam step count
  int n_threads = 1;
  Split split1, splitT, split_other;  // for one thread, n_threads, and a smaller team
  Work train_work, eval_work;

  int64_t n_in() const { return layers.front().p.n_in; }
  int64_t n_out() const { return layers.back().p.n_out; }
  int64_t total_nnz() const {
    int64_t s = 0;
    for (const auto& L : layers) s += L.nnz;
    return s;
  }

  Split make_split(int T) const {
    Split s;
    for (const auto& L : layers) {
      s.rows.push_back(balanced(L.p.indptr.data(), L.p.n_out, T, 4));
      s.cols.push_back(balanced(L.t_indptr.data(), L.p.n_in, T, 4));
    }
    return s;
  }

  // Threads for a pass of about `work` multiply-adds.
  int threads_for(int64_t work) const {
    return (n_threads > 1 && work >= kParallelMinWork) ? n_threads : 1;
  }

  void ensure(Work& w, int64_t batch, bool with_grad) {
    if (w.batch == batch) return;
    // Zero-filled on every resize: padding lanes of x and of the gradients must stay zero
    // (they feed sums over the batch); nothing ever writes them afterwards.
    w.batch = batch;
    w.S = padded(batch);
    w.x.assign(static_cast<size_t>(n_in() * w.S), 0.f);
    w.act.resize(layers.size());
    w.grad.resize(with_grad ? layers.size() : 0);
    for (size_t l = 0; l < layers.size(); ++l) {
      w.act[l].assign(static_cast<size_t>(layers[l].p.n_out * w.S), 0.f);
      if (with_grad) w.grad[l].assign(static_cast<size_t>(layers[l].p.n_out * w.S), 0.f);
    }
  }

  // x^T[f, b] = data[row_b, f] for features [f0, f1); blocks of 16 examples so that each write
  // fills 16 contiguous lanes.
  void gather(Work& w, const float* data, const int64_t* rows, int64_t row0, int64_t B,
              int64_t f0, int64_t f1) const {
    const int64_t K = n_in(), S = w.S;
    constexpr int64_t kB = 16;
    for (int64_t b0 = 0; b0 < B; b0 += kB) {
      const int64_t nb = std::min(kB, B - b0);
      const float* src[kB];
      for (int64_t u = 0; u < nb; ++u) {
        const int64_t r = rows ? rows[b0 + u] : row0 + b0 + u;
        src[u] = data + r * K;
      }
      for (int64_t f = f0; f < f1; ++f) {
        float* dst = w.x.data() + f * S + b0;
        for (int64_t u = 0; u < nb; ++u) dst[u] = src[u][f];
      }
    }
  }

  // Z[o, :] = bias[o] + sum_j values[j] X[indices[j], :], ReLU'd if the layer has it, for
  // rows [r0, r1) and every tile.
  static void forward_rows(const Layer& L, const float* X, float* Y, int64_t S, int64_t r0,
                           int64_t r1) {
    const int32_t* ip = L.p.indptr.data();
    const int32_t* ix = L.p.indices.data();
    const float* val = L.p.values.data();
    const vf zero = vf{};
    for (int64_t t0 = 0; t0 < S; t0 += kLanes) {
      for (int64_t o = r0; o < r1; ++o) {
        vf acc[kVecs];
        const float b = L.has_bias ? L.p.bias[o] : 0.f;
        for (int k = 0; k < kVecs; ++k) acc[k] = splat(b);
        for (int64_t j = ip[o]; j < ip[o + 1]; ++j) {
          const float w = val[j];
          const float* xr = X + static_cast<int64_t>(ix[j]) * S + t0;
          for (int k = 0; k < kVecs; ++k) acc[k] += w * ld(xr + k * kW);
        }
        if (L.p.relu) {
          for (int k = 0; k < kVecs; ++k) acc[k] = acc[k] > zero ? acc[k] : zero;
        }
        float* yr = Y + o * S + t0;
        for (int k = 0; k < kVecs; ++k) st(yr + k * kW, acc[k]);
      }
    }
  }

  // dbias[o] = sum_b G[o, b]; dvalues[j] = <G[o, :], X[indices[j], :]> for rows [r0, r1).
  // Padding lanes of G are zero, so sums over all S lanes are sums over the batch.
  static void weight_grads_rows(Layer& L, const float* G, const float* X, int64_t S, int64_t r0,
                                int64_t r1) {
    const int32_t* ip = L.p.indptr.data();
    const int32_t* ix = L.p.indices.data();
    float* dv = L.grad_values.data();
    for (int64_t o = r0; o < r1; ++o) {
      const float* g = G + o * S;
      if (L.has_bias) {
        vf s = vf{};
        for (int64_t l = 0; l < S; l += kW) s += ld(g + l);
        L.grad_bias[o] = hsum(s);
      }
      const int64_t lo = ip[o], hi = ip[o + 1];
      for (int64_t j = lo; j < hi; ++j) dv[j] = 0.f;
      for (int64_t t0 = 0; t0 < S; t0 += kLanes) {
        vf gv[kVecs];
        for (int k = 0; k < kVecs; ++k) gv[k] = ld(g + t0 + k * kW);
        int64_t j = lo;
        // Four nonzeros at a time: four independent dot products in flight.
        for (; j + 4 <= hi; j += 4) {
          const float* x0 = X + static_cast<int64_t>(ix[j]) * S + t0;
          const float* x1 = X + static_cast<int64_t>(ix[j + 1]) * S + t0;
          const float* x2 = X + static_cast<int64_t>(ix[j + 2]) * S + t0;
          const float* x3 = X + static_cast<int64_t>(ix[j + 3]) * S + t0;
          vf a0 = gv[0] * ld(x0), a1 = gv[0] * ld(x1), a2 = gv[0] * ld(x2), a3 = gv[0] * ld(x3);
          for (int k = 1; k < kVecs; ++k) {
            a0 += gv[k] * ld(x0 + k * kW);
            a1 += gv[k] * ld(x1 + k * kW);
            a2 += gv[k] * ld(x2 + k * kW);
            a3 += gv[k] * ld(x3 + k * kW);
          }
          dv[j] += hsum(a0);
          dv[j + 1] += hsum(a1);
          dv[j + 2] += hsum(a2);
          dv[j + 3] += hsum(a3);
        }
        for (; j < hi; ++j) {
          const float* x0 = X + static_cast<int64_t>(ix[j]) * S + t0;
          vf a0 = gv[0] * ld(x0);
          for (int k = 1; k < kVecs; ++k) a0 += gv[k] * ld(x0 + k * kW);
          dv[j] += hsum(a0);
        }
      }
    }
  }

  // Gprev[i, :] = (sum over column i's nonzeros of values * G[row, :]) masked by the ReLU of
  // the previous layer (its output Aprev > 0), for input features [c0, c1).
  static void input_grads_cols(const Layer& L, const float* G, const float* Aprev, bool prev_relu,
                               float* Gprev, int64_t S, int64_t c0, int64_t c1) {
    const int32_t* tp = L.t_indptr.data();
    const int32_t* tr = L.t_rows.data();
    const int32_t* pm = L.perm.data();
    const float* val = L.p.values.data();
    const vf zero = vf{};
    for (int64_t i = c0; i < c1; ++i) {
      for (int64_t t0 = 0; t0 < S; t0 += kLanes) {
        vf acc[kVecs];
        for (int k = 0; k < kVecs; ++k) acc[k] = vf{};
        for (int64_t q = tp[i]; q < tp[i + 1]; ++q) {
          const float w = val[pm[q]];
          const float* gr = G + static_cast<int64_t>(tr[q]) * S + t0;
          for (int k = 0; k < kVecs; ++k) acc[k] += w * ld(gr + k * kW);
        }
        if (prev_relu) {
          const float* a = Aprev + i * S + t0;
          for (int k = 0; k < kVecs; ++k) acc[k] = ld(a + k * kW) > zero ? acc[k] : zero;
        }
        float* out = Gprev + i * S + t0;
        for (int k = 0; k < kVecs; ++k) st(out + k * kW, acc[k]);
      }
    }
  }

  // Softmax cross-entropy of the logits (n_out, S) against labels, mean over the batch, and
  // its gradient into G as torch computes it: (softmax - onehot) / B.
  double loss_and_dlogits(Work& w, const int64_t* labels, const int64_t* rows, int64_t B) {
    const Layer& last = layers.back();
    const int64_t C = last.p.n_out, S = w.S;
    const float* Lg = w.act.back().data();
    float* G = w.grad.back().data();
    const float inv_b = 1.0f / static_cast<float>(B);
    double loss = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t y = labels[rows ? rows[b] : b];
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < C; ++c) m = std::max(m, Lg[c * S + b]);
      float s = 0.f;
      for (int64_t c = 0; c < C; ++c) s += std::exp(Lg[c * S + b] - m);
      const float log_s = std::log(s);
      loss -= static_cast<double>((Lg[y * S + b] - m) - log_s);
      for (int64_t c = 0; c < C; ++c) {
        const float logp = (Lg[c * S + b] - m) - log_s;
        float g = std::exp(logp) * inv_b - (c == y ? inv_b : 0.f);
        if (last.p.relu && !(Lg[c * S + b] > 0.f)) g = 0.f;
        G[c * S + b] = g;
      }
    }
    return loss / static_cast<double>(B);
  }

  // torch.optim.Adam (_single_tensor_adam) on elements [e0, e1) of one parameter.
  struct AdamScalars {
    float one_minus_b1, b2, one_minus_b2, bc2_sqrt, eps, neg_step, wd;
  };
  AdamScalars adam_scalars() const {
    const double bc1 = 1.0 - std::pow(adam.beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(adam.beta2, static_cast<double>(t));
    return {static_cast<float>(1.0 - adam.beta1), static_cast<float>(adam.beta2),
            static_cast<float>(1.0 - adam.beta2), static_cast<float>(std::sqrt(bc2)),
            static_cast<float>(adam.eps), static_cast<float>(-(adam.lr / bc1)),
            static_cast<float>(adam.weight_decay)};
  }
  static void adam_update(const AdamScalars& a, float* p, const float* grad, float* m, float* v,
                          int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      float g = grad[e];
      if (a.wd != 0.f) g = g + a.wd * p[e];
      m[e] = m[e] + a.one_minus_b1 * (g - m[e]);        // exp_avg.lerp_(grad, 1 - beta1)
      v[e] = v[e] * a.b2 + a.one_minus_b2 * g * g;      // mul_(beta2).addcmul_(g, g, 1 - beta2)
      const float denom = std::sqrt(v[e]) / a.bc2_sqrt + a.eps;
      p[e] = p[e] + a.neg_step * (m[e] / denom);        // addcdiv_(m, denom, -step_size)
    }
  }

  // The body every thread of the step's team runs (tid of nt).
  void step_body(int tid, int nt, const Split& sp, Work& w, const float* data,
                 const int64_t* labels, const int64_t* rows, int64_t B, const AdamScalars& as,
                 double* loss_out) {
    const int64_t S = w.S, K = n_in();
    const size_t nl = layers.size();
    gather(w, data, rows, 0, B, K * tid / nt, K * (tid + 1) / nt);
    barrier();
    for (size_t l = 0; l < nl; ++l) {
      const float* X = l == 0 ? w.x.data() : w.act[l - 1].data();
      forward_rows(layers[l], X, w.act[l].data(), S, sp.rows[l][tid], sp.rows[l][tid + 1]);
      barrier();
    }
    if (tid == 0) *loss_out = loss_and_dlogits(w, labels, rows, B);
    barrier();
    for (size_t l = nl; l-- > 0;) {
      Layer& L = layers[l];
      const float* X = l == 0 ? w.x.data() : w.act[l - 1].data();
      weight_grads_rows(L, w.grad[l].data(), X, S, sp.rows[l][tid], sp.rows[l][tid + 1]);
      if (l > 0) {
        input_grads_cols(L, w.grad[l].data(), w.act[l - 1].data(), layers[l - 1].p.relu,
                         w.grad[l - 1].data(), S, sp.cols[l][tid], sp.cols[l][tid + 1]);
      }
      barrier();
    }
    // Every gradient is complete (and dX no longer reads the old values): update.
    for (auto& L : layers) {
      adam_update(as, L.p.values.data(), L.grad_values.data(), L.m_values.data(),
                  L.v_values.data(), L.nnz * tid / nt, L.nnz * (tid + 1) / nt);
      if (L.has_bias) {
        const int64_t n = L.p.n_out;
        adam_update(as, L.p.bias.data(), L.grad_bias.data(), L.m_bias.data(), L.v_bias.data(),
                    n * tid / nt, n * (tid + 1) / nt);
      }
    }
  }

  // Forward of B examples (rows row0.. of data) into w.act; every thread of the team calls it.
  void forward_body(int tid, int nt, const Split& sp, Work& w, const float* data, int64_t row0,
                    int64_t B) {
    const int64_t K = n_in();
    gather(w, data, nullptr, row0, B, K * tid / nt, K * (tid + 1) / nt);
    barrier();
    for (size_t l = 0; l < layers.size(); ++l) {
      const float* X = l == 0 ? w.x.data() : w.act[l - 1].data();
      forward_rows(layers[l], X, w.act[l].data(), w.S, sp.rows[l][tid], sp.rows[l][tid + 1]);
      barrier();
    }
  }

  // Runs fn(tid, nt, split) on a team of `T` threads (or inline for T = 1). A team smaller than
  // asked (nested parallelism, thread limits) gets a split for its own size.
  template <typename Fn>
  void run_team(int T, Fn&& fn) {
    if (T <= 1) {
      fn(0, 1, split1);
      return;
    }
#ifdef LTH_SPARSE_OPENMP
#pragma omp parallel num_threads(T)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      const Split* sp = &splitT;
      if (nt != T) {  // the same on every thread of the team
#pragma omp single
        split_other = make_split(nt);
        sp = &split_other;
      }
      fn(tid, nt, *sp);
    }
#else
    fn(0, 1, split1);
#endif
  }
};

namespace {

void validate_layer(const TrainerLayer& L, size_t l) {
  const std::string name = "layer " + std::to_string(l);
  auto fail = [&](const std::string& why) { throw std::invalid_argument(name + ": " + why); };
  if (L.n_out < 0 || L.n_in < 0) fail("negative shape");
  if (L.n_out > INT32_MAX || L.n_in > INT32_MAX) fail("shape exceeds int32 ids");
  if (static_cast<int64_t>(L.indptr.size()) != L.n_out + 1) {
    fail("indptr has " + std::to_string(L.indptr.size()) + " entries, n_out + 1 = " +
         std::to_string(L.n_out + 1) + " expected");
  }
  const int64_t nnz = static_cast<int64_t>(L.indices.size());
  if (static_cast<int64_t>(L.values.size()) != nnz) fail("values and indices differ in length");
  if (L.indptr[0] != 0 || L.indptr[L.n_out] != nnz) fail("indptr must run from 0 to nnz");
  for (int64_t o = 0; o < L.n_out; ++o) {
    if (L.indptr[o + 1] < L.indptr[o]) fail("indptr decreases at row " + std::to_string(o));
  }
  for (int64_t j = 0; j < nnz; ++j) {
    if (L.indices[j] < 0 || L.indices[j] >= L.n_in) {
      fail("column index " + std::to_string(L.indices[j]) + " at nonzero " + std::to_string(j) +
           " is outside [0, " + std::to_string(L.n_in) + ")");
    }
  }
  if (!L.bias.empty() && static_cast<int64_t>(L.bias.size()) != L.n_out) {
    fail("bias has " + std::to_string(L.bias.size()) + " entries, n_out = " +
         std::to_string(L.n_out) + " expected");
  }
}

}  // namespace

SparseMLPTrainer::SparseMLPTrainer(std::vector<TrainerLayer> layers, const AdamConfig& adam,
                                   int threads)
    : impl_(new Impl) {
  if (layers.empty()) throw std::invalid_argument("a trainer needs at least one layer");
  if (!(adam.lr >= 0.0) || !(adam.beta1 >= 0.0 && adam.beta1 < 1.0) ||
      !(adam.beta2 >= 0.0 && adam.beta2 < 1.0) || !(adam.eps >= 0.0) ||
      !(adam.weight_decay >= 0.0)) {
    throw std::invalid_argument("Adam hyperparameters out of range: need lr >= 0, betas in "
                                "[0, 1), eps >= 0, weight_decay >= 0");
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    validate_layer(layers[l], l);
    if (l > 0 && layers[l].n_in != layers[l - 1].n_out) {
      throw std::invalid_argument("layer " + std::to_string(l) + " takes " +
                                  std::to_string(layers[l].n_in) + " inputs but layer " +
                                  std::to_string(l - 1) + " gives " +
                                  std::to_string(layers[l - 1].n_out));
    }
  }
  if (layers.back().n_out < 1) throw std::invalid_argument("the last layer needs >= 1 output");
  impl_->adam = adam;
  for (auto& tl : layers) {
    Layer L;
    L.p = std::move(tl);
    L.nnz = static_cast<int64_t>(L.p.indices.size());
    L.has_bias = !L.p.bias.empty();
    // Counting sort of the nonzeros by column; stable, so rows ascend within a column.
    const int64_t K = L.p.n_in;
    L.t_indptr.assign(K + 1, 0);
    for (int64_t j = 0; j < L.nnz; ++j) ++L.t_indptr[L.p.indices[j] + 1];
    for (int64_t i = 0; i < K; ++i) L.t_indptr[i + 1] += L.t_indptr[i];
    L.t_rows.resize(L.nnz);
    L.perm.resize(L.nnz);
    std::vector<int32_t> next(L.t_indptr.begin(), L.t_indptr.end() - 1);
    for (int64_t o = 0; o < L.p.n_out; ++o) {
      for (int32_t j = L.p.indptr[o]; j < L.p.indptr[o + 1]; ++j) {
        const int32_t q = next[L.p.indices[j]]++;
        L.t_rows[q] = static_cast<int32_t>(o);
        L.perm[q] = j;
      }
    }
    L.grad_values.assign(L.nnz, 0.f);
    L.m_values.assign(L.nnz, 0.f);
    L.v_values.assign(L.nnz, 0.f);
    const size_t nb = L.has_bias ? static_cast<size_t>(L.p.n_out) : 0;
    L.grad_bias.assign(nb, 0.f);
    L.m_bias.assign(nb, 0.f);
    L.v_bias.assign(nb, 0.f);
    impl_->layers.push_back(std::move(L));
  }
  impl_->split1 = impl_->make_split(1);
  set_threads(threads);
}

SparseMLPTrainer::~SparseMLPTrainer() = default;

double SparseMLPTrainer::step(const float* data, const int64_t* labels, const int64_t* rows,
                              int64_t batch) {
  if (batch < 1) throw std::invalid_argument("step needs a batch of at least one example");
  Impl& I = *impl_;
  I.ensure(I.train_work, batch, true);
  I.t += 1;
  const Impl::AdamScalars as = I.adam_scalars();
  double loss = 0.0;
  const int64_t work = I.train_work.S * (3 * I.total_nnz() + I.n_in());
  I.run_team(I.threads_for(work), [&](int tid, int nt, const Split& sp) {
    I.step_body(tid, nt, sp, I.train_work, data, labels, rows, batch, as, &loss);
  });
  return loss;
}

std::pair<double, int64_t> SparseMLPTrainer::evaluate(const float* data, const int64_t* labels,
                                                      int64_t n) {
  Impl& I = *impl_;
  double loss_sum = 0.0;
  int64_t correct = 0;
  const int64_t C = I.n_out();
  for (int64_t r0 = 0; r0 < n; r0 += kEvalChunk) {
    const int64_t B = std::min(kEvalChunk, n - r0);
    Work& w = I.eval_work;
    I.ensure(w, B, false);
    const int64_t work = w.S * (I.total_nnz() + I.n_in());
    I.run_team(I.threads_for(work), [&](int tid, int nt, const Split& sp) {
      I.forward_body(tid, nt, sp, w, data, r0, B);
    });
    const float* Lg = w.act.back().data();
    const int64_t S = w.S;
    for (int64_t b = 0; b < B; ++b) {
      // First maximum wins, as torch.argmax.
      float m = Lg[b];
      int64_t arg = 0;
      for (int64_t c = 1; c < C; ++c) {
        const float z = Lg[c * S + b];
        if (z > m) {
          m = z;
          arg = c;
        }
      }
      float s = 0.f;
      for (int64_t c = 0; c < C; ++c) s += std::exp(Lg[c * S + b] - m);
      const int64_t y = labels[r0 + b];
      loss_sum -= static_cast<double>((Lg[y * S + b] - m) - std::log(s));
      correct += (arg == y);
    }
  }
  return {loss_sum, correct};
}

void SparseMLPTrainer::forward(const float* data, int64_t n, float* logits) {
  Impl& I = *impl_;
  const int64_t C = I.n_out();
  for (int64_t r0 = 0; r0 < n; r0 += kEvalChunk) {
    const int64_t B = std::min(kEvalChunk, n - r0);
    Work& w = I.eval_work;
    I.ensure(w, B, false);
    const int64_t work = w.S * (I.total_nnz() + I.n_in());
    I.run_team(I.threads_for(work), [&](int tid, int nt, const Split& sp) {
      I.forward_body(tid, nt, sp, w, data, r0, B);
    });
    const float* Lg = w.act.back().data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) logits[(r0 + b) * C + c] = Lg[c * w.S + b];
  }
}

int64_t SparseMLPTrainer::n_layers() const { return static_cast<int64_t>(impl_->layers.size()); }
int64_t SparseMLPTrainer::n_in() const { return impl_->n_in(); }
int64_t SparseMLPTrainer::n_out() const { return impl_->n_out(); }
const TrainerLayer& SparseMLPTrainer::layer(int64_t l) const { return impl_->layers.at(l).p; }

int64_t SparseMLPTrainer::state_size(int64_t l, StateKind kind) const {
  const Layer& L = impl_->layers.at(l);
  switch (kind) {
    case StateKind::kValues:
    case StateKind::kExpAvg:
    case StateKind::kExpAvgSq:
    case StateKind::kGradValues:
      return L.nnz;
    default:
      return L.has_bias ? L.p.n_out : 0;
  }
}

float* SparseMLPTrainer::state(int64_t l, StateKind kind) {
  Layer& L = impl_->layers.at(l);
  switch (kind) {
    case StateKind::kValues: return L.p.values.data();
    case StateKind::kBias: return L.p.bias.data();
    case StateKind::kExpAvg: return L.m_values.data();
    case StateKind::kExpAvgSq: return L.v_values.data();
    case StateKind::kBiasExpAvg: return L.m_bias.data();
    case StateKind::kBiasExpAvgSq: return L.v_bias.data();
    case StateKind::kGradValues: return L.grad_values.data();
    case StateKind::kGradBias: return L.grad_bias.data();
  }
  return nullptr;
}

int64_t SparseMLPTrainer::step_count() const { return impl_->t; }
void SparseMLPTrainer::set_step_count(int64_t t) {
  if (t < 0) throw std::invalid_argument("step count must be >= 0");
  impl_->t = t;
}
double SparseMLPTrainer::lr() const { return impl_->adam.lr; }
void SparseMLPTrainer::set_lr(double lr) {
  if (!(lr >= 0.0)) throw std::invalid_argument("lr must be >= 0");
  impl_->adam.lr = lr;
}
void SparseMLPTrainer::set_threads(int threads) {
  impl_->n_threads = std::max(1, threads > 0 ? threads : default_threads());
  impl_->splitT = impl_->make_split(impl_->n_threads);
}
int SparseMLPTrainer::threads() const { return impl_->n_threads; }

}  // namespace engine
}  // namespace lth_sparse
