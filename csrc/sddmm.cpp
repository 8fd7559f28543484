// Bindings and dtype dispatch of sddmm (kernels: csrc/cpu/sddmm_cpu.cpp): the weight gradient
// at the nonzeros only. The caller allocates every output and workspace; the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding_checks.h"
#include "cpu/sddmm_cpu.h"
#include "lth_sparse.h"

namespace py = pybind11;

namespace lth_sparse {
namespace {

using namespace binding;

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

void register_sddmm(py::module_& m) {
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

}

}  // namespace lth_sparse
