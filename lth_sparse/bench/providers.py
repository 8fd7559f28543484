"""Providers: the ways of computing one sparse layer Y = X W^T + b that the spmm grid compares.

A provider's `build(problem, x)` does all setup (format conversion, the one pattern check) and
returns a no-argument callable computing Y for that input; only the callable is timed.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lth_sparse.bench.config import BenchConfig
from lth_sparse.bench.problems import Problem
from lth_sparse.bench.timing import sync
from lth_sparse.errors import ConfigError
from lth_sparse.sparse import ops


@dataclass
class Provider:
    """One way of computing Y = X W^T + b.

    build(problem, x) returns a no-argument callable computing Y (batch, out) for x (batch, in);
    `precision(dtype)` names the row of lth_sparse.sparse.tolerances used by the correctness
    check (e.g. "tf32" for fp32 inputs on TF32 tensor cores).
    """
    name: str
    build: Callable[[Problem, torch.Tensor], Callable[[], torch.Tensor]]
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp64")
    available: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
    precision: Callable[[str], str] = lambda dtype: dtype
    in_default: bool = True     # part of "all available" (the reference is opt-in)
    default_devices: tuple[str, ...] | None = None   # where it is in the default set (None: all)
    ours: bool = False          # one of this package's kernels (targets use the best of these)
    description: str = ""

    def supports(self, device: str, dtype: str) -> tuple[bool, str]:
        """(True, "ok") or (False, why not) for a device ("cpu"/"cuda") and dtype name."""
        if device not in self.devices:
            return False, f"{self.name} does not run on {device}"
        if dtype not in self.dtypes:
            return False, f"{self.name} does not support {dtype}"
        return self.available()


def fastest_call_form(forms: dict[str, Callable[[], torch.Tensor]], device: torch.device):
    """The fastest of several equivalent callables, by a quick best-of-3, as `fn` with
    `fn.variant` naming it. Forms that raise (unsupported dtype/device) are left out;
    NotImplementedError when none works."""
    timings = {}
    for name, fn in forms.items():
        try:
            best = math.inf
            for _ in range(3):  # the first call warms up; slow calls need no second opinion
                t0 = time.perf_counter()
                fn()
                sync(device)
                best = min(best, time.perf_counter() - t0)
                if best > 0.05:
                    break
            timings[name] = best
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            continue
    if not timings:
        raise NotImplementedError(f"no call form of {', '.join(forms)} runs here "
                                  f"(torch {torch.__version__}, {device})")
    best_name = min(timings, key=timings.get)
    fn = forms[best_name]
    fn.variant = best_name  # type: ignore[attr-defined]
    return fn


def quiet_torch_sparse_csr(csr) -> torch.Tensor:
    """CSRMatrix -> torch.sparse_csr_tensor without the "support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return csr.to_torch_sparse()


def torch_csr_forms(w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor) -> dict:
    """The usual ways of calling torch.sparse with a CSR weight w (out, in) on x (batch, in).

    torch.sparse's speed depends a lot on the call form (F.linear with a sparse weight is fast at
    batch 1 on CPU, torch.sparse.mm at large batch); the strongest baseline is the honest one.
    """
    if b is None:
        return {"F.linear": lambda: F.linear(x, w),
                "sparse.mm": lambda: torch.sparse.mm(w, x.t()).t()}
    bcol = b[:, None]
    return {"F.linear": lambda: F.linear(x, w, b),
            "addmm": lambda: torch.addmm(bcol, w, x.t()).t(),
            "sparse.mm": lambda: torch.sparse.mm(w, x.t()).t() + b}


def _dense_build(p: Problem, x: torch.Tensor):
    w, b = p.dense(x.dtype), p.bias(x.dtype)
    return lambda: F.linear(x, w, b)


def _dense_tf32_build(p: Problem, x: torch.Tensor):
    w, b = p.dense(x.dtype), p.bias(x.dtype)

    def fn():
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
        try:
            return F.linear(x, w, b)
        finally:
            torch.set_float32_matmul_precision(old)
    return fn


def _torch_csr_build(p: Problem, x: torch.Tensor):
    """The fastest call form of torch.sparse, chosen per cell (recorded as the row's variant)."""
    w = quiet_torch_sparse_csr(p.csr(x.dtype))
    return fastest_call_form(torch_csr_forms(w, p.bias(x.dtype), x), x.device)


def _scipy_build(p: Problem, x: torch.Tensor):
    w = p.csr(x.dtype).to_scipy()
    b = p.bias(x.dtype).numpy()
    xn = x.numpy()
    return lambda: torch.from_numpy(np.asarray(w @ xn.T).T + b)


def _ops_build(backend: str, index_dtype: torch.dtype = torch.int32):
    def build(p: Problem, x: torch.Tensor):
        w = p.csr(x.dtype, index_dtype)
        b = p.bias(x.dtype)
        n = p.out_features
        ops.spmm(x, w.indptr, w.indices, w.values, n, bias=b, backend=backend)  # checks once
        # timed like SparseLinear calls it: the pattern was validated once, not on every call
        return lambda: ops.spmm_unchecked(x, w.indptr, w.indices, w.values, n, bias=b,
                                          backend=backend)
    return build


def _u16_build(p: Problem, x: torch.Tensor):
    if p.in_features > 65536:
        raise NotImplementedError("uint16 indices need in_features <= 65536")
    return _ops_build("cpu", torch.uint16)(p, x)


def _backend_available(name: str):
    return lambda: ops.backend_status(name)


def _scipy_available():
    try:  # scipy.sparse is heavy to import: only when the scipy provider is asked about
        import scipy.sparse  # noqa: F401
    except ImportError as exc:
        return False, f"scipy is not installed ({exc})"
    return True, "ok"


def default_providers() -> dict[str, Provider]:
    """Every provider this module knows, by name."""
    provs = [
        Provider("dense", _dense_build,
                 description="F.linear with a dense masked weight (what users run today); "
                             "fp32 with TF32 off"),
        Provider("dense-tf32", _dense_tf32_build, devices=("cuda",), dtypes=("fp32",),
                 precision=lambda d: "tf32", description="F.linear fp32 with TF32 tensor cores"),
        Provider("torch-csr", _torch_csr_build,
                 description="torch.sparse CSR weight (MKL/native on CPU, cuSPARSE on CUDA); "
                             "fastest call form per cell"),
        Provider("scipy", _scipy_build, devices=("cpu",), dtypes=("fp32", "fp64"),
                 available=_scipy_available, description="scipy.sparse.csr_matrix @ x.T"),
        Provider("ours-cpu", _ops_build("cpu"), devices=("cpu",),
                 available=_backend_available("cpu"), ours=True,
                 description="lth_sparse C++ kernel, int32 indices"),
        Provider("ours-cpu-u16", _u16_build, devices=("cpu",),
                 available=_backend_available("cpu"), ours=True,
                 description="lth_sparse C++ kernel, uint16 indices"),
        # On CPU only when asked for by name, under TRITON_INTERPRET (a correctness check of
        # the wiring; interpreter timings mean nothing, so it is never in a default CPU grid).
        Provider("triton", _ops_build("triton"), default_devices=("cuda",),
                 available=_backend_available("triton"), ours=True,
                 description="lth_sparse Triton kernel"),
        Provider("reference", _ops_build("reference"), in_default=False,
                 description="pure-PyTorch reference kernel (the oracle; opt-in)"),
    ]
    return {p.name: p for p in provs}


def select_providers(cfg: BenchConfig, registry: dict[str, Provider]) -> list[Provider]:
    """The providers named by --providers, or every available default one for the device
    (plus the reference in --quick runs)."""
    if cfg.providers:
        unknown = [n for n in cfg.providers if n not in registry]
        if unknown:
            raise ConfigError(f"unknown provider(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(registry)}")
        return [registry[n] for n in cfg.providers]
    chosen = [p for p in registry.values()
              if p.in_default and cfg.device in p.devices and p.available()[0]
              and cfg.device in (p.default_devices or p.devices)]
    if cfg.quick and "reference" in registry:
        chosen.append(registry["reference"])
    return chosen

