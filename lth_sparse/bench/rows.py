"""The result row: one provider in one cell, with its status, error, timing and speedups.

Every benchmark (spmm grid, training step, ticket comparison) emits rows of this one schema,
so that results.csv has one header and the report code reads every kind alike.
"""
from __future__ import annotations

import math

COLUMNS = [
    "kind", "shape", "in_features", "out_features", "sparsity", "density", "nnz", "batch",
    "dtype", "device", "provider", "variant", "status", "rel_error", "reason", "timer", "cache",
    "repeats", "median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms", "speedup_vs_dense",
    "speedup_vs_torch_csr", "accuracy", "ticket",
]
STATUSES = ("ok", "FAILED", "SKIPPED")   # FAILED: wrong result, not timed; SKIPPED: cannot run
# providers whose time is the denominator of speedup_vs_dense / speedup_vs_torch_csr
DENSE_BASELINES = ("dense", "dense-masked", "torch-dense")
CSR_BASELINE = "torch-csr"


def make_row(**values) -> dict:
    """A row with every column present (None where not given)."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not result columns: {sorted(unknown)}")
    row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row


def clean_value(v):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def cell_key(row: dict) -> tuple:
    """The rows measured side by side: same kind, ticket, shape, sparsity, batch, dtype, device."""
    return (row["kind"], row.get("ticket"), row["shape"], row["sparsity"], row["batch"],
            row["dtype"], row["device"])


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_dense / speedup_vs_torch_csr of each ok row, from the baselines of its cell."""
    base: dict = {}
    for r in rows:
        if r["status"] == "ok" and r["provider"] in DENSE_BASELINES + (CSR_BASELINE,):
            which = CSR_BASELINE if r["provider"] == CSR_BASELINE else "dense"
            base[(cell_key(r), which)] = r["median_ms"]
    for r in rows:
        if r["status"] != "ok" or not r["median_ms"]:
            continue
        d = base.get((cell_key(r), "dense"))
        c = base.get((cell_key(r), CSR_BASELINE))
        r["speedup_vs_dense"] = d / r["median_ms"] if d else None
        r["speedup_vs_torch_csr"] = c / r["median_ms"] if c else None
