"""`python -m lth_sparse.bench` / `lth-sparse bench` end to end on the quick grid (no timing
assertions: only that every output is written and consistent)."""
from __future__ import annotations

import csv
import json

import pytest

from lth_sparse import cli as lth_cli
from lth_sparse.bench.cli import bench_config_from_args, main
from lth_sparse.bench.rows import COLUMNS
from lth_sparse.sparse.tolerances import relative_error_bound
from tests.bench.helpers import quick_args


def test_quick_grid_writes_every_output(tmp_path, capsys):
    assert main(["--quick", "--threads", "1", "--repeats", "3", "--out-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    meta = doc["meta"]
    for key in ("command", "device", "threads", "machine", "timing"):
        assert key in meta
    for key in ("cpu", "cores", "torch", "triton", "numpy", "scipy", "git_sha", "git_dirty",
                "date"):
        assert key in meta["machine"]
    rows = doc["rows"]
    assert rows and all(set(COLUMNS) <= set(r) for r in rows)
    spmm = [r for r in rows if r["kind"] == "spmm"]
    providers = {r["provider"] for r in spmm}
    assert {"dense", "reference"} <= providers
    # every cell of the quick grid has a row per provider
    cfg = bench_config_from_args(quick_args(tmp_path))
    n_cells = len(cfg.shapes) * len(cfg.sparsities) * len(cfg.batches) * len(cfg.dtypes)
    assert len(spmm) == n_cells * len(providers)
    for r in spmm:
        if r["provider"] in ("dense", "reference"):
            assert r["status"] == "ok", r
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["q25_ms"] <= r["median_ms"] <= r["q75_ms"]
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["repeats"] == 3
            assert r["rel_error"] <= relative_error_bound("fp32")
        if r["provider"] == "dense" and r["status"] == "ok":
            assert r["speedup_vs_dense"] == pytest.approx(1.0)
    assert any(r["kind"] == "train" for r in rows)

    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        assert len(list(reader)) == len(rows)

    md = (tmp_path / "results.md").read_text()
    for text in ("command:", "machine:", "threads:", "versions:", "git:", "date:",
                 "| sparsity | batch |", "dense ms"):
        assert text in md
    pngs = sorted(tmp_path.glob("speedup_*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert str(tmp_path) in capsys.readouterr().out


def test_lth_sparse_bench_takes_the_same_flags(tmp_path):
    out = tmp_path / "out"
    assert lth_cli.main(["bench", "--quick", "--mode", "inference", "--no-plots", "--threads",
                         "1", "--repeats", "3", "--shapes", "20x10", "--sparsities", "0.5",
                         "--batches", "2", "--providers", "dense,reference",
                         "--out-dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(r["provider"] for r in rows) == ["dense", "reference"]
    assert lth_cli.main(["bench", "--quick", "--out-dir", str(out), "--batches", "x"]) == 2
