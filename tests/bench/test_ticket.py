"""The ticket comparison end to end on a tiny ticket: every provider checked, ONNX Runtime
skipped with its reason when missing, the floor beside the times (no timing assertions)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from lth_sparse.bench import onnx_runtime
from lth_sparse.bench.c_runtime import ENV_VAR
from lth_sparse.bench.cli import bench_config_from_args, main
from lth_sparse.bench.grids import make_masked_mlp
from lth_sparse.bench.suite import run_benchmarks
from lth_sparse.bench.ticket import FLOOR
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.sparse import ticket_file
from tests.bench.helpers import quick_args

HAVE_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))


@pytest.fixture(autouse=True)
def no_c_runtime(tmp_path, monkeypatch):
    """These tests are about the Python providers: no lth-sparse-run, whatever is built."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-runtime-here"))


def _run(tmp_path, ticket, *extra, evaluate=None):
    cfg = bench_config_from_args(quick_args(tmp_path / "out", "--ticket", str(ticket), *extra))
    return run_benchmarks(cfg, evaluate=evaluate)


def test_every_provider_side_by_side_with_accuracy_and_floor(tmp_path, tiny_ticket):
    seen = []

    def evaluate(model, device, dtype):
        seen.append(type(model).__name__)
        return 0.5

    result = _run(tmp_path, tiny_ticket, "--batches", "1,4", evaluate=evaluate)
    rows = result["rows"]
    assert {r["kind"] for r in rows} == {"ticket"}
    by = {(r["provider"], r["batch"]): r for r in rows}
    for batch in (1, 4):
        for name in ("torch-dense", "torch-csr", "lth_sparse", FLOOR):
            assert by[(name, batch)]["status"] == "ok", by[(name, batch)]
            assert by[(name, batch)]["median_ms"] > 0
        assert by[("c-runtime", batch)]["status"] == "SKIPPED"
        assert by[("torch-csr", batch)]["variant"] in ("F.linear", "addmm", "sparse.mm")
        assert by[(FLOOR, batch)]["variant"] in ("memory-bound", "compute-bound")
    assert by[("torch-dense", 1)]["accuracy"] == by[("lth_sparse", 1)]["accuracy"] == 0.5
    assert sorted(seen) == ["MLP", "SparseMLP"]
    assert all(r["ticket"] == "tiny" for r in rows)
    limits = result["meta"]["limits"]
    assert limits["bandwidth_bytes_per_s"] > 0 and limits["nnz_per_s"] > 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Ticket tiny" in md and "floor ms" in md and "lth_sparse vs torch-dense" in md
    assert "MNIST test accuracy: torch-dense 50.00%, lth_sparse 50.00%" in md
    assert "machine limits" in md
    names = {t["target"] for t in result["targets"]}
    assert any("batch 1 vs ONNX Runtime" in n for n in names)


def test_onnxruntime_missing_is_skipped_with_the_install_hint(tmp_path, tiny_ticket,
                                                              monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    ok, reason = onnx_runtime.ort_status()
    assert not ok and "onnxruntime" in reason and "lth_sparse[bench]" in reason
    rows = _run(tmp_path, tiny_ticket, "--batches", "2", evaluate=lambda *a: 1.0)["rows"]
    ort = [r for r in rows if r["provider"] == "onnxruntime"]
    assert len(ort) == 1 and ort[0]["status"] == "SKIPPED" and ort[0]["median_ms"] is None
    assert ort[0]["reason"] == reason
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| onnxruntime | SKIPPED |" in md and "lth_sparse[bench]" in md
    # the targets that need it say so instead of inventing a number
    vs_ort = [t for t in run_benchmarks(bench_config_from_args(quick_args(
        tmp_path / "o2", "--ticket", str(tiny_ticket), "--batches", "1")),
        evaluate=lambda *a: 1.0)["targets"] if "ONNX Runtime" in t["target"]]
    assert vs_ort and all(t["status"] == "not measured" for t in vs_ort)


@pytest.mark.skipif(not HAVE_ORT, reason="needs the bench extra: pip install 'lth_sparse[bench]'")
def test_onnxruntime_is_checked_and_timed_when_installed(tmp_path, tiny_ticket):
    rows = _run(tmp_path, tiny_ticket, "--batches", "1,5", evaluate=lambda *a: 1.0)["rows"]
    ort = [r for r in rows if r["provider"] == "onnxruntime"]
    assert [r["batch"] for r in ort] == [1, 5]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in ort), ort
    assert all(r["speedup_vs_dense"] is not None for r in ort)


def test_several_tickets_in_one_run(tmp_path, tiny_ticket):
    other = tmp_path / "other.safetensors"
    model = sparse_mlp_from_mlp(make_masked_mlp([30, 12, 10], 0.95, seed=4), backend="reference")
    ticket_file.save_ticket(other, model.to_csr_layers())
    cfg = bench_config_from_args(quick_args(tmp_path / "out", "--ticket", str(tiny_ticket),
                                            str(other), "--batches", "1"))
    rows = run_benchmarks(cfg, evaluate=lambda *a: 1.0)["rows"]
    assert [r["ticket"] for r in rows if r["provider"] == "lth_sparse"] == ["tiny", "other"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Ticket tiny" in md and "## Ticket other" in md


@pytest.mark.mnist
def test_ticket_accuracy_on_mnist_through_the_cli(tmp_path, mnist_dir):
    mlp = make_masked_mlp([784, 20, 10], 0.9, seed=0)
    path = tmp_path / "lenet-ish.safetensors"
    ticket_file.save_ticket(path, sparse_mlp_from_mlp(mlp, backend="reference").to_csr_layers())
    out = tmp_path / "out"
    assert main(["--ticket", str(path), "--data-dir", str(mnist_dir), "--batches", "1,8",
                 "--quick", "--threads", "1", "--repeats", "3", "--out-dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    acc = {r["provider"]: r["accuracy"] for r in rows if r["accuracy"] is not None}
    assert set(acc) == {"torch-dense", "lth_sparse"}
    assert 0.0 <= acc["lth_sparse"] <= 1.0
    # the same weights, sparse or dense: the same predictions up to fp32 ties
    assert acc["lth_sparse"] == pytest.approx(acc["torch-dense"], abs=2e-3)
