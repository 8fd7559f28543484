// CPU CSR kernels (placeholder registration until the kernels land).
#include "lth_sparse.h"

namespace lth_sparse {
void register_cpu_kernels(pybind11::module_& m) { (void)m; }
}  // namespace lth_sparse
