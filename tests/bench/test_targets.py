"""The project's speed targets: met, missed and not measured, from made-up rows."""
from __future__ import annotations

import pytest

from lth_sparse.bench.providers import default_providers
from lth_sparse.bench.rows import make_row
from lth_sparse.bench.targets import evaluate_targets, evaluate_ticket_targets, format_targets

OURS = {n for n, p in default_providers().items() if p.ours}


def _by_label(targets):
    return {t["target"]: t for t in targets}


def test_cpu_targets_met_missed_and_not_measured():
    def row(provider, ms, batch=1, sparsity=0.9):
        return make_row(kind="spmm", shape="4096x4096", sparsity=sparsity, batch=batch,
                        dtype="fp32", device="cpu", provider=provider, status="ok",
                        median_ms=ms)
    rows = [row("dense", 10.0), row("torch-csr", 4.0), row("ours-cpu", 2.5),
            row("ours-cpu-u16", 2.0),                       # best of ours: 5x dense, 2x csr
            row("dense", 10.0, batch=64), row("torch-csr", 3.0, batch=64),
            row("ours-cpu", 4.0, batch=64)]                 # 2.5x dense: missed
    targets = _by_label(evaluate_targets(rows, "cpu", OURS))
    t1 = targets["4096x4096 90% batch 1 vs dense"]
    assert t1["status"] == "met" and t1["measured"] == pytest.approx(5.0)
    assert "ours-cpu-u16" in t1["detail"]
    assert targets["4096x4096 90% batch 1 vs torch.sparse (fastest call form)"]["status"] == "met"
    assert targets["4096x4096 90% batch 64 vs dense"]["status"] == "missed"
    assert targets["4096x4096 98% batch 1 vs dense"]["status"] == "not measured"
    assert "missed" in format_targets(list(targets.values()))


def test_gpu_targets_use_the_worst_batch_and_fall_back_to_fp32_torch_csr():
    def row(provider, ms, batch, dtype="bf16", sparsity=0.9):
        return make_row(kind="spmm", shape="4096x4096", sparsity=sparsity, batch=batch,
                        dtype=dtype, device="cuda", provider=provider, status="ok",
                        median_ms=ms)
    rows = [row("dense", 0.03, 1), row("triton", 0.01, 1),      # 3x
            row("dense", 0.03, 16), row("triton", 0.015, 16),   # 2x: the worst batch
            row("torch-csr", 0.1, 1, "fp32"), row("torch-csr", 0.1, 16, "fp32"),
            row("dense", 1.0, 1024, sparsity=0.98), row("triton", 0.5, 1024, sparsity=0.98),
            row("dense", 2.0, 4096, sparsity=0.98), row("triton", 1.0, 4096, sparsity=0.98)]
    targets = _by_label(evaluate_targets(rows, "cuda", OURS))
    t = targets["4096x4096 90% bf16 batch 1-16 vs dense bf16"]
    assert t["status"] == "missed" and t["measured"] == pytest.approx(2.0)
    assert "worst batch 16" in t["detail"] and "batch 1: 3.00x" in t["detail"]
    t = targets["4096x4096 90% bf16 batch 1-16 vs torch.sparse"]
    assert t["status"] == "met" and "fp32" in t["detail"]
    t = targets["4096x4096 98% bf16 batch >= 1024 vs dense bf16"]
    assert t["status"] == "met" and t["measured"] == pytest.approx(2.0)
    assert targets["train 784-4096-4096-10 95% bf16 batch 256 faster than dense masked"][
        "status"] == "not measured"


def _ticket_rows(name, density, times):
    """times: {provider: {batch: ms}}"""
    return [make_row(kind="ticket", ticket=name, shape="784-300-100-10", sparsity=1 - density,
                     density=density, batch=b, dtype="fp32", device="cpu", provider=p,
                     status="ok", median_ms=ms)
            for p, per_batch in times.items() for b, ms in per_batch.items()]


def test_ticket_targets_per_ticket_with_the_runtime_ratio():
    rows = _ticket_rows("t10", 0.107, {
        "onnxruntime": {1: 0.030, 16: 0.08, 64: 0.2, 256: 1.0, 1000: 4.0, 10000: 70.0},
        "torch-dense": {1: 0.080},
        "lth_sparse": {1: 0.010, 16: 0.03, 64: 0.1, 256: 0.6, 1000: 1.5, 10000: 40.0},
        "c-runtime": {1: 0.012}})
    rows += _ticket_rows("t3", 0.036, {"onnxruntime": {1: 0.030}, "lth_sparse": {1: 0.005}})
    targets = _by_label(evaluate_ticket_targets(rows))
    t = targets["t10 (10.7% remaining): batch 1 vs ONNX Runtime"]
    assert t["status"] == "met" and t["measured"] == pytest.approx(3.0)
    t = targets["t10 (10.7% remaining): batch 1 vs torch dense (mask baked in)"]
    assert t["status"] == "met" and t["measured"] == pytest.approx(8.0)
    t = targets["t10 (10.7% remaining): batch 16/64/256/1000 vs ONNX Runtime"]
    assert t["status"] == "missed" and "worst batch 256" in t["detail"]  # 1.67x at 256
    assert "batch 1000: 2.67x" in t["detail"]
    t = targets["t10 (10.7% remaining): batch 10000 vs ONNX Runtime"]
    assert t["status"] == "met" and t["measured"] == pytest.approx(1.75)
    # 0.010 / 0.012 = 0.83 >= 1 / 1.3: within 1.3x of the Python engine
    t = targets["t10 (10.7% remaining): C runtime vs Python engine, batch 1 (within 1.3x or "
                "faster)"]
    assert t["status"] == "met" and t["measured"] == pytest.approx(0.833, abs=1e-3)
    # the 3.6% target applies to the 3.6% ticket only
    assert "t3 (3.6% remaining): 3.6% remaining, batch 1 vs ONNX Runtime" in targets
    assert not any(k.startswith("t10") and "3.6% remaining, batch 1" in k for k in targets)
    assert targets["t3 (3.6% remaining): 3.6% remaining, batch 1 vs ONNX Runtime"][
        "measured"] == pytest.approx(6.0)
    assert targets["t3 (3.6% remaining): batch 1 vs torch dense (mask baked in)"][
        "status"] == "not measured"


def test_ticket_targets_say_when_no_ticket_is_at_three_point_six_percent():
    rows = _ticket_rows("t10", 0.107, {"onnxruntime": {1: 0.03}, "lth_sparse": {1: 0.01}})
    targets = _by_label(evaluate_ticket_targets(rows))
    t = targets["3.6% remaining, batch 1 vs ONNX Runtime"]
    assert t["status"] == "not measured" and "--ticket" in t["detail"]
