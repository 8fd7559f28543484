"""The spmm grid and the training step: wrong providers are caught before timing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lth_sparse.bench.checks import check_sparse_mlp
from lth_sparse.bench.cli import bench_config_from_args
from lth_sparse.bench.grids import make_masked_mlp
from lth_sparse.bench.problems import Problem
from lth_sparse.bench.providers import Provider, default_providers
from lth_sparse.bench.rows import add_speedups, make_row
from lth_sparse.bench.suite import run_benchmarks
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.sparse import nn as sparse_nn
from lth_sparse.sparse.tolerances import relative_error_bound
from tests.bench.helpers import quick_args


def test_problem_is_a_valid_csr_of_its_dense_weight():
    p = Problem(37, 19, 0.7, "cpu", seed=2)
    w = p.csr(torch.float32)
    w.validate("problem")
    assert w.shape == (19, 37) and w.nnz == p.nnz and 0 < p.density < 1
    assert torch.equal(p.dense(torch.float32), w.to_dense())
    x = p.x(4, torch.float32)
    torch.testing.assert_close(p.reference(x).float(),
                               F.linear(x, p.dense(torch.float32), p.bias(torch.float32)))
    assert p.csr(torch.float32, torch.uint16).index_dtype == torch.uint16


def test_wrong_provider_is_failed_and_not_timed(tmp_path):
    def build_wrong(problem, x):
        w, b = problem.dense(x.dtype), problem.bias(x.dtype)
        return lambda: F.linear(x, w * 1.01, b)  # 1% off: well outside fp32 tolerance

    def build_unsupported(problem, x):
        raise NotImplementedError("not for this cell")

    def build_crashing(problem, x):
        return lambda: x[:, 10**6]  # IndexError at call time

    reg = default_providers()
    cfg = bench_config_from_args(quick_args(tmp_path, "--mode", "inference", "--no-plots"))
    result = run_benchmarks(cfg, providers=[reg["dense"], reg["reference"],
                                            Provider("wrong", build_wrong),
                                            Provider("unsupported", build_unsupported),
                                            Provider("crashing", build_crashing)])
    rows = result["rows"]
    bad = [r for r in rows if r["provider"] == "wrong"]
    assert bad and all(r["status"] == "FAILED" for r in bad)
    assert all(r["median_ms"] is None and r["repeats"] is None for r in bad)
    assert all(r["rel_error"] > relative_error_bound("fp32") and "tolerance" in r["reason"]
               for r in bad)
    skipped = [r for r in rows if r["provider"] == "unsupported"]
    assert skipped and all(r["status"] == "SKIPPED" and r["median_ms"] is None for r in skipped)
    crashed = [r for r in rows if r["provider"] == "crashing"]
    assert crashed and all(r["status"] == "FAILED" and r["median_ms"] is None
                           and "IndexError" in r["reason"] for r in crashed)
    assert all(r["status"] == "ok" for r in rows if r["provider"] in ("dense", "reference"))
    md = (tmp_path / "results.md").read_text()
    assert "FAILED" in md and "wrong" in md


def test_speedups_are_ratios_within_one_cell():
    rows = [make_row(kind="spmm", shape="8x8", sparsity=0.9, batch=b, dtype="fp32",
                     device="cpu", provider=p, status="ok", median_ms=ms)
            for b, p, ms in [(1, "dense", 4.0), (1, "torch-csr", 2.0), (1, "ours-cpu", 1.0),
                             (2, "dense", 8.0), (2, "ours-cpu", 1.0)]]
    add_speedups(rows)
    assert rows[2]["speedup_vs_dense"] == 4.0
    assert rows[2]["speedup_vs_torch_csr"] == 2.0
    assert rows[4]["speedup_vs_dense"] == 8.0
    assert rows[4]["speedup_vs_torch_csr"] is None


def test_training_check_catches_wrong_gradients():
    sizes = [40, 30, 20, 5]
    ref = make_masked_mlp(sizes, 0.7, seed=1).double()
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(0))
    good = sparse_mlp_from_mlp(make_masked_mlp(sizes, 0.7, seed=1), backend="reference")
    assert check_sparse_mlp(good, ref, x, torch.float32) <= relative_error_bound("fp32")
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

    def forward(inp):
        return sparse_nn.sparse_linear(inp, layer.indptr, layer.indices,
                                       WrongBackward.apply(values), layer.bias, layer.t_indptr,
                                       layer.t_indices, layer.perm, layer.out_features,
                                       layer.relu, layer.backend)
    layer.forward = forward
    assert check_sparse_mlp(good, ref, x, torch.float32) > 0.5
