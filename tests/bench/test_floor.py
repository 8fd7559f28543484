"""The machine's floor: traffic and limit arithmetic (exact), and that the probes measure
something (positive numbers; how fast is never asserted)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from lth_sparse.bench.floor import (
    MachineLimits,
    NetworkTraffic,
    floor_seconds,
    measure_limits,
    network_traffic,
)


def _layer(n_out, n_in, nnz, index_dtype=torch.uint16, bias=True):
    return SimpleNamespace(indptr=torch.zeros(n_out + 1, dtype=torch.int32),
                           indices=torch.zeros(nnz, dtype=index_dtype),
                           values=torch.zeros(nnz, dtype=torch.float32),
                           bias=torch.zeros(n_out) if bias else None,
                           in_features=n_in, out_features=n_out)


def test_network_traffic_counts_every_array_and_activation():
    layers = [_layer(300, 784, 1000), _layer(10, 300, 100, torch.int32, bias=False)]
    t = network_traffic(layers, batch=4, activation_bytes_per_elem=4)
    weights = (301 * 4 + 1000 * 2 + 1000 * 4 + 300 * 4) + (11 * 4 + 100 * 4 + 100 * 4)
    assert t.weight_bytes == weights
    assert t.activation_bytes == 4 * 4 * ((784 + 300) + (300 + 10))
    assert t.nnz_macs == 4 * 1100 and t.total_bytes == weights + t.activation_bytes


def test_floor_is_the_binding_limit():
    limits = MachineLimits(bandwidth_bytes_per_s=1e9, nnz_per_s=1e9, rate_kernel="k")
    assert floor_seconds(NetworkTraffic(1000, 1000, 10), limits) == (2e-6, "memory")
    assert floor_seconds(NetworkTraffic(10, 0, 5000), limits) == (5e-6, "compute")


def test_measured_limits_are_positive_and_name_their_kernel():
    limits = measure_limits(budget_s=0.01, quick=True)
    assert limits.bandwidth_bytes_per_s > 0 and limits.nnz_per_s > 0
    assert limits.rate_kernel.startswith(("lth_sparse", "torch.sparse"))
