"""A ticket file end to end: every way of running it, side by side in one run.

Providers (each checked against an fp64 twin of the network before it is timed):
- torch-dense: a plain nn.Linear stack with the mask baked in (zeros, no prune hooks): the
  fair dense baseline, what anyone would deploy without this package;
- onnxruntime: ONNX Runtime on that same dense model (optional extra; SKIPPED with the reason
  when missing);
- torch-csr: the network as a chain of torch.sparse CSR layers (fastest call form per batch);
- lth_sparse: the ticket loaded with `load_ticket` (SparseMLP);
- c-runtime: the Python-free runtime `lth-sparse-run`, timed by itself (see c_runtime.py);
- floor: not a provider but the machine's limit for this network at each batch (floor.py).
Plus the MNIST test accuracy of torch-dense and lth_sparse (same weights, so the same up to
ties), through an `evaluate` hook.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from lth_sparse.bench.c_runtime import CRuntime, RuntimeFailed, find_runtime, summary_from_runtime
from lth_sparse.bench.checks import rel_error
from lth_sparse.bench.config import DTYPES, BenchConfig, model_label
from lth_sparse.bench.floor import MachineLimits, floor_seconds, network_traffic
from lth_sparse.bench.grids import error_reason, timed
from lth_sparse.bench.onnx_runtime import ort_forward, ort_session, ort_status
from lth_sparse.bench.providers import fastest_call_form, quiet_torch_sparse_csr
from lth_sparse.bench.rows import make_row
from lth_sparse.bench.timing import sync
from lth_sparse.bridge.convert import dense_mlp_from_sparse
from lth_sparse.errors import LthSparseError
from lth_sparse.lottery.data import load_mnist
from lth_sparse.sparse.ticket_file import load_ticket
from lth_sparse.sparse.tolerances import relative_error_bound

TICKET_PROVIDERS = ("torch-dense", "onnxruntime", "torch-csr", "lth_sparse", "c-runtime")
FLOOR = "floor"
DESCRIPTIONS = {
    "torch-dense": "nn.Linear stack with the mask baked in (zeros, no prune hooks): the fair "
                   "dense baseline",
    "onnxruntime": "ONNX Runtime (CPU EP, all graph optimizations, intra-op threads = bench "
                   "threads, inter-op 1) on the same dense masked model",
    "torch-csr": "chain of torch.sparse CSR layers, fastest call form per batch",
    "lth_sparse": "the ticket file loaded with lth_sparse load_ticket (SparseMLP)",
    "c-runtime": "Python-free runtime lth-sparse-run, timed by itself (--bench)",
    FLOOR: "the machine's limit: max(bytes moved / measured bandwidth, nonzeros x batch / "
           "measured per-nonzero rate); not a provider",
}
# Accuracy is reported for the deployed model and its dense twin.
ACCURACY_PROVIDERS = ("torch-dense", "lth_sparse")


def mnist_accuracy_hook(data_dir: str | None):
    """evaluate(model, device, dtype) -> accuracy on the MNIST test set (lottery.data)."""
    ds = load_mnist(data_dir)

    def evaluate(model, device, dtype=torch.float32):
        images = ds.test.images.to(device, dtype)
        labels = ds.test.labels.to(device)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(labels), 1000):
                correct += int((model(images[i:i + 1000]).argmax(1) == labels[i:i + 1000]).sum())
        return correct / len(labels)
    return evaluate


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def call():
        with torch.no_grad():
            return model(x)
    return call


def csr_chain_forms(sparse, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """The network as torch.sparse CSR layers, one callable per call form (used throughout)."""
    layers = [(quiet_torch_sparse_csr(layer.to_csr()), layer.bias.detach(), layer.relu)
              for layer in sparse.layers.values()]

    def chain(apply):
        def run():
            h = x
            for w, b, relu in layers:
                h = apply(w, b, h)
                if relu:
                    h = torch.relu(h)
            return h
        return run
    return {"F.linear": chain(lambda w, b, h: F.linear(h, w, b)),
            "addmm": chain(lambda w, b, h: torch.addmm(b[:, None], w, h.t()).t()),
            "sparse.mm": chain(lambda w, b, h: torch.sparse.mm(w, h.t()).t() + b)}


class TicketBench:
    """One ticket file on one device: its models, built once, and the rows of every batch."""

    def __init__(self, cfg: BenchConfig, path: str, threads: int, limits: MachineLimits | None):
        self.cfg, self.path, self.threads, self.limits = cfg, path, threads, limits
        self.name = Path(path).stem
        dev = cfg.device
        self.sparse = load_ticket(path, backend="auto", device=dev).eval()
        self.dense = dense_mlp_from_sparse(self.sparse).to(dev).eval()
        self.ref_model = copy.deepcopy(self.dense).double()
        layers = list(self.sparse.layers.values())
        self.n_layers = len(layers)
        self.sizes = [layers[0].in_features] + [layer.out_features for layer in layers]
        nnz = self.sparse.nnz  # kept zeros count too
        total = sum(layer.in_features * layer.out_features for layer in layers)
        self.base = dict(kind="ticket", ticket=self.name, shape=model_label(self.sizes),
                         in_features=self.sizes[0], out_features=self.sizes[-1],
                         sparsity=round(1 - nnz / total, 6), density=round(nnz / total, 6),
                         nnz=nnz, device=dev, cache="hot")

    # ------------------------------------------------------------------ the providers

    def _onnxruntime(self, dtype_name: str):
        """(session, None) or (None, why it is skipped)."""
        if self.cfg.device != "cpu" or dtype_name != "fp32":
            return None, "ONNX Runtime is compared on CPU in fp32 only"
        ok, reason = ort_status()
        if not ok:
            return None, reason
        try:
            fp32_dense = copy.deepcopy(self.dense).float()
            return ort_session(fp32_dense, self.sizes[0], self.threads), None
        except Exception as exc:  # export or session creation failed: say so in the table
            return None, "export/session failed: " + error_reason(exc)

    def _c_runtime(self, dtype_name: str):
        """(CRuntime, None) or (None, why it is skipped)."""
        if self.cfg.device != "cpu" or dtype_name != "fp32":
            return None, "the C runtime runs on CPU in fp32 only"
        binary, how = find_runtime(self.cfg.runtime)
        if binary is None:
            return None, how
        return CRuntime(binary, self.path, self.threads), None

    def rows(self, evaluate=None, progress=None) -> list[dict]:
        out = []
        for dtype_name in self.cfg.dtypes:
            out += self._rows_for_dtype(dtype_name, evaluate, progress)
        return out

    def _rows_for_dtype(self, dtype_name: str, evaluate, progress) -> list[dict]:
        dtype, dev = DTYPES[dtype_name], self.cfg.device
        # copies: casting the originals in place would round fp32 weights through bf16
        s_model = copy.deepcopy(self.sparse).to(dtype)
        d_model = copy.deepcopy(self.dense).to(dtype)
        accuracy = {}
        if evaluate is not None:
            accuracy = {"torch-dense": evaluate(d_model, dev, dtype),
                        "lth_sparse": evaluate(s_model, dev, dtype)}
        session, ort_skip = self._onnxruntime(dtype_name)
        runtime, runtime_skip = self._c_runtime(dtype_name)
        tol = relative_error_bound(dtype_name, depth=self.n_layers)
        rows = []
        try:
            for batch in self.cfg.batches:
                g = torch.Generator().manual_seed(self.cfg.seed + batch)
                x = torch.randn(batch, self.sizes[0], generator=g).to(dev, dtype)
                with torch.no_grad():
                    ref = self.ref_model(x.double())
                cell = dict(self.base, batch=batch, dtype=dtype_name)
                builders = {
                    "torch-dense": lambda x=x: _no_grad(d_model, x),
                    "onnxruntime": lambda x=x: ort_forward(session, x),
                    "torch-csr": lambda x=x: fastest_call_form(csr_chain_forms(s_model, x),
                                                               x.device),
                    "lth_sparse": lambda x=x: _no_grad(s_model, x),
                }
                skips = {"onnxruntime": ort_skip}
                for name, build in builders.items():
                    if skips.get(name):
                        rows.append(make_row(**cell, provider=name, status="SKIPPED",
                                             reason=skips[name]))
                        continue
                    rows.append(self._measure(name, build, ref, tol, cell, accuracy.get(name)))
                rows.append(self._measure_runtime(runtime, runtime_skip, x, ref, tol, cell,
                                                  rows))
                if self.limits is not None:
                    rows.append(self.floor_row(cell, batch, dtype))
                if progress is not None:
                    progress.update(1)
        finally:
            if runtime is not None:
                runtime.close()
        return rows

    def _measure(self, name: str, build, ref, tol, cell, accuracy) -> dict:
        try:
            fn = build()
            y = fn()
            sync(self.cfg.device)
        except NotImplementedError as exc:  # e.g. torch.sparse lacks this dtype here
            return make_row(**cell, provider=name, status="SKIPPED", reason=error_reason(exc))
        except Exception as exc:  # crashing is failing
            return make_row(**cell, provider=name, status="FAILED",
                            reason="raised " + error_reason(exc))
        y = torch.as_tensor(y)
        err = rel_error(y, ref)
        variant = getattr(fn, "variant", None)
        if not err <= tol:
            return make_row(**cell, provider=name, status="FAILED", rel_error=err,
                            variant=variant, accuracy=accuracy,
                            reason=f"logits differ from the fp64 dense model by {err:.3g} "
                                   f"(> {tol:g})")
        graph = (self.cfg.device == "cuda" and self.cfg.cuda_graphs and cell["batch"] <= 256
                 and name != "torch-csr")
        return make_row(**cell, provider=name, status="ok", rel_error=err, variant=variant,
                        accuracy=accuracy, **timed(self.cfg, fn, graph=graph))

    def _measure_runtime(self, runtime: CRuntime | None, skip: str | None, x, ref, tol, cell,
                         rows_so_far: list[dict]) -> dict:
        name = "c-runtime"
        if runtime is None:
            return make_row(**cell, provider=name, status="SKIPPED", reason=skip)
        try:
            err = rel_error(runtime.forward(x), ref)
            if not err <= tol:
                return make_row(**cell, provider=name, status="FAILED", rel_error=err,
                                reason=f"logits differ from the fp64 dense model by {err:.3g} "
                                       f"(> {tol:g})")
            result = runtime.bench(x, self._runtime_repeats(rows_so_far, cell["batch"]))
        except (RuntimeFailed, OSError, ValueError) as exc:
            return make_row(**cell, provider=name, status="FAILED",
                            reason=error_reason(exc))
        return make_row(**cell, provider=name, status="ok", rel_error=err,
                        **summary_from_runtime(result))

    def _runtime_repeats(self, rows_so_far: list[dict], batch: int) -> int:
        """The runtime takes a fixed count: as many calls as fit the budget at lth_sparse's
        speed for this batch (same budget as every other provider), 5 to 1000."""
        if self.cfg.repeats:
            return self.cfg.repeats
        ours = [r for r in rows_so_far if r["provider"] == "lth_sparse" and r["batch"] == batch
                and r["status"] == "ok" and r["dtype"] == "fp32"]
        est_s = ours[-1]["median_ms"] * 1e-3 if ours else 1e-3
        return int(min(1000, max(5, self.cfg.budget_s / est_s)))

    def floor_row(self, cell: dict, batch: int, dtype: torch.dtype) -> dict:
        """The machine's limit for this network and batch, as a row (timer 'model')."""
        elem = torch.tensor([], dtype=dtype).element_size()
        traffic = network_traffic(self.sparse.layers.values(), batch, elem)
        seconds, bound = floor_seconds(traffic, self.limits)
        ms = seconds * 1e3
        return make_row(**cell, provider=FLOOR, status="ok", median_ms=ms, q25_ms=ms, q75_ms=ms,
                        min_ms=ms, max_ms=ms, timer="model", variant=f"{bound}-bound",
                        reason=f"{traffic.total_bytes / 1e3:.1f} kB moved at "
                               f"{self.limits.bandwidth_bytes_per_s / 1e9:.1f} GB/s; "
                               f"{traffic.nnz_macs / 1e6:.3g}M nonzero MACs at "
                               f"{self.limits.nnz_per_s / 1e9:.2f} G/s "
                               f"({self.limits.rate_kernel})")


def run_tickets(cfg: BenchConfig, threads: int, limits: MachineLimits | None, evaluate=None,
                progress=None) -> list[dict]:
    """Rows of every ticket in cfg.tickets (see the module docstring).

    evaluate(model, device, dtype) -> accuracy in [0, 1]; default: the MNIST test set, or none
    (with a note on stderr) when MNIST cannot be loaded.
    """
    if evaluate is None:
        try:
            evaluate = mnist_accuracy_hook(cfg.data_dir)
        except (ImportError, LthSparseError) as exc:
            print(f"bench: no test accuracy ({exc})", file=sys.stderr)
    rows = []
    for path in cfg.tickets:
        rows += TicketBench(cfg, path, threads, limits).rows(evaluate, progress)
    return rows
