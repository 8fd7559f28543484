// Bindings of the CPU CSR kernels: spmm, spmm_t, sddmm, workspace_size.
//
// Every array argument must already have the exact dtype and be C-contiguous: arrays are
// viewed as py::array_t<T, py::array::c_style> only after an exact check (no forcecast, no
// implicit copy), so a wrong dtype raises TypeError and a wrong shape or layout ValueError,
// each naming the argument, instead of being silently converted -- a converted `out` would be
// a copy and the result would be lost. The caller (lth_sparse/kernels/cpu.py) allocates every
// output and workspace; the GIL is released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

#include "cpu/common_cpu.h"
#include "cpu/kernels_cpu.h"
#include "lth_sparse.h"

namespace py = pybind11;

namespace lth_sparse {
namespace {

using cpu::kSmallBatch;

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The argument as a numpy array (TypeError for anything else, e.g. a torch tensor).
py::array as_array(const char* op, const char* name, const py::handle& h) {
  if (!py::isinstance<py::array>(h)) {
    throw py::type_error(std::string(op) + ": " + name + " must be a numpy array (torch tensors: " +
                         "pass t.detach().numpy()), got " +
                         py::str(py::type::of(h).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(h);
}

template <typename T>
bool has_dtype(const py::array& a) {
  return py::array_t<T>::check_(a);  // exact dtype (and byte order), layout not looked at
}

template <typename T>
const char* dtype_name() {
  if (std::is_same<T, float>::value) return "float32";
  if (std::is_same<T, double>::value) return "float64";
  if (std::is_same<T, int32_t>::value) return "int32";
  return "uint16";
}

// Checked, typed, C-contiguous view (no copy). ndim/shape checks: -1 = any extent.
template <typename T>
py::array_t<T, py::array::c_style> typed(const char* op, const char* name, const py::array& a,
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

// indptr: int32, (n_rows + 1,), starts at 0, non-decreasing, ends at nnz.
py::array_t<int32_t, py::array::c_style> checked_indptr(const char* op, const py::array& a,
                                                        int64_t n_rows, int64_t nnz) {
  auto ip = typed<int32_t>(op, "indptr", a, {n_rows + 1});
  const int32_t* p = ip.data();
  bool ok = p[0] == 0 && p[n_rows] == nnz;
  for (int64_t r = 0; ok && r < n_rows; ++r) ok = p[r] <= p[r + 1];
  if (!ok) {
    throw py::value_error(std::string(op) + ": indptr must start at 0, never decrease and end " +
                          "at nnz = len(indices) = " + std::to_string(nnz));
  }
  return ip;
}

enum class Path { Auto, Gather, Batched };

Path parse_path(const char* op, const std::string& p) {
  if (p == "auto") return Path::Auto;
  if (p == "gather") return Path::Gather;
  if (p == "batched") return Path::Batched;
  throw py::value_error(std::string(op) + ": path must be 'auto', 'gather' or 'batched', got '" +
                        p + "'");
}

bool use_batched(Path p, int64_t B) {
  return p == Path::Batched || (p == Path::Auto && B > kSmallBatch);
}

// Elements of workspace the batched path of `op` needs (0 on the gather path).
int64_t workspace_elems(const std::string& op, int64_t B, int64_t N, int64_t K, bool is_double,
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
T* checked_workspace(const char* op, const py::object& ws, int64_t need) {
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

// ------------------------------------------------------------------------------------ spmm

template <typename T, typename I>
void spmm_typed(const char* op, const py::array& x_, const py::array& indptr_,
                const py::array& indices_, const py::array& values_, const py::object& bias_,
                bool relu, const py::array& out_, const py::object& ws_, Path path,
                int64_t n_cols) {
  auto x = typed<T>(op, "x", x_, {-1, n_cols});
  const int64_t B = x.shape(0), K = x.shape(1);
  auto out = typed<T>(op, "out", out_, {B, -1}, true);
  const int64_t N = out.shape(1);
  auto indices = typed<I>(op, "indices", indices_, {-1});
  const int64_t nnz = indices.shape(0);
  auto values = typed<T>(op, "values", values_, {nnz});
  auto indptr = checked_indptr(op, indptr_, N, nnz);
  const T* bias = nullptr;
  py::array_t<T, py::array::c_style> bias_arr;
  if (!bias_.is_none()) {
    bias_arr = typed<T>(op, "bias", as_array(op, "bias", bias_), {N});
    bias = bias_arr.data();
  }
  const bool batched = use_batched(path, B);
  T* ws = checked_workspace<T>(op, ws_, batched ? K * cpu::padded_batch<T>(B) : 0);

  const T* xp = x.data();
  const int32_t* ip = indptr.data();
  const I* ix = indices.data();
  const T* vp = values.data();
  T* op_ = out.mutable_data();
  py::gil_scoped_release nogil;
  if (B == 0 || N == 0) return;
  if (batched) {
    cpu::spmm_batched<T, I>(xp, B, K, ip, ix, vp, N, bias, relu, op_, ws);
  } else {
    cpu::spmm_gather<T, I>(xp, B, K, ip, ix, vp, N, bias, relu, op_);
  }
}

// Dispatch on (values dtype, indices dtype); everything else must match the values dtype.
void spmm_dispatch(const char* op, const py::object& x_, const py::object& indptr_,
                   const py::object& indices_, const py::object& values_,
                   const py::object& bias_, bool relu, const py::object& out_,
                   const py::object& ws_, const std::string& path_, int64_t n_cols) {
  const Path path = parse_path(op, path_);
  py::array x = as_array(op, "x", x_), indptr = as_array(op, "indptr", indptr_),
            indices = as_array(op, "indices", indices_), values = as_array(op, "values", values_),
            out = as_array(op, "out", out_);
  const bool f32 = has_dtype<float>(values), f64 = has_dtype<double>(values);
  const bool i32 = has_dtype<int32_t>(indices), u16 = has_dtype<uint16_t>(indices);
  if (!f32 && !f64) {
    throw py::type_error(std::string(op) + ": values must have dtype float32 or float64, got " +
                         dtype_str(values) + " (upcast float16/bfloat16 first)");
  }
  if (!i32 && !u16) {
    throw py::type_error(std::string(op) + ": indices must have dtype int32 or uint16, got " +
                         dtype_str(indices));
  }
  if (f32 && i32) spmm_typed<float, int32_t>(op, x, indptr, indices, values, bias_, relu, out, ws_, path, n_cols);
  if (f32 && u16) spmm_typed<float, uint16_t>(op, x, indptr, indices, values, bias_, relu, out, ws_, path, n_cols);
  if (f64 && i32) spmm_typed<double, int32_t>(op, x, indptr, indices, values, bias_, relu, out, ws_, path, n_cols);
  if (f64 && u16) spmm_typed<double, uint16_t>(op, x, indptr, indices, values, bias_, relu, out, ws_, path, n_cols);
}

// ------------------------------------------------------------------------------------ sddmm

template <typename T, typename I>
void sddmm_typed(const py::array& dy_, const py::array& x_, const py::array& indptr_,
                 const py::array& indices_, const py::array& out_, const py::object& ws_,
                 Path path) {
  const char* op = "sddmm";
  auto dy = typed<T>(op, "dy", dy_, {-1, -1});
  const int64_t B = dy.shape(0), N = dy.shape(1);
  auto x = typed<T>(op, "x", x_, {B, -1});
  const int64_t K = x.shape(1);
  auto indices = typed<I>(op, "indices", indices_, {-1});
  const int64_t nnz = indices.shape(0);
  auto out = typed<T>(op, "out", out_, {nnz}, true);
  auto indptr = checked_indptr(op, indptr_, N, nnz);
  const bool batched = use_batched(path, B) && B > 0;
  T* ws = checked_workspace<T>(op, ws_, batched ? (N + K) * cpu::padded_batch<T>(B) : 0);

  const T* dyp = dy.data();
  const T* xp = x.data();
  const int32_t* ip = indptr.data();
  const I* ix = indices.data();
  T* op_ = out.mutable_data();
  py::gil_scoped_release nogil;
  if (batched) {
    cpu::sddmm_batched<T, I>(dyp, xp, B, N, K, ip, ix, op_, ws);
  } else {
    cpu::sddmm_gather<T, I>(dyp, xp, B, N, K, ip, ix, op_);
  }
}

void sddmm_dispatch(const py::object& dy_, const py::object& x_, const py::object& indptr_,
                    const py::object& indices_, const py::object& out_, const py::object& ws_,
                    const std::string& path_) {
  const char* op = "sddmm";
  const Path path = parse_path(op, path_);
  py::array dy = as_array(op, "dy", dy_), x = as_array(op, "x", x_),
            indptr = as_array(op, "indptr", indptr_), indices = as_array(op, "indices", indices_),
            out = as_array(op, "out", out_);
  const bool f32 = has_dtype<float>(dy), f64 = has_dtype<double>(dy);
  const bool i32 = has_dtype<int32_t>(indices), u16 = has_dtype<uint16_t>(indices);
  if (!f32 && !f64) {
    throw py::type_error(std::string(op) + ": dy must have dtype float32 or float64, got " +
                         dtype_str(dy) + " (upcast float16/bfloat16 first)");
  }
  if (!i32 && !u16) {
    throw py::type_error(std::string(op) + ": indices must have dtype int32 or uint16, got " +
                         dtype_str(indices));
  }
  if (f32 && i32) sddmm_typed<float, int32_t>(dy, x, indptr, indices, out, ws_, path);
  if (f32 && u16) sddmm_typed<float, uint16_t>(dy, x, indptr, indices, out, ws_, path);
  if (f64 && i32) sddmm_typed<double, int32_t>(dy, x, indptr, indices, out, ws_, path);
  if (f64 && u16) sddmm_typed<double, uint16_t>(dy, x, indptr, indices, out, ws_, path);
}

}  // namespace

void register_cpu_kernels(py::module_& m) {
  m.attr("SMALL_BATCH") = kSmallBatch;

  m.def(
      "spmm",
      [](py::object x, py::object indptr, py::object indices, py::object values, py::object bias,
         bool relu, py::object out, py::object workspace, const std::string& path) {
        spmm_dispatch("spmm", x, indptr, indices, values, bias, relu, out, workspace, path, -1);
      },
      py::arg("x"), py::arg("indptr"), py::arg("indices"), py::arg("values"), py::arg("bias"),
      py::arg("relu"), py::arg("out"), py::arg("workspace") = py::none(),
      py::arg("path") = "auto",
      R"doc(out (B, N) = x (B, K) @ W^T (+ bias) (then ReLU if relu), W in CSR of shape (N, K).

x, values, bias (N,) or None, out: all float32 or all float64, C-contiguous; indptr (N+1,)
int32; indices (nnz,) int32 or uint16, each in [0, K) (not checked). Every element of out is
written. path: 'gather' (row-major x, no workspace), 'batched' (x transposed into workspace,
one SIMD multiply-add over the batch per nonzero), or 'auto' (gather when B <= SMALL_BATCH).
The batched path needs workspace: a 1-D array of the values dtype with at least
workspace_size('spmm', B, N, K, dtype) elements (its contents are overwritten).)doc");

  m.def(
      "spmm_t",
      [](py::object dy, py::object t_indptr, py::object t_indices, py::object t_values,
         py::object out, py::object workspace, const std::string& path) {
        spmm_dispatch("spmm_t", dy, t_indptr, t_indices, t_values, py::none(), false, out,
                      workspace, path, -1);
      },
      py::arg("dy"), py::arg("t_indptr"), py::arg("t_indices"), py::arg("t_values"),
      py::arg("out"), py::arg("workspace") = py::none(), py::arg("path") = "auto",
      R"doc(out (B, K) = dy (B, N) @ W, with W^T given in CSR of shape (K, N).

The spmm kernel without bias or ReLU: rows of W^T are split across threads, so no atomics.
Same dtypes, paths and workspace rules as spmm (workspace_size('spmm_t', B, N, K, dtype) with
(N, K) the shape of W).)doc");

  m.def(
      "sddmm",
      [](py::object dy, py::object x, py::object indptr, py::object indices, py::object out,
         py::object workspace, const std::string& path) {
        sddmm_dispatch(dy, x, indptr, indices, out, workspace, path);
      },
      py::arg("dy"), py::arg("x"), py::arg("indptr"), py::arg("indices"), py::arg("out"),
      py::arg("workspace") = py::none(), py::arg("path") = "auto",
      R"doc(out (nnz,): out[j] = sum_b dy[b, row_j] * x[b, col_j] for the pattern of W (N, K).

dy (B, N), x (B, K), out: all float32 or all float64, C-contiguous; indptr (N+1,) int32;
indices int32 or uint16. The batched path (default for B > SMALL_BATCH) transposes dy and x into
workspace (at least workspace_size('sddmm', B, N, K, dtype) elements) so that each nonzero is a
contiguous dot product.)doc");

  m.def(
      "workspace_size",
      [](const std::string& op, int64_t B, int64_t N, int64_t K, py::object dtype,
         const std::string& path) {
        const py::dtype dt = py::dtype::from_args(dtype);
        const bool is_double = dt.kind() == 'f' && dt.itemsize() == 8;
        const bool is_float = dt.kind() == 'f' && dt.itemsize() == 4;
        if (!is_double && !is_float) {
          throw py::type_error("workspace_size: dtype must be float32 or float64");
        }
        if (B < 0 || N < 0 || K < 0) throw py::value_error("workspace_size: sizes must be >= 0");
        return workspace_elems(op, B, N, K, is_double, parse_path("workspace_size", path));
      },
      py::arg("op"), py::arg("B"), py::arg("N"), py::arg("K"), py::arg("dtype"),
      py::arg("path") = "auto",
      R"doc(Elements of workspace that op ('spmm', 'spmm_t', 'sddmm') needs for batch B, weight W of
shape (N, K) = (out_features, in_features) and dtype on the given path (0 when none).)doc");
}

}  // namespace lth_sparse
