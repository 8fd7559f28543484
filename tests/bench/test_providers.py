"""Provider selection and availability: what runs by default, what is skipped and why."""
from __future__ import annotations

import pytest
import torch

from lth_sparse.bench.cli import bench_config_from_args
from lth_sparse.bench.providers import Provider, default_providers, select_providers
from lth_sparse.bench.suite import run_benchmarks
from lth_sparse.sparse import ops
from tests.bench.helpers import quick_args


def test_supports_names_device_and_dtype():
    reg = default_providers()
    ok, reason = reg["scipy"].supports("cuda", "fp32")
    assert not ok and "cuda" in reason
    ok, reason = reg["scipy"].supports("cpu", "bf16")
    assert not ok and "bf16" in reason
    assert reg["dense"].supports("cpu", "fp32") == (True, "ok")


def test_triton_is_not_in_the_default_cpu_grid(tmp_path):
    cfg = bench_config_from_args(quick_args(tmp_path))
    names = [p.name for p in select_providers(cfg, default_providers())]
    assert "triton" not in names and "reference" in names  # the quick run adds the oracle


def test_unavailable_provider_is_skipped_with_reason(tmp_path):
    reg = default_providers()
    absent = Provider("absent", reg["dense"].build,
                      available=lambda: (False, "not built on this machine"))
    cfg = bench_config_from_args(quick_args(tmp_path, "--mode", "inference", "--no-plots",
                                            "--shapes", "20x10", "--sparsities", "0.5",
                                            "--batches", "2"))
    rows = run_benchmarks(cfg, providers=[reg["dense"], absent])["rows"]
    skipped = [r for r in rows if r["provider"] == "absent"]
    assert skipped and all(r["status"] == "SKIPPED" and r["median_ms"] is None for r in skipped)
    assert skipped[0]["reason"] == "not built on this machine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter path is for CPU-only hosts")
def test_triton_provider_wiring_under_the_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops.backend_status("triton")[0], ops.backend_status("triton")[1]
    cfg = bench_config_from_args(quick_args(tmp_path, "--mode", "inference", "--no-plots",
                                            "--providers", "dense,triton", "--shapes", "37x19",
                                            "--sparsities", "0.7", "--batches", "3"))
    rows = run_benchmarks(cfg)["rows"]
    tri = [r for r in rows if r["provider"] == "triton"]
    assert tri and tri[0]["status"] == "ok", tri
