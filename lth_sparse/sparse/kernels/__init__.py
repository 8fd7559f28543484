"""Kernel backends, one module each: `reference` (the pure-PyTorch oracle), `cpu` (the C++
extension) and `triton_backend` (the Triton GPU kernels). What a backend provides is written
down in `base`; the registry is `lth_sparse.sparse.ops.BACKENDS`.
"""
