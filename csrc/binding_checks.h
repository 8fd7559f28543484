// Shared argument checks of the kernel bindings (csrc/spmm.cpp, csrc/sddmm.cpp).
//
// Every array argument must already have the exact dtype and be C-contiguous: arrays are
// viewed as py::array_t<T, py::array::c_style> only after an exact check (no forcecast, no
// implicit copy), so a wrong dtype raises TypeError and a wrong shape or layout ValueError,
// each naming the argument, instead of being silently converted -- a converted `out` would be
// a copy and the result would be lost. Only dtype, shape and layout are checked here, in O(1):
// the CSR contents are validated once, where a pattern enters the package.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

#include "cpu/common_cpu.h"

namespace lth_sparse {
namespace binding {

namespace py = pybind11;
using cpu::kSmallBatch;

inline std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The argument as a numpy array (TypeError for anything else, e.g. a torch tensor).
inline py::array as_array(const char* op, const char* name, const py::handle& h) {
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(std::string(op) + ": " + name + " must be a numpy array (torch tensors: " +
                         "pass t.detach().numpy()), got " +
                         py::str(py::type::of(h).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(h);
}

template <typename T>
inline bool has_dtype(const py::array& a) {
  return py::array_t<T>::check_(a);  // exact dtype (and byte order), layout not looked at
}

template <typename T>
inline const char* dtype_name() {
  if (std::is_same<T, float>::value) return "float32";
  if (std::is_same<T, double>::value) return "float64";
  if (std::is_same<T, int32_t>::value) return "int32";
  return "uint16";
}

// Checked, typed, C-contiguous view (no copy). ndim/shape checks: -1 = any extent.
template <typename T>
inline py::array_t<T, py::array::c_style> typed(const char* op, const char* name, const py::array& a,
                                         std::initializer_list<int64_t> shape,
                                         bool writeable = false) {
  if (!has_dtype<T>(a)) {
    throw py::type_error(std::string(op) + ": " + name + " must have dtype " + dtype_name<T>() +
                         ", got " + dtype_str(a));
  }
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int i = 0;
  for (int64_t s : shape) {
    if (ok && s >= 0 && a.shape(i) != s) ok = false;
    ++i;
  }
  if (!ok) {
    std::ostringstream want;
    want << "(";
    i = 0;
    for (int64_t s : shape) {
      want << (i++ ? ", " : "");
      if (s >= 0) want << s; else want << "*";
    }
    want << (shape.size() == 1 ? ",)" : ")");
    throw py::value_error(std::string(op) + ": " + name + " must have shape " + want.str() +
                          ", got " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(op) + ": " + name +
                          " must be C-contiguous (call .contiguous() / np.ascontiguousarray)");
  }
  if (writeable && !a.writeable()) {
    throw py::value_error(std::string(op) + ": " + name + " must be writeable");
  }
  return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(a);
}

// indptr: int32, (n_rows + 1,), starting at 0 and ending at nnz. Only the two endpoints are
// checked (O(1)): patterns are validated once where they enter (CSRMatrix, the ticket loader),
// and a per-call O(rows) scan costs as much as a small layer's kernel.
inline py::array_t<int32_t, py::array::c_style> checked_indptr(const char* op, const py::array& a,
                                                               int64_t n_rows, int64_t nnz) {
  auto ip = typed<int32_t>(op, "indptr", a, {n_rows + 1});
  const int32_t* p = ip.data();
  if (p[0] != 0 || p[n_rows] != nnz) {
    throw py::value_error(std::string(op) + ": indptr must start at 0 and end at nnz = " +
                          "len(indices) = " + std::to_string(nnz));
  }
  return ip;
}

enum class Path { Auto, Gather, Batched };

inline Path parse_path(const char* op, const std::string& p) {
  if (p == "auto") return Path::Auto;
  if (p == "gather") return Path::Gather;
  if (p == "batched") return Path::Batched;
  throw py::value_error(std::string(op) + ": path must be 'auto', 'gather' or 'batched', got '" +
                        p + "'");
}

inline bool use_batched(Path p, int64_t B) {
  return p == Path::Batched || (p == Path::Auto && B > kSmallBatch);
}

// Elements of workspace the batched path of `op` needs (0 on the gather path).
inline int64_t workspace_elems(const std::string& op, int64_t B, int64_t N, int64_t K, bool is_double,
                        Path path) {
  if (!use_batched(path, B)) return 0;
  const int64_t Bp = is_double ? cpu::padded_batch<double>(B) : cpu::padded_batch<float>(B);
  // N, K: the shape of W (out_features, in_features), for all three ops.
  if (op == "spmm") return K * Bp;         // x^T, x (B, K)
  if (op == "spmm_t") return N * Bp;       // dy^T, dy (B, N)
  if (op == "sddmm") return (N + K) * Bp;  // dy^T and x^T
  throw py::value_error("workspace_size: op must be 'spmm', 'spmm_t' or 'sddmm', got '" + op + "'");
}

template <typename T>
inline T* checked_workspace(const char* op, const py::object& ws, int64_t need) {
  if (need == 0) return nullptr;
  if (ws.is_none()) {
    throw py::value_error(std::string(op) + ": the batched path needs a workspace of " +
                          std::to_string(need) + " " + dtype_name<T>() +
                          " elements (see workspace_size)");
  }
  py::array a = as_array(op, "workspace", ws);
  auto w = typed<T>(op, "workspace", a, {-1}, true);
  if (w.shape(0) < need) {
    throw py::value_error(std::string(op) + ": workspace holds " + std::to_string(w.shape(0)) +
                          " elements, the batched path needs " + std::to_string(need));
  }
  return w.mutable_data();
}

}  // namespace binding
}  // namespace lth_sparse
