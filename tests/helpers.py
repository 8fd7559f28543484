"""Shared test helpers: the one tolerance table, and random CSR matrices with awkward structure."""
from __future__ import annotations

import os

import torch

# Per-dtype tolerances (of the values/activations dtype); no magic atol inside a test.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


def fresh_seed() -> int:
    """A new seed per call (fresh random data every run) that, unlike torch.seed(), does not
    reseed the global generator other tests draw from."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def random_csr(n_rows: int, n_cols: int, density: float, *, empty_rows: int = 0,
               empty_cols: int = 0, index_dtype=torch.int32, value_dtype=torch.float32,
               generator: torch.Generator | None = None, device="cpu"):
    """(indptr int32, indices, values) of a random (n_rows, n_cols) CSR matrix.

    `empty_rows` / `empty_cols` rows and columns (chosen at random) hold no nonzeros on
    purpose; indices are sorted and unique within each row; values are never zero.
    """
    g = generator or torch.Generator().manual_seed(fresh_seed())
    keep = torch.rand(n_rows, n_cols, generator=g) < density
    if empty_rows:
        keep[torch.randperm(n_rows, generator=g)[:empty_rows]] = False
    if empty_cols:
        keep[:, torch.randperm(n_cols, generator=g)[:empty_cols]] = False
    rows, cols = keep.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=n_rows)
    indptr = torch.zeros(n_rows + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    values = torch.randn(rows.numel(), generator=g, dtype=torch.float64)
    values = values + torch.sign(values) * 0.1  # keep away from zero
    return (indptr.to(torch.int32).to(device), cols.to(index_dtype).to(device),
            values.to(value_dtype).to(device))


def dense_of(indptr, indices, values, shape, dtype=torch.float64):
    """Dense matrix of a CSR triple, built independently of the package's own code."""
    w = torch.zeros(shape, dtype=dtype)
    ip = indptr.cpu().long().tolist()
    idx = indices.cpu().long().tolist()
    val = values.cpu().to(dtype)
    for r in range(shape[0]):
        for j in range(ip[r], ip[r + 1]):
            w[r, idx[j]] += val[j]
    return w


# Fused sparse trainer vs the torch oracle (fp32; the only differences are summation orders).
# one_step: parameters after one Adam step. Adam divides by sqrt(v), so a gradient that is tiny
# next to its summands' rounding error moves a weight by up to ~1e-3 of lr (1.2e-3) -> 2e-5.
# many_steps: after 500 steps on a learnable task (LeNet 10.7%, batch 60) the measured drift is
# ~1e-6 in the weights and ~5e-7 in the loss; 1e-4 leaves 100x headroom. (On random labels,
# memorising noise, training is chaotic and the drift reaches 5e-3: not a useful comparison.)
# loss: per-step mean cross-entropy.
TRAIN_TOL = {
    "one_step": dict(rtol=1e-4, atol=2e-5),
    "many_steps": dict(rtol=0.0, atol=1e-4),
    "loss": dict(rtol=1e-4, atol=1e-4),
    "eval_loss_sum": dict(rtol=1e-5, atol=1e-3),
}
# One IMP round on MNIST trained dense vs sparse from the same seed: test accuracy within this
# (fraction, i.e. 0.1 accuracy points); early-stop iteration equal.
IMP_ACC_TOL = 1e-3
