#pragma once
#include <pybind11/pybind11.h>

namespace lth_sparse {
// Each binds its ops onto lth_sparse._C (called from csrc/module.cpp).
void register_spmm(pybind11::module_& m);   // csrc/spmm.cpp: spmm, spmm_t, workspace_size
void register_sddmm(pybind11::module_& m);  // csrc/sddmm.cpp: sddmm
void register_engine(pybind11::module_& m); // csrc/engine.cpp: SparseMLPEngine
void register_trainer(pybind11::module_& m);  // csrc/trainer.cpp: SparseMLPTrainer
}  // namespace lth_sparse
