// pybind11 module lth_sparse._C: build facts here; each op is bound by csrc/<op>.cpp
// through the register_* functions declared in lth_sparse.h.
#include <pybind11/pybind11.h>

#include "lth_sparse.h"

#ifdef LTH_SPARSE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = LTH_SPARSE_VERSION;
#ifdef LTH_SPARSE_OPENMP
  info["openmp"] = true;
  info["max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["max_threads"] = 1;
#endif
#if defined(__AVX512F__)
  info["simd"] = "avx512";
#elif defined(__AVX2__)
  info["simd"] = "avx2";
#elif defined(__ARM_NEON)
  info["simd"] = "neon";
#else
  info["simd"] = "none";
#endif
  info["compiler"] = __VERSION__;
  return info;
}

void set_num_threads(int n) {
#ifdef LTH_SPARSE_OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lth_sparse C++ kernels (CSR sparse matmul, OpenMP)";
  m.def("build_info", &build_info, "Version, OpenMP on/off, max threads, SIMD level, compiler.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"),
        "Set the OpenMP thread count used by the kernels (n <= 0 leaves it unchanged).");
  lth_sparse::register_spmm(m);
  lth_sparse::register_sddmm(m);
  lth_sparse::register_engine(m);
  lth_sparse::register_trainer(m);
}
