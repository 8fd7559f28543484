"""The benchmark suite runs end to end and catches wrong providers. No timing assertions."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
import torch.nn.functional as F

from lth_sparse import bench
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.errors import ConfigError
from lth_sparse.sparse import nn as sparse_nn
from lth_sparse.sparse import ticket_file as ticket


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _quick(tmp_path, *extra):
    return _args("--quick", "--threads", "1", "--out-dir", str(tmp_path), "--repeats", "3", *extra)


def test_quick_grid_writes_every_output(tmp_path, capsys):
    assert bench.main(["--quick", "--threads", "1", "--repeats", "3",
                       "--out-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    meta = doc["meta"]
    for key in ("command", "device", "threads", "machine", "timing"):
        assert key in meta
    for key in ("cpu", "cores", "torch", "triton", "numpy", "scipy", "git_sha", "date"):
        assert key in meta["machine"]
    rows = doc["rows"]
    assert rows and all(set(bench.CSV_COLUMNS) <= set(r) for r in rows)
    spmm = [r for r in rows if r["kind"] == "spmm"]
    providers = {r["provider"] for r in spmm}
    assert {"dense", "reference"} <= providers
    # every cell of the quick grid has a row per provider
    cfg = bench.config_from_args(_quick(tmp_path))
    n_cells = len(cfg.shapes) * len(cfg.sparsities) * len(cfg.batches) * len(cfg.dtypes)
    assert len(spmm) == n_cells * len(providers)
    for r in spmm:
        if r["provider"] in ("dense", "reference"):
            assert r["status"] == "ok", r
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["q25_ms"] <= r["median_ms"] <= r["q75_ms"]
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["repeats"] == 3
            assert r["rel_error"] <= bench.TOLERANCE["fp32"]
        if r["provider"] == "dense" and r["status"] == "ok":
            assert r["speedup_vs_dense"] == pytest.approx(1.0)
    assert any(r["kind"] == "train" for r in rows)

    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.CSV_COLUMNS
        assert len(list(reader)) == len(rows)

    md = (tmp_path / "results.md").read_text()
    for text in ("command:", "machine:", "threads:", "versions:", "git:", "date:",
                 "| sparsity | batch |", "dense ms"):
        assert text in md
    pngs = sorted(tmp_path.glob("speedup_*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert str(tmp_path) in capsys.readouterr().out


def test_wrong_provider_is_failed_and_not_timed(tmp_path):
    def build_wrong(problem, x):
        w, b = problem.dense(x.dtype), problem.bias(x.dtype)
        return lambda: F.linear(x, w * 1.01, b)  # 1% off: well outside fp32 tolerance

    def build_unsupported(problem, x):
        raise NotImplementedError("not for this cell")

    def build_crashing(problem, x):
        return lambda: x[:, 10**6]  # IndexError at call time

    wrong = bench.Provider("wrong", build_wrong)
    unsupported = bench.Provider("unsupported", build_unsupported)
    crashing = bench.Provider("crashing", build_crashing)
    reg = bench.default_providers()
    cfg = bench.config_from_args(_quick(tmp_path, "--mode", "inference", "--no-plots"))
    result = bench.run_benchmarks(cfg, providers=[reg["dense"], reg["reference"], wrong,
                                                  unsupported, crashing])
    rows = result["rows"]
    bad = [r for r in rows if r["provider"] == "wrong"]
    assert bad and all(r["status"] == "FAILED" for r in bad)
    assert all(r["median_ms"] is None and r["repeats"] is None for r in bad)
    assert all(r["rel_error"] > bench.TOLERANCE["fp32"] and "tolerance" in r["reason"]
               for r in bad)
    skipped = [r for r in rows if r["provider"] == "unsupported"]
    assert skipped and all(r["status"] == "SKIPPED" and r["median_ms"] is None for r in skipped)
    crashed = [r for r in rows if r["provider"] == "crashing"]
    assert crashed and all(r["status"] == "FAILED" and r["median_ms"] is None
                           and "IndexError" in r["reason"] for r in crashed)
    assert all(r["status"] == "ok" for r in rows if r["provider"] in ("dense", "reference"))
    md = (tmp_path / "results.md").read_text()
    assert "FAILED" in md and "wrong" in md


def test_unavailable_provider_is_skipped_with_reason(tmp_path):
    reg = bench.default_providers()
    absent = bench.Provider("absent", reg["dense"].build,
                            available=lambda: (False, "not built on this machine"))
    cfg = bench.config_from_args(_quick(tmp_path, "--mode", "inference", "--no-plots",
                                        "--shapes", "20x10", "--sparsities", "0.5",
                                        "--batches", "2"))
    rows = bench.run_benchmarks(cfg, providers=[reg["dense"], absent])["rows"]
    skipped = [r for r in rows if r["provider"] == "absent"]
    assert skipped and all(r["status"] == "SKIPPED" and r["median_ms"] is None for r in skipped)
    assert skipped[0]["reason"] == "not built on this machine"


def test_triton_is_not_in_the_default_cpu_grid(tmp_path):
    cfg = bench.config_from_args(_quick(tmp_path))
    assert "triton" not in [p.name for p in bench.select_providers(cfg, bench.default_providers())]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter path is for CPU-only hosts")
def test_triton_provider_wiring_under_the_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from lth_sparse.sparse import ops
    assert ops.backend_status("triton")[0], ops.backend_status("triton")[1]
    cfg = bench.config_from_args(_quick(tmp_path, "--mode", "inference", "--no-plots",
                                        "--providers", "dense,triton", "--shapes", "37x19",
                                        "--sparsities", "0.7", "--batches", "3"))
    rows = bench.run_benchmarks(cfg)["rows"]
    tri = [r for r in rows if r["provider"] == "triton"]
    assert tri and tri[0]["status"] == "ok", tri


@pytest.mark.parametrize("flag, value", [("--shapes", "784by300"), ("--sparsities", "1.5"),
                                         ("--batches", "0"), ("--dtype", "int8"),
                                         ("--providers", "nope"), ("--ticket", "/no/such/file")])
def test_bad_flags_are_config_errors(tmp_path, flag, value):
    with pytest.raises(ConfigError):
        cfg = bench.config_from_args(_quick(tmp_path, flag, value))
        bench.select_providers(cfg, bench.default_providers())
    assert bench.main(["--quick", "--out-dir", str(tmp_path), flag, value]) == 2


def test_targets_met_missed_and_not_measured():
    def row(provider, ms, batch=1, sparsity=0.9, kind="spmm", shape="4096x4096"):
        return bench._row(kind=kind, shape=shape, sparsity=sparsity, batch=batch, dtype="fp32",
                          device="cpu", provider=provider, status="ok", median_ms=ms)
    rows = [row("dense", 10.0), row("torch-csr", 4.0), row("ours-cpu", 2.5),
            row("ours-cpu-u16", 2.0),                       # best of ours: 5x dense, 2x csr
            row("dense", 10.0, batch=64), row("torch-csr", 3.0, batch=64),
            row("ours-cpu", 4.0, batch=64)]                 # 2.5x dense: missed
    targets = {t["target"]: t for t in bench.evaluate_targets(rows, "cpu",
                                                              bench.default_providers())}
    t1 = targets["4096x4096 90% batch 1 vs dense"]
    assert t1["status"] == "met" and t1["measured"] == pytest.approx(5.0)
    assert "ours-cpu-u16" in t1["detail"]
    assert targets["4096x4096 90% batch 1 vs torch.sparse"]["status"] == "met"
    assert targets["4096x4096 90% batch 64 vs dense"]["status"] == "missed"
    assert targets["4096x4096 98% batch 1 vs dense"]["status"] == "not measured"
    assert "missed" in bench.format_targets(list(targets.values()))


def test_speedups_are_ratios_within_one_cell():
    rows = [bench._row(kind="spmm", shape="8x8", sparsity=0.9, batch=b, dtype="fp32",
                       device="cpu", provider=p, status="ok", median_ms=ms)
            for b, p, ms in [(1, "dense", 4.0), (1, "torch-csr", 2.0), (1, "ours-cpu", 1.0),
                             (2, "dense", 8.0), (2, "ours-cpu", 1.0)]]
    bench.add_speedups(rows)
    assert rows[2]["speedup_vs_dense"] == pytest.approx(4.0)
    assert rows[2]["speedup_vs_torch_csr"] == pytest.approx(2.0)
    assert rows[4]["speedup_vs_dense"] == pytest.approx(8.0)
    assert rows[4]["speedup_vs_torch_csr"] is None


def test_parsers():
    assert bench.parse_shape("784x300") == (784, 300)
    assert bench.parse_model("784-300-100-10") == [784, 300, 100, 10]
    cfg = bench.config_from_args(_args("--dtype", "float32,bf16"))
    assert cfg.dtypes == ["fp32", "bf16"] and cfg.shapes[-1] == (4096, 4096)
    assert bench.machine_tag("cpu").startswith("cpu-")


def test_ticket_end_to_end_with_accuracy_hook(tmp_path):
    mlp = bench.make_masked_mlp([30, 20, 10], 0.8, seed=3)
    model = sparse_mlp_from_mlp(mlp, backend="reference")
    path = tmp_path / "t.safetensors"
    ticket.save_ticket(path, model.to_csr_layers())

    seen = []

    def evaluate(m, device, dtype):
        seen.append(type(m).__name__)
        return 0.5

    cfg = bench.config_from_args(_quick(tmp_path / "out", "--ticket", str(path),
                                        "--batches", "1,4"))
    result = bench.run_benchmarks(cfg, evaluate=evaluate)
    rows = result["rows"]
    assert {r["kind"] for r in rows} == {"ticket"}
    assert sorted((r["provider"], r["batch"]) for r in rows) == [
        ("dense-masked", 1), ("dense-masked", 4), ("sparse", 1), ("sparse", 4)]
    assert all(r["status"] == "ok" and r["accuracy"] == 0.5 for r in rows)
    assert sorted(seen) == ["MLP", "SparseMLP"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Ticket end to end" in md and "50.00%" in md


def test_gpu_targets_use_the_worst_batch_and_fall_back_to_fp32_torch_csr():
    def row(provider, ms, batch, dtype="bf16", sparsity=0.9):
        return bench._row(kind="spmm", shape="4096x4096", sparsity=sparsity, batch=batch,
                          dtype=dtype, device="cuda", provider=provider, status="ok",
                          median_ms=ms)
    rows = [row("dense", 0.03, 1), row("triton", 0.01, 1),      # 3x
            row("dense", 0.03, 16), row("triton", 0.015, 16),   # 2x: the worst batch
            row("torch-csr", 0.1, 1, "fp32"), row("torch-csr", 0.1, 16, "fp32"),
            row("dense", 1.0, 1024, sparsity=0.98), row("triton", 0.5, 1024, sparsity=0.98),
            row("dense", 2.0, 4096, sparsity=0.98), row("triton", 1.0, 4096, sparsity=0.98)]
    targets = {t["target"]: t for t in bench.evaluate_targets(rows, "cuda",
                                                              bench.default_providers())}
    t = targets["4096x4096 90% bf16 batch 1-16 vs dense bf16"]
    assert t["status"] == "missed" and t["measured"] == pytest.approx(2.0)
    assert "batch 16" in t["detail"]
    t = targets["4096x4096 90% bf16 batch 1-16 vs torch.sparse"]
    assert t["status"] == "met" and "fp32" in t["detail"]
    t = targets["4096x4096 98% bf16 batch >= 1024 vs dense bf16"]
    assert t["status"] == "met" and t["measured"] == pytest.approx(2.0)
    assert targets["train 784-4096-4096-10 95% bf16 batch 256 faster than dense masked"][
        "status"] == "not measured"


@pytest.mark.mnist
def test_ticket_accuracy_on_mnist_through_the_cli(tmp_path, mnist_dir):
    mlp = bench.make_masked_mlp([784, 20, 10], 0.9, seed=0)
    path = tmp_path / "lenet-ish.safetensors"
    ticket.save_ticket(path, sparse_mlp_from_mlp(mlp, backend="reference")
                       .to_csr_layers())
    out = tmp_path / "out"
    assert bench.main(["--ticket", str(path), "--data-dir", str(mnist_dir), "--batches", "1,8",
                       "--threads", "1", "--repeats", "3", "--out-dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    acc = {r["provider"]: r["accuracy"] for r in rows}
    assert set(acc) == {"dense-masked", "sparse"}
    assert 0.0 <= acc["sparse"] <= 1.0
    # the same weights, sparse or dense: the same predictions up to fp32 ties
    assert acc["sparse"] == pytest.approx(acc["dense-masked"], abs=2e-3)


def test_training_check_catches_wrong_gradients():
    sizes = [40, 30, 20, 5]
    ref = bench.make_masked_mlp(sizes, 0.7, seed=1).double()
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))
    good = sparse_mlp_from_mlp(bench.make_masked_mlp(sizes, 0.7, seed=1),
                                        backend="reference")
    assert bench.check_sparse_mlp(good, ref, x, torch.float32) <= bench.TOLERANCE["fp32"]
    assert all(p.grad is None for p in good.parameters())
    assert all(layer.relu for layer in list(good.layers.values())[:-1])

    class WrongBackward(torch.autograd.Function):  # right forward, gradient 2x too large
        @staticmethod
        def forward(ctx, v):
            return v.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    layer = good.layers["fc2"]
    values = layer.values
    orig_forward = layer.forward

    def forward(inp):
        return sparse_nn.sparse_linear(inp, layer.indptr, layer.indices,
                                       WrongBackward.apply(values), layer.bias, layer.t_indptr,
                                       layer.t_indices, layer.perm, layer.out_features,
                                       layer.relu, layer.backend)
    layer.forward = forward
    assert bench.check_sparse_mlp(good, ref, x, torch.float32) > 0.5
    layer.forward = orig_forward
