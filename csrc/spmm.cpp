// Bindings and dtype dispatch of spmm and spmm_t (kernels: csrc/cpu/spmm_cpu.cpp).
// The caller (lth_sparse/sparse/kernels/cpu.py) allocates every output and workspace; the GIL
// is released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding_checks.h"
#include "cpu/spmm_cpu.h"
#include "lth_sparse.h"

namespace py = pybind11;

namespace lth_sparse {
namespace {

using namespace binding;

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

}  // namespace

void register_spmm(py::module_& m) {
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
