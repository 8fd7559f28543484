#pragma once
#include <pybind11/pybind11.h>

namespace lth_sparse {
// Defined in csrc/cpu/kernels_cpu.cpp: binds spmm / spmm_t / sddmm onto the module.
void register_cpu_kernels(pybind11::module_& m);
}  // namespace lth_sparse
