"""Benchmarks: do the sparse kernels beat what users run today?

Measured side by side in one run (these machines are shared and noisy, so a claim is a ratio
measured in one process, never an absolute time), each provider checked against the reference
before it is timed:

- spmm grid: Y = X W^T + b for a CSR weight at shapes x sparsities x batches x dtypes, one row
  per provider (providers.py, grids.py);
- training step: forward + backward + Adam, dense masked vs SparseMLP (grids.py);
- ticket: exported ticket files against torch dense with the mask baked in, ONNX Runtime, a
  torch.sparse chain and the C runtime, next to the machine's floor (ticket.py, floor.py).

Modules: config (BenchConfig, flag parsers), machine (machine facts, git SHA and dirty state,
the dirty-tree rule for benchmarks/results/), timing (the one timer), problems, providers,
checks (correctness), rows (the result schema), grids, ticket, onnx_runtime, c_runtime, floor,
targets (the project's speed targets), report (CSV/markdown/PNG), suite (one run), cli.

This package file imports nothing, so that `lth_sparse.bench.timing` can be used alone.
CLI: `lth-sparse bench ...` or `python -m lth_sparse.bench ...`; see benchmarks/README.md.
"""
