"""The machine's floor for a sparse network: how fast could any implementation be here?

Two limits, each measured in the same run at the bench's thread count:
- memory: every byte a forward must move (the CSR arrays values + indices + indptr and bias of
  every layer, plus each layer's input and output activations) over the measured read
  bandwidth of a large tensor reduction (a buffer far larger than the last-level cache);
- compute: nonzeros x batch multiply-adds over the measured per-nonzero rate of gather-heavy
  sparse matmuls (the fastest kernel available here, caches warm; the best of a big layer and
  a cache-resident one, so that the rate is the machine's peak, not one problem's).
The floor is the larger of the two: a provider at the floor cannot get faster on this machine
without moving fewer bytes or doing fewer multiply-adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lth_sparse.bench.problems import Problem
from lth_sparse.bench.providers import fastest_call_form, quiet_torch_sparse_csr, torch_csr_forms
from lth_sparse.bench.timing import time_cpu
from lth_sparse.sparse import ops

# Big enough to stream from DRAM on any machine here (> 4x a 64 MiB last-level cache).
BANDWIDTH_BUFFER_BYTES = 256 << 20
# The per-nonzero rate probes: ~1.7M nonzeros x 256 rows (gathers dominate), and a layer whose
# CSR and activations sit in L2 (small tickets run there: the peak rate is the honest floor).
RATE_PROBES = (dict(in_features=4096, out_features=4096, sparsity=0.9, batch=256),
               dict(in_features=784, out_features=300, sparsity=0.9, batch=64))
# --quick: small probes (a smoke run, its floor is indicative only)
QUICK_BANDWIDTH_BUFFER_BYTES = 32 << 20
QUICK_RATE_PROBES = (dict(in_features=512, out_features=512, sparsity=0.9, batch=64),)


@dataclass(frozen=True)
class MachineLimits:
    """bandwidth_bytes_per_s: measured read bandwidth; nnz_per_s: measured multiply-adds of
    stored weights per second (nonzeros x batch); rate_kernel: which kernel reached it."""
    bandwidth_bytes_per_s: float
    nnz_per_s: float
    rate_kernel: str


@dataclass(frozen=True)
class NetworkTraffic:
    """What one forward of a sparse network at one batch must move and compute."""
    weight_bytes: int       # values + indices + indptr + bias, all layers
    activation_bytes: int   # each layer's input read and output written
    nnz_macs: int           # nonzeros x batch

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


def network_traffic(layers, batch: int, activation_bytes_per_elem: int) -> NetworkTraffic:
    """Traffic of one forward of `layers` (SparseLinear-like: indptr, indices, values, bias,
    in_features, out_features) at `batch` rows of activations of the given element size."""
    weight = act = nnz = 0
    for layer in layers:
        for t in (layer.indptr, layer.indices, layer.values, layer.bias):
            if t is not None:
                weight += t.numel() * t.element_size()
        act += batch * (layer.in_features + layer.out_features) * activation_bytes_per_elem
        nnz += layer.values.numel()
    return NetworkTraffic(weight, act, nnz * batch)


def floor_seconds(traffic: NetworkTraffic, limits: MachineLimits) -> tuple[float, str]:
    """(seconds, which limit binds: 'memory' or 'compute') of the floor for `traffic`."""
    memory = traffic.total_bytes / limits.bandwidth_bytes_per_s
    compute = traffic.nnz_macs / limits.nnz_per_s
    return (memory, "memory") if memory >= compute else (compute, "compute")


def measure_bandwidth(budget_s: float = 0.25, nbytes: int = BANDWIDTH_BUFFER_BYTES) -> float:
    """Read bandwidth (bytes/s) of a torch.sum over a buffer far larger than the caches, at
    torch's current thread count (set by the bench)."""
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    t = time_cpu(lambda: buf.sum(), budget_s=budget_s, min_repeats=5)
    return nbytes / (t["median_ms"] * 1e-3)


def measure_nnz_rate(budget_s: float, seed: int, probe: dict) -> tuple[float, str]:
    """(nonzeros x batch per second, kernel) of the fastest CPU sparse matmul available here
    (our C++ kernel with uint16 and int32 indices, or torch.sparse) on the `probe` problem."""
    p = Problem(probe["in_features"], probe["out_features"], probe["sparsity"], "cpu", seed)
    x = p.x(probe["batch"], torch.float32)
    forms = {}
    if ops.backend_status("cpu")[0]:
        for index_dtype in (torch.uint16, torch.int32):
            w = p.csr(torch.float32, index_dtype)
            forms[f"lth_sparse cpu {str(index_dtype).split('.')[-1]}"] = (
                lambda w=w: ops.spmm_unchecked(x, w.indptr, w.indices, w.values,
                                               p.out_features, backend="cpu"))
    w_torch = quiet_torch_sparse_csr(p.csr(torch.float32))
    forms.update({f"torch.sparse {k}": fn for k, fn in
                  torch_csr_forms(w_torch, None, x).items()})
    fn = fastest_call_form(forms, x.device)
    t = time_cpu(fn, budget_s=budget_s)
    shape = f"{probe['in_features']}x{probe['out_features']} batch {probe['batch']}"
    return p.nnz * probe["batch"] / (t["median_ms"] * 1e-3), f"{fn.variant}, {shape}"


def measure_limits(budget_s: float = 0.25, seed: int = 0, quick: bool = False) -> MachineLimits:
    """Both limits of this machine at torch's current thread count (quick: small probes)."""
    rate, kernel = max(measure_nnz_rate(budget_s, seed, probe)
                       for probe in (QUICK_RATE_PROBES if quick else RATE_PROBES))
    bandwidth = measure_bandwidth(budget_s, QUICK_BANDWIDTH_BUFFER_BYTES if quick
                                  else BANDWIDTH_BUFFER_BYTES)
    return MachineLimits(bandwidth, rate, kernel)
