"""The one bridge between the wings: pruned modules and runs to CSR, ticket files and sparse
trainers (and back). Only modules here import both lth_sparse.lottery and lth_sparse.sparse."""
