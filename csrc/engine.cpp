// Binding of the whole-network engine (csrc/engine/sparse_mlp_engine.h) as _C.SparseMLPEngine.
//
// Every array is checked once, when the engine is built (dtype, shape, layout; the engine then
// checks chaining and the CSR contents). Per call, `forward` checks only x and out (O(1)), and
// `forward_ptr` takes raw addresses (torch's data_ptr()) and checks nothing but the batch size:
// at batch 1 the whole LeNet ticket runs in a few microseconds, so pybind11's argument
// conversion of numpy arrays would be a large share of a call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "binding_checks.h"
#include "engine/sparse_mlp_engine.h"
#include "lth_sparse.h"

namespace py = pybind11;

namespace lth_sparse {
namespace {

using binding::as_array;
using binding::dtype_str;
using binding::has_dtype;
using binding::typed;
using engine::SparseMLPEngine;

constexpr const char* kOp = "SparseMLPEngine";

SparseMLPEngine::Path parse_path(const std::string& p) {
  if (p == "auto") return SparseMLPEngine::Path::kAuto;
  if (p == "gather") return SparseMLPEngine::Path::kGather;
  if (p == "tiled") return SparseMLPEngine::Path::kTiled;
  throw py::value_error(std::string(kOp) + ": path must be 'auto', 'gather' or 'tiled', got '" +
                        p + "'");
}

class PyEngine {
 public:
  PyEngine(const py::sequence& layers, bool copy, int threads) {
    std::vector<engine::LayerView> views;
    const py::ssize_t n = py::len(layers);
    if (n == 0) throw py::value_error(std::string(kOp) + ": layers must not be empty");
    for (py::ssize_t i = 0; i < n; ++i) {
      const std::string name = "layers[" + std::to_string(i) + "]";
      py::object item = layers[i];
      if (!py::isinstance<py::tuple>(item) || py::len(item) != 6) {
        throw py::type_error(std::string(kOp) + ": " + name +
                             " must be a tuple (indptr, indices, values, bias or None, n_in, "
                             "relu)");
      }
      py::tuple t = item.cast<py::tuple>();
      const std::string ip_name = name + ".indptr", ix_name = name + ".indices",
                        v_name = name + ".values", b_name = name + ".bias";
      py::array indices = as_array(kOp, ix_name.c_str(), t[1]);
      const bool u16 = has_dtype<uint16_t>(indices), i32 = has_dtype<int32_t>(indices);
      if (!u16 && !i32) {
        throw py::type_error(std::string(kOp) + ": " + ix_name +
                             " must have dtype uint16 or int32, got " + dtype_str(indices));
      }
      engine::LayerView v;
      v.index_type = u16 ? engine::IndexType::kU16 : engine::IndexType::kI32;
      if (u16) {
        auto a = typed<uint16_t>(kOp, ix_name.c_str(), indices, {-1});
        v.nnz = a.shape(0);
        v.indices = a.data();
      } else {
        auto a = typed<int32_t>(kOp, ix_name.c_str(), indices, {-1});
        v.nnz = a.shape(0);
        v.indices = a.data();
      }
      py::array ip = typed<int32_t>(kOp, ip_name.c_str(), as_array(kOp, ip_name.c_str(), t[0]), {-1});
      if (ip.shape(0) < 1) {
        throw py::value_error(std::string(kOp) + ": " + ip_name +
                              " must have n_out + 1 >= 1 elements, got 0");
      }
      v.n_out = ip.shape(0) - 1;
      v.indptr = static_cast<const int32_t*>(ip.data());
      py::array values = typed<float>(kOp, v_name.c_str(), as_array(kOp, v_name.c_str(), t[2]),
                                      {v.nnz});
      v.values = static_cast<const float*>(values.data());
      py::object bias = t[3];
      if (!bias.is_none()) {
        py::array b = typed<float>(kOp, b_name.c_str(), as_array(kOp, b_name.c_str(), bias),
                                   {v.n_out});
        v.bias = static_cast<const float*>(b.data());
        keep_.append(b);
      }
      v.n_in = t[4].cast<int64_t>();
      v.relu = t[5].cast<bool>();
      keep_.append(ip);
      keep_.append(indices);
      keep_.append(values);
      views.push_back(v);
    }
    try {
      engine_ = std::make_unique<SparseMLPEngine>(
          views, copy ? engine::Memory::kCopy : engine::Memory::kBorrow);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    if (copy) keep_ = py::list();  // the engine owns copies; nothing to keep alive
    engine_->set_threads(threads);
    n_in_ = engine_->n_in();
    n_out_ = engine_->n_out();
    copy_ = copy;
  }

  void forward(const py::object& x_, const py::object& out_, int threads,
               const std::string& path) const {
    const auto p = parse_path(path);
    py::array xa = as_array(kOp, "x", x_), oa = as_array(kOp, "out", out_);
    auto x = typed<float>(kOp, "x", xa, {-1, n_in_});
    const int64_t B = x.shape(0);
    auto out = typed<float>(kOp, "out", oa, {B, n_out_}, true);
    const float* xp = x.data();
    float* op = out.mutable_data();
    if (B > 0 && n_out_ > 0 && overlaps(xp, B * n_in_, op, B * n_out_)) {
      throw py::value_error(std::string(kOp) + ": out must not share memory with x");
    }
    py::gil_scoped_release nogil;
    engine_->forward_path(xp, B, op, threads, p);
  }

  // Trusted fast path: x and out are addresses of C-contiguous float32 (batch, n_in) and
  // (batch, n_out) buffers that stay alive during the call.
  void forward_ptr(uintptr_t x, int64_t batch, uintptr_t out) const {
    if (batch < 0) throw py::value_error(std::string(kOp) + ": batch must be >= 0");
    if (batch > 0 && (x == 0 || out == 0)) throw py::value_error(std::string(kOp) + ": null pointer");
    py::gil_scoped_release nogil;
    engine_->forward(reinterpret_cast<const float*>(x), batch, reinterpret_cast<float*>(out));
  }

  const SparseMLPEngine& engine() const { return *engine_; }
  SparseMLPEngine& engine() { return *engine_; }
  bool copies() const { return copy_; }

 private:
  static bool overlaps(const float* a, int64_t na, const float* b, int64_t nb) {
    return a < b + nb && b < a + na;
  }

  std::unique_ptr<SparseMLPEngine> engine_;
  py::list keep_;  // borrowed arrays, kept alive as long as the engine
  int64_t n_in_ = 0, n_out_ = 0;
  bool copy_ = true;
};

}  // namespace

void register_engine(py::module_& m) {
  py::class_<PyEngine>(m, "SparseMLPEngine", R"doc(A sparse MLP (CSR layers, fused bias + ReLU) run in one native call.

SparseMLPEngine(layers, copy=True, threads=0)
layers: sequence of (indptr, indices, values, bias, n_in, relu) per layer, input to output:
indptr int32 (n_out + 1,), indices uint16 or int32 (nnz,) sorted per row in [0, n_in),
values float32 (nnz,), bias float32 (n_out,) or None, n_in int, relu bool. Every array must be
C-contiguous with exactly that dtype (no conversion). Layer i's n_in must equal layer i-1's
n_out. copy=True: the engine owns copies; copy=False: it reads the given arrays (kept alive
by this object; modify them in place only while no forward runs). threads <= 0: the OpenMP
default. The pattern is checked once here (ValueError naming the layer).)doc")
      .def(py::init<const py::sequence&, bool, int>(), py::arg("layers"), py::arg("copy") = true,
           py::arg("threads") = 0)
      .def("forward", &PyEngine::forward, py::arg("x"), py::arg("out"), py::arg("threads") = 0,
           py::arg("path") = "auto",
           R"doc(out (B, n_out) = the network applied to x (B, n_in); both float32 numpy arrays,
C-contiguous, not overlapping. Every element of out is written. The GIL is released.
path: 'auto', 'gather' (row-major, for a few rows) or 'tiled' (batch tiles, SIMD over the
batch); threads <= 0 uses the engine's setting.)doc")
      .def("forward_ptr", &PyEngine::forward_ptr, py::arg("x_ptr"), py::arg("batch"),
           py::arg("out_ptr"),
           R"doc(Unchecked fast path: x_ptr and out_ptr are the addresses (e.g. torch data_ptr())
of C-contiguous float32 buffers of shape (batch, n_in) and (batch, n_out) that do not overlap.
Nothing but batch >= 0 is checked: the caller guarantees the rest. The GIL is released.)doc")
      .def_property_readonly("n_in", [](const PyEngine& e) { return e.engine().n_in(); })
      .def_property_readonly("n_out", [](const PyEngine& e) { return e.engine().n_out(); })
      .def_property_readonly("n_layers", [](const PyEngine& e) { return e.engine().n_layers(); })
      .def_property_readonly("nnz", [](const PyEngine& e) { return e.engine().nnz(); })
      .def_property_readonly("copies", &PyEngine::copies,
                             "True when the engine owns copies of the arrays.")
      .def_property(
          "threads", [](const PyEngine& e) { return e.engine().threads(); },
          [](PyEngine& e, int t) { e.engine().set_threads(t); },
          "Threads per forward (0: the OpenMP default).")
      .def_property(
          "parallel_min_work", [](const PyEngine& e) { return e.engine().parallel_min_work(); },
          [](PyEngine& e, int64_t w) { e.engine().set_parallel_min_work(w); },
          "Calls with fewer multiply-adds ((nnz + n_out) * batch) run on one thread; "
          "0 always uses the team, < 0 restores the default.")
      .def_property_readonly_static(
          "GATHER_MAX_BATCH", [](py::object) { return SparseMLPEngine::gather_max_batch(); })
      .def_property_readonly_static("TILE_WIDTH",
                                    [](py::object) { return SparseMLPEngine::tile_width(); });
}

}  // namespace lth_sparse
