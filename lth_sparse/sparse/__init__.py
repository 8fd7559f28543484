"""The sparse wing: CSR matrices, the sparse ops and their backends, SparseLinear/SparseMLP,
and the ticket file format. It never imports the lottery wing (training, pruning, runs)."""
