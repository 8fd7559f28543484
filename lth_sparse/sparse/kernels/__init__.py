"""Kernel backends. Each module exposes the same pure functions over tensors:

    spmm(x, indptr, indices, values, bias, relu, out)   -> out     Y = X W^T (+ b) (ReLU)
    spmm_t(dy, t_indptr, t_indices, t_values, out)      -> out     dX = dY W (W^T given as CSR)
    sddmm(dy, x, indptr, indices, out)                  -> out     dW values at the nonzeros

plus `available() -> (bool, reason)`. `reference` is the pure-PyTorch oracle; `cpu` wraps the
C++ extension; `triton_backend` holds the Triton GPU kernels. Argument checking and output
allocation happen once, in `lth_sparse.sparse.ops`; backends trust their inputs.
"""
