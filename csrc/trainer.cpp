// Bindings of the whole-network sparse trainer (csrc/engine/sparse_mlp_trainer.{h,cpp}).
//
// Arrays are checked for exact dtype, shape and layout (binding_checks.h: no silent copies);
// row ids and labels, which index memory, are range-checked on every call (O(batch)); the GIL
// is released around the native step.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "binding_checks.h"
#include "engine/sparse_mlp_trainer.h"
#include "lth_sparse.h"

namespace py = pybind11;

namespace lth_sparse {
namespace {

using namespace binding;
using engine::SparseMLPTrainer;
using engine::StateKind;
using engine::TrainerLayer;

StateKind parse_state(const std::string& name) {
  if (name == "values") return StateKind::kValues;
  if (name == "bias") return StateKind::kBias;
  if (name == "exp_avg") return StateKind::kExpAvg;
  if (name == "exp_avg_sq") return StateKind::kExpAvgSq;
  if (name == "bias_exp_avg") return StateKind::kBiasExpAvg;
  if (name == "bias_exp_avg_sq") return StateKind::kBiasExpAvgSq;
  if (name == "grad_values") return StateKind::kGradValues;
  if (name == "grad_bias") return StateKind::kGradBias;
  throw py::value_error("unknown trainer state '" + name + "'; names are values, bias, exp_avg, "
                        "exp_avg_sq, bias_exp_avg, bias_exp_avg_sq, grad_values, grad_bias");
}

template <typename T>
std::vector<T> copy_1d(const char* op, const char* name, const py::handle& h) {
  auto a = typed<T>(op, name, as_array(op, name, h), {-1});
  return std::vector<T>(a.data(), a.data() + a.shape(0));
}

// One layer from (indptr int32, indices int32|uint16, values float32, bias float32|None,
// n_in, relu).
TrainerLayer layer_from(const py::handle& item, size_t l) {
  const std::string op = "SparseMLPTrainer layer " + std::to_string(l);
  const char* o = op.c_str();
  py::tuple t = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
  if (t.size() != 6) {
    throw py::value_error(op + ": expected (indptr, indices, values, bias, n_in, relu), got " +
                          std::to_string(t.size()) + " items");
  }
  TrainerLayer L;
  L.indptr = copy_1d<int32_t>(o, "indptr", t[0]);
  py::array idx = as_array(o, "indices", t[1]);
  if (has_dtype<uint16_t>(idx)) {
    const auto u = copy_1d<uint16_t>(o, "indices", idx);
    L.indices.assign(u.begin(), u.end());
  } else if (has_dtype<int32_t>(idx)) {
    L.indices = copy_1d<int32_t>(o, "indices", idx);
  } else {
    throw py::type_error(op + ": indices must have dtype int32 or uint16, got " + dtype_str(idx));
  }
  L.values = copy_1d<float>(o, "values", t[2]);
  if (!t[3].is_none()) L.bias = copy_1d<float>(o, "bias", t[3]);
  L.n_in = t[4].cast<int64_t>();
  L.relu = t[5].cast<bool>();
  L.n_out = static_cast<int64_t>(L.indptr.size()) - 1;
  if (L.n_out < 0) throw py::value_error(op + ": indptr must hold n_out + 1 >= 1 entries");
  return L;
}

std::unique_ptr<SparseMLPTrainer> make_trainer(const py::sequence& layers, double lr,
                                               std::pair<double, double> betas, double eps,
                                               double weight_decay, int threads) {
  std::vector<TrainerLayer> ls;
  for (size_t l = 0; l < layers.size(); ++l) ls.push_back(layer_from(layers[l], l));
  engine::AdamConfig adam;
  adam.lr = lr;
  adam.beta1 = betas.first;
  adam.beta2 = betas.second;
  adam.eps = eps;
  adam.weight_decay = weight_decay;
  try {
    return std::make_unique<SparseMLPTrainer>(std::move(ls), adam, threads);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(std::string("SparseMLPTrainer: ") + e.what());
  }
}

// data (N, n_in) float32 and labels (N,) int64, checked against the trainer.
struct Batch {
  py::array_t<float, py::array::c_style> x;
  py::array_t<int64_t, py::array::c_style> y;
  int64_t n;
};

Batch checked_data(const char* op, const SparseMLPTrainer& t, const py::object& x_,
                   const py::object& y_) {
  py::array xa = as_array(op, "x", x_), ya = as_array(op, "labels", y_);
  if (!has_dtype<int64_t>(ya)) {
    throw py::type_error(std::string(op) + ": labels must have dtype int64 (class ids), got " +
                         dtype_str(ya));
  }
  Batch b{typed<float>(op, "x", xa, {-1, t.n_in()}), {}, 0};
  b.n = b.x.shape(0);
  if (ya.ndim() != 1 || ya.shape(0) != b.n) {
    throw py::value_error(std::string(op) + ": labels must have shape (" + std::to_string(b.n) +
                          ",) to match x, got " + shape_str(ya));
  }
  if (!(ya.flags() & py::array::c_style)) {
    throw py::value_error(std::string(op) + ": labels must be C-contiguous");
  }
  b.y = py::reinterpret_borrow<py::array_t<int64_t, py::array::c_style>>(ya);
  return b;
}

void check_label(const char* op, int64_t y, int64_t pos, int64_t n_classes) {
  if (y < 0 || y >= n_classes) {
    throw py::value_error(std::string(op) + ": label " + std::to_string(y) + " of example " +
                          std::to_string(pos) + " is outside [0, " + std::to_string(n_classes) +
                          "): the network has " + std::to_string(n_classes) + " outputs");
  }
}

double step(SparseMLPTrainer& t, const py::object& x_, const py::object& y_,
            const py::object& rows_) {
  const char* op = "SparseMLPTrainer.step";
  Batch b = checked_data(op, t, x_, y_);
  const int64_t* labels = b.y.data();
  const int64_t C = t.n_out();
  const int64_t* rows = nullptr;
  int64_t batch = b.n;
  py::array_t<int64_t, py::array::c_style> rows_arr;
  if (!rows_.is_none()) {
    py::array ra = as_array(op, "rows", rows_);
    if (!has_dtype<int64_t>(ra)) {
      throw py::type_error(std::string(op) + ": rows must have dtype int64, got " +
                           dtype_str(ra));
    }
    rows_arr = typed<int64_t>(op, "rows", ra, {-1});
    rows = rows_arr.data();
    batch = rows_arr.shape(0);
    for (int64_t i = 0; i < batch; ++i) {
      if (rows[i] < 0 || rows[i] >= b.n) {
        throw py::value_error(std::string(op) + ": row id " + std::to_string(rows[i]) +
                              " at position " + std::to_string(i) + " is outside [0, " +
                              std::to_string(b.n) + ") (x has " + std::to_string(b.n) +
                              " rows)");
      }
      check_label(op, labels[rows[i]], rows[i], C);
    }
  } else {
    for (int64_t i = 0; i < batch; ++i) check_label(op, labels[i], i, C);
  }
  if (batch < 1) {
    throw py::value_error(std::string(op) + ": the batch is empty; pass at least one example");
  }
  const float* xp = b.x.data();
  py::gil_scoped_release nogil;
  return t.step(xp, labels, rows, batch);
}

py::tuple evaluate(SparseMLPTrainer& t, const py::object& x_, const py::object& y_) {
  const char* op = "SparseMLPTrainer.evaluate";
  Batch b = checked_data(op, t, x_, y_);
  const int64_t* labels = b.y.data();
  for (int64_t i = 0; i < b.n; ++i) check_label(op, labels[i], i, t.n_out());
  std::pair<double, int64_t> r;
  {
    const float* xp = b.x.data();
    py::gil_scoped_release nogil;
    r = t.evaluate(xp, labels, b.n);
  }
  return py::make_tuple(r.first, r.second);
}

py::array forward(SparseMLPTrainer& t, const py::object& x_, const py::object& out_) {
  const char* op = "SparseMLPTrainer.forward";
  auto x = typed<float>(op, "x", as_array(op, "x", x_), {-1, t.n_in()});
  const int64_t n = x.shape(0);
  py::array out;
  if (out_.is_none()) {
    out = py::array_t<float>({n, t.n_out()});
  } else {
    out = as_array(op, "out", out_);
  }
  auto o = typed<float>(op, "out", out, {n, t.n_out()}, true);
  const float* xp = x.data();
  float* op_ = o.mutable_data();
  {
    py::gil_scoped_release nogil;
    t.forward(xp, n, op_);
  }
  return out;
}

void check_layer_id(const SparseMLPTrainer& t, int64_t l) {
  if (l < 0 || l >= t.n_layers()) {
    throw py::index_error("layer " + std::to_string(l) + " out of range: the trainer has " +
                          std::to_string(t.n_layers()) + " layers");
  }
}

py::array get_state(SparseMLPTrainer& t, int64_t l, const std::string& name) {
  check_layer_id(t, l);
  const StateKind k = parse_state(name);
  const int64_t n = t.state_size(l, k);
  py::array_t<float> out(n);
  if (n) std::memcpy(out.mutable_data(), t.state(l, k), sizeof(float) * n);
  return out;
}

void set_state(SparseMLPTrainer& t, int64_t l, const std::string& name, const py::object& v) {
  check_layer_id(t, l);
  const StateKind k = parse_state(name);
  if (k == StateKind::kGradValues || k == StateKind::kGradBias) {
    throw py::value_error("trainer state '" + name + "' is computed by step and read-only");
  }
  const int64_t n = t.state_size(l, k);
  const std::string op = "SparseMLPTrainer.set_state(" + std::to_string(l) + ", '" + name + "')";
  auto a = typed<float>(op.c_str(), "value", as_array(op.c_str(), "value", v), {n});
  if (n) std::memcpy(t.state(l, k), a.data(), sizeof(float) * n);
}

}  // namespace

void register_trainer(py::module_& m) {
  py::class_<SparseMLPTrainer>(m, "SparseMLPTrainer",
                               "A sparse MLP (CSR layers) trained with Adam, one native call per "
                               "step: forward, softmax cross-entropy, backward at the nonzeros, "
                               "and torch.optim.Adam's update.")
      .def(py::init(&make_trainer), py::arg("layers"), py::kw_only(), py::arg("lr"),
           py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8,
           py::arg("weight_decay") = 0.0, py::arg("threads") = 0,
           "layers: sequence of (indptr int32 (n_out+1,), indices int32|uint16 (nnz,), values "
           "float32 (nnz,), bias float32 (n_out,) or None, n_in, relu). Arrays are copied; "
           "patterns are validated (O(nnz)). threads <= 0: the OpenMP default.")
      .def("step", &step, py::arg("x"), py::arg("labels"), py::arg("rows") = py::none(),
           "One Adam step on x[rows] (B, n_in) float32 with labels[rows] int64 (all of x when "
           "rows is None). Returns the batch's mean cross-entropy before the update.")
      .def("evaluate", &evaluate, py::arg("x"), py::arg("labels"),
           "(sum of cross-entropy losses, number correct) of x (N, n_in) float32 against labels "
           "(N,) int64.")
      .def("forward", &forward, py::arg("x"), py::arg("out") = py::none(),
           "logits (N, n_out) float32 of x (N, n_in) float32, into `out` when given.")
      .def("get_state", &get_state, py::arg("layer"), py::arg("name"),
           "A copy of one per-parameter array (values, bias, exp_avg, exp_avg_sq, bias_exp_avg, "
           "bias_exp_avg_sq, grad_values, grad_bias) as float32 (nnz,) or (n_out,).")
      .def("set_state", &set_state, py::arg("layer"), py::arg("name"), py::arg("value"),
           "Overwrite one per-parameter array (not the gradients) from float32 of its size.")
      .def("layer_shape", [](const SparseMLPTrainer& t, int64_t l) {
             check_layer_id(t, l);
             const auto& L = t.layer(l);
             return py::make_tuple(L.n_out, L.n_in, static_cast<int64_t>(L.indices.size()),
                                   !L.bias.empty(), L.relu);
           }, py::arg("layer"), "(n_out, n_in, nnz, has_bias, relu) of one layer.")
      .def_property_readonly("n_layers", &SparseMLPTrainer::n_layers)
      .def_property_readonly("n_in", &SparseMLPTrainer::n_in)
      .def_property_readonly("n_out", &SparseMLPTrainer::n_out)
      .def_property("step_count", &SparseMLPTrainer::step_count,
                    [](SparseMLPTrainer& t, int64_t v) {
                      if (v < 0) throw py::value_error("step_count must be >= 0");
                      t.set_step_count(v);
                    }, "Adam's step count t (bias corrections use t after incrementing).")
      .def_property("lr", &SparseMLPTrainer::lr,
                    [](SparseMLPTrainer& t, double v) {
                      if (!(v >= 0.0)) throw py::value_error("lr must be >= 0");
                      t.set_lr(v);
                    })
      .def_property("threads", &SparseMLPTrainer::threads, &SparseMLPTrainer::set_threads);
}

}  // namespace lth_sparse
