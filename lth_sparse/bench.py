"""Benchmarks: do the sparse kernels beat what users run today?

Three benchmarks, each measured side by side in one run (these machines are shared and noisy, so
a claim is a ratio measured in one process, never an absolute time):

- ``spmm``: Y = X W^T + b for a CSR weight W (out x in) at a grid of shapes x sparsities x batches,
  one row per provider (dense masked F.linear, torch.sparse CSR, scipy.sparse, our C++ kernels with
  int32 and uint16 indices, Triton on CUDA). Every provider is first checked against the reference
  kernel (`lth_sparse.sparse.kernels.reference`); a provider that disagrees is reported FAILED and is
  not timed.
- ``train``: one optimizer step (forward + backward + Adam) of an MLP at a given sparsity: dense
  masked (torch.nn.utils.prune masks, i.e. weight * mask every step) vs `SparseMLP`.
- ``ticket``: an exported ticket file run sparse vs its dense masked twin: latency per batch and
  MNIST test accuracy side by side.

Outputs (atomically written under --out-dir): results.json (meta + rows + targets), results.csv,
results.md (the human table, with command line, machine, threads, versions, git SHA and date),
and speedup_<shape>_<dtype>.png plots. The issue's speed targets are evaluated and printed.

CLI: ``lth-sparse bench ...`` (registered by lth_sparse.cli through `add_arguments` / `run`) or
``python -m lth_sparse.bench ...``; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lth_sparse.errors import BackendUnavailableError, ConfigError, LthSparseError
from lth_sparse.fileio import atomic_write_bytes

# ---------------------------------------------------------------------------- grids and targets

DEFAULT_SHAPES = "784x300,300x100,100x10,4096x4096"
DEFAULT_SPARSITIES = "0.5,0.8,0.9,0.95,0.98,0.99"
DEFAULT_BATCHES = {"cpu": "1,16,64,256", "cuda": "1,16,64,256,1024,4096"}
DEFAULT_DTYPES = {"cpu": "fp32", "cuda": "fp32,bf16"}
DEFAULT_TRAIN_MODELS = "784-300-100-10,784-4096-4096-10"
DEFAULT_TRAIN_SPARSITIES = {"cpu": "0.9,0.95,0.98", "cuda": "0.9,0.95,0.98"}
DEFAULT_TRAIN_BATCHES = "64,256"
# --quick: a tiny grid for tests and smoke runs (seconds)
QUICK = dict(shapes="96x80,100x10", sparsities="0.5,0.9", batches="1,8",
             train_models="64-48-10", train_sparsities="0.9", train_batches="8")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Relative error (max |y - ref| / max |ref|) allowed per compute precision. The reference
# accumulates in fp64 from the very same (rounded) inputs, so only accumulation order and the
# output rounding differ.
TOLERANCE = {"fp64": 1e-9, "fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 3e-2}

# Weights bigger than this are timed with a cold cache on CPU by default (--cache auto): a
# 4096x4096 layer does not sit in cache between calls in a real network, but its 98%-sparse CSR
# would, which would flatter the sparse kernels.
COLD_CACHE_BYTES = 4 << 20

# The targets: (label, device, check) evaluated over the result rows.
CPU_TARGETS = [
    # (label, kind, shape, sparsity, batches, baseline, required ratio)
    ("4096x4096 90% batch 1 vs dense", "spmm", "4096x4096", 0.9, (1,), "dense", 3.5),
    ("4096x4096 90% batch 1 vs torch.sparse", "spmm", "4096x4096", 0.9, (1,), "torch-csr", 2.0),
    ("4096x4096 90% batch 64 vs dense", "spmm", "4096x4096", 0.9, (64,), "dense", 3.0),
    ("4096x4096 90% batch 64 vs torch.sparse", "spmm", "4096x4096", 0.9, (64,), "torch-csr", 1.5),
    ("4096x4096 90% batch 256 vs dense", "spmm", "4096x4096", 0.9, (256,), "dense", 2.5),
    ("4096x4096 98% batch 1 vs dense", "spmm", "4096x4096", 0.98, (1,), "dense", 12.0),
    ("train 784-4096-4096-10 90% batch 256 vs dense masked", "train", "784-4096-4096-10", 0.9,
     (256,), "dense-masked", 2.0),
]
GPU_TARGETS = [
    ("4096x4096 90% bf16 batch 1-16 vs dense bf16", "spmm", "4096x4096", 0.9,
     tuple(range(1, 17)), "dense", 2.5),
    ("4096x4096 90% bf16 batch 1-16 vs torch.sparse", "spmm", "4096x4096", 0.9,
     tuple(range(1, 17)), "torch-csr", 3.0),
    ("4096x4096 98% bf16 batch >= 1024 vs dense bf16", "spmm", "4096x4096", 0.98,
     ("ge", 1024), "dense", 1.5),
    ("train 784-4096-4096-10 95% bf16 batch 256 faster than dense masked", "train",
     "784-4096-4096-10", 0.95, (256,), "dense-masked", 1.0),
]

CSV_COLUMNS = [
    "kind", "shape", "in_features", "out_features", "sparsity", "density", "nnz", "batch",
    "dtype", "device", "provider", "variant", "status", "rel_error", "reason", "timer", "cache",
    "repeats", "median_ms", "q25_ms", "q75_ms", "min_ms", "max_ms", "speedup_vs_dense",
    "speedup_vs_torch_csr", "accuracy",
]


# ---------------------------------------------------------------------------- configuration

@dataclass
class BenchConfig:
    """Everything one benchmark run needs (the CLI fills it from its flags)."""
    device: str = "cpu"
    providers: list[str] | None = None          # None: all available for the device
    shapes: list[tuple[int, int]] = field(default_factory=list)   # (in_features, out_features)
    sparsities: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    mode: str = "all"                            # inference | train | all
    train_models: list[list[int]] = field(default_factory=list)
    train_sparsities: list[float] = field(default_factory=list)
    train_batches: list[int] = field(default_factory=list)
    ticket: str | None = None
    data_dir: str | None = None
    quick: bool = False
    repeats: int | None = None                   # fixed number of timed samples per cell
    budget_s: float = 0.25                       # time budget per cell when repeats is None
    threads: int | None = None
    cache: str = "auto"                          # auto | hot | cold
    cuda_graphs: bool = True
    out_dir: str | None = None
    seed: int = 0
    plots: bool = True
    command: str = ""


def _parse_list(text: str, conv, what: str) -> list:
    try:
        items = [conv(t.strip()) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"could not parse --{what} {text!r}; give a comma-separated list, "
                          f"e.g. --{what} {_EXAMPLES[what]}") from None
    if not items:
        raise ConfigError(f"--{what} is empty; give e.g. --{what} {_EXAMPLES[what]}")
    return items


_EXAMPLES = {"shapes": "784x300,4096x4096", "sparsities": "0.9,0.98", "batches": "1,64,256",
             "dtype": "fp32,bf16", "train-models": "784-300-100-10",
             "train-sparsities": "0.9", "train-batches": "256", "providers": "dense,ours-cpu"}


def parse_shape(text: str) -> tuple[int, int]:
    """'784x300' -> (784, 300): in_features x out_features (the weight is out x in)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(text)
    return int(m.group(1)), int(m.group(2))


def parse_model(text: str) -> list[int]:
    """'784-300-100-10' -> [784, 300, 100, 10] (input, hidden..., classes)."""
    sizes = [int(t) for t in text.split("-")]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(text)
    return sizes


def _sparsity(text: str) -> float:
    s = float(text)
    if not 0.0 <= s < 1.0:
        raise ValueError(text)
    return s


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _dtype_name(text: str) -> str:
    t = text.lower().replace("float32", "fp32").replace("bfloat16", "bf16")
    t = t.replace("float16", "fp16").replace("float64", "fp64")
    if t not in DTYPES:
        raise ValueError(text)
    return t


def shape_label(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def model_label(sizes: Sequence[int]) -> str:
    return "-".join(str(s) for s in sizes)


# ---------------------------------------------------------------------------- environment facts

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _git_sha() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # not installed
        return "not installed"


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(device: str) -> dict:
    """Machine, versions and build facts recorded with every result."""
    from lth_sparse._ext import build_info
    from lth_sparse._version import __version__
    info = {
        "cpu": _cpu_model(), "cores": _cores(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "triton": _version("triton"), "numpy": np.__version__, "scipy": _version("scipy"),
        "lth_sparse": __version__, "extension": build_info(), "git_sha": _git_sha(),
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        # threading knobs that change timings (OpenMP spin-waiting matters on a busy machine)
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                            "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                                            "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
                if k in os.environ},
        "load_average": _load_average(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_tag(device: str) -> str:
    """Folder name for a machine: 'cpu-amd-epyc-2c', 'cuda-nvidia-h100-80gb-hbm3'."""
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"{_cpu_model()}-{_cores()}c"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"-(processor|cpu|with-radeon-graphics)\b", "", slug)
    return f"{device}-{slug[:48].strip('-')}"


def default_out_dir(cfg: BenchConfig) -> Path:
    """benchmarks/results/<machine-tag>/<label> of the checkout (or of the working directory)."""
    root = Path(__file__).resolve().parents[1]
    base = root / "benchmarks" if (root / "benchmarks").is_dir() else Path.cwd() / "benchmarks"
    if cfg.quick:
        label = "quick"
    elif cfg.ticket:
        label = "ticket-" + Path(cfg.ticket).stem
    else:
        label = f"{cfg.mode}-{'-'.join(cfg.dtypes)}"
    return base / "results" / machine_tag(cfg.device) / label


def set_threads(threads: int) -> None:
    """One thread count for PyTorch (intra-op) and the C++ extension (OpenMP)."""
    torch.set_num_threads(threads)
    try:
        from lth_sparse._ext import extension
        ext = extension()
        if ext is not None and hasattr(ext, "set_num_threads"):
            ext.set_num_threads(threads)
    except ImportError:
        pass


# ---------------------------------------------------------------------------- problems

class Problem:
    """One random sparse layer: W (out, in) with a random mask at `sparsity`, its CSR and a bias.

    Built once in fp32 on the CPU; `dense(dtype)` / `csr(dtype)` / `bias(dtype)` give copies
    in any dtype on the benchmark device, derived from the same fp32 master (so every provider
    sees exactly the same rounded numbers).
    """

    def __init__(self, in_features: int, out_features: int, sparsity: float, device: str,
                 seed: int = 0):
        self.in_features, self.out_features, self.sparsity = in_features, out_features, sparsity
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)
        keep = torch.rand(out_features, in_features, generator=g) >= sparsity
        rows, cols = keep.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=out_features)
        indptr = torch.zeros(out_features + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(counts, 0)
        self.indptr = indptr.to(torch.int32)
        self.indices = cols.to(torch.int32)
        self.values = w[rows, cols].contiguous()
        self.weight = w * keep
        self.bias32 = torch.randn(out_features, generator=g) * 0.1
        self.nnz = int(self.values.numel())
        self.density = self.nnz / max(1, in_features * out_features)
        self._cache: dict = {}

    @property
    def shape(self) -> str:
        return shape_label((self.in_features, self.out_features))

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """Masked dense weight (out, in) on the device: a dense matrix full of zeros."""
        return self._get(("dense", dtype), lambda: self.weight.to(self.device, dtype))

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        return self._get(("bias", dtype), lambda: self.bias32.to(self.device, dtype))

    def csr(self, dtype: torch.dtype, index_dtype=torch.int32):
        """(indptr int32, indices, values) on the device."""
        return self._get(("csr", dtype, index_dtype), lambda: (
            self.indptr.to(self.device), self.indices.to(index_dtype).to(self.device),
            self.values.to(dtype).to(self.device)))

    def x(self, batch: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + batch)
        return torch.randn(batch, self.in_features, generator=g).to(self.device, dtype)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """fp64 Y = X W^T + b from x's and W's rounded values: the reference kernel's formula,
        with its dense W (lth_sparse.sparse.kernels.reference.to_dense) built once per dtype."""
        from lth_sparse.sparse.kernels import reference

        def make():
            indptr, indices, values = self.csr(x.dtype)
            return reference.to_dense(indptr, indices, values.double(),
                                      (self.out_features, self.in_features))
        w64 = self._get(("ref_dense", x.dtype), make)
        return torch.addmm(self.bias(x.dtype).double(), x.double(), w64.t())

    def release(self) -> None:
        self._cache.clear()


# ---------------------------------------------------------------------------- providers

@dataclass
class Provider:
    """One way of computing Y = X W^T + b.

    build(problem, x) returns a no-argument callable computing Y for that input (all setup, e.g.
    format conversion, happens in build and is not timed). `precision(dtype)` names the
    TOLERANCE row used by the correctness check.
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

    def supports(self, device: str, dtype: str, problem: Problem | None = None) -> tuple[bool, str]:
        if device not in self.devices:
            return False, f"{self.name} does not run on {device}"
        if dtype not in self.dtypes:
            return False, f"{self.name} does not support {dtype}"
        return self.available()


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
    """The fastest of the usual ways to call torch.sparse with a CSR weight, chosen per cell.

    torch.sparse's speed depends a lot on the call form (F.linear with a sparse weight is fast at
    batch 1 on CPU, torch.sparse.mm at large batch); the strongest baseline is the honest one.
    The chosen form is recorded in the row's `variant`.
    """
    indptr, indices, values = p.csr(x.dtype)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and not news here
        warnings.simplefilter("ignore", UserWarning)
        w = torch.sparse_csr_tensor(indptr, indices, values, (p.out_features, p.in_features),
                                    check_invariants=False)
    b = p.bias(x.dtype)
    bcol = b[:, None]
    variants = {
        "F.linear": lambda: F.linear(x, w, b),
        "addmm": lambda: torch.addmm(bcol, w, x.t()).t(),
        "sparse.mm": lambda: torch.sparse.mm(w, x.t()).t() + b,
    }
    timings = {}
    for name, fn in variants.items():
        try:
            best = math.inf
            for _ in range(3):  # the first call warms up; slow calls need no second opinion
                t0 = time.perf_counter()
                fn()
                _sync(x.device)
                best = min(best, time.perf_counter() - t0)
                if best > 0.05:
                    break
            timings[name] = best
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            continue  # this form is unsupported for this dtype/device
    if not timings:
        raise NotImplementedError(f"torch.sparse CSR matmul does not support {x.dtype} on "
                                  f"{x.device.type} in torch {torch.__version__}")
    best = min(timings, key=timings.get)
    fn = variants[best]
    fn.variant = best  # type: ignore[attr-defined]
    return fn


def _scipy_build(p: Problem, x: torch.Tensor):
    import scipy.sparse as sp
    indptr, indices, values = p.csr(x.dtype)
    w = sp.csr_matrix((values.numpy(), indices.numpy(), indptr.numpy()),
                      shape=(p.out_features, p.in_features))
    b = p.bias(x.dtype).numpy()
    xn = x.numpy()
    return lambda: torch.from_numpy(np.asarray(w @ xn.T).T + b)


def _ops_build(backend: str, index_dtype=torch.int32):
    def build(p: Problem, x: torch.Tensor):
        from lth_sparse.sparse import ops
        indptr, indices, values = p.csr(x.dtype, index_dtype)
        b = p.bias(x.dtype)
        n = p.out_features
        ops.spmm(x, indptr, indices, values, n, bias=b, backend=backend)  # checks the pattern once
        # timed like SparseLinear calls it: the pattern was validated once, not on every call
        return lambda: ops.spmm(x, indptr, indices, values, n, bias=b, backend=backend,
                                trusted=True)
    return build


def _backend_available(name: str):
    def available():
        from lth_sparse.sparse import ops
        return ops.backend_status(name)
    return available


def _scipy_available():
    try:
        import scipy.sparse  # noqa: F401
    except ImportError as exc:
        return False, f"scipy is not installed ({exc})"
    return True, "ok"


def _u16_build(p: Problem, x: torch.Tensor):
    if p.in_features > 65536:
        raise NotImplementedError("uint16 indices need in_features <= 65536")
    return _ops_build("cpu", torch.uint16)(p, x)


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


# ---------------------------------------------------------------------------- timing

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


_FLUSH: dict = {}


def _flush_cpu_cache() -> None:
    """Evict the caches by writing a buffer larger than the last-level cache."""
    buf = _FLUSH.get("buf")
    if buf is None:
        size = 64 << 20
        try:
            text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
            size = max(size, 2 * int(text.rstrip("KM")) * mult)
        except (OSError, ValueError):
            pass
        buf = _FLUSH["buf"] = torch.empty(size // 4, dtype=torch.float32)
    buf.fill_(1.0)


def _summary(samples_ms: Sequence[float], timer: str) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return dict(median_ms=float(med), q25_ms=float(q25), q75_ms=float(q75),
                min_ms=float(a.min()), max_ms=float(a.max()), repeats=int(a.size), timer=timer)


def time_cpu(fn: Callable[[], object], *, budget_s: float = 0.25, repeats: int | None = None,
             cold: bool = False, min_repeats: int = 5, max_repeats: int = 1000) -> dict:
    """Median and spread of fn's wall time (ms) with time.perf_counter.

    Warm-up first. With `repeats` None the number of samples fits `budget_s` (at least
    `min_repeats`). Fast calls are timed in blocks of >= ~0.1 ms to keep timer overhead out
    (short blocks, so that a block hit by a descheduling stall is one outlier among many);
    `cold` evicts the caches before every (single-call) sample.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first < 0.05:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    est = max(first, 1e-7)
    inner = 1 if cold else max(1, int(1e-4 / est))
    flush_cost = 0.0
    if cold:
        t0 = time.perf_counter()
        _flush_cpu_cache()
        flush_cost = time.perf_counter() - t0
    if repeats is None:
        repeats = int(budget_s / (est * inner + flush_cost))
        repeats = min(max(repeats, min_repeats), max_repeats)
    samples = []
    for _ in range(repeats):
        if cold:
            _flush_cpu_cache()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return _summary(samples, "perf_counter" + ("+flush" if cold else ""))


def time_cuda(fn: Callable[[], object], *, budget_s: float = 0.25, repeats: int | None = None,
              graph: bool = False) -> dict:
    """Median and spread on CUDA: triton.testing.do_bench (CUDA events, L2 flushed before every
    run), or a CUDA graph of the call (do_bench_cudagraph) for launch-bound small batches.
    Falls back to CUDA events without L2 flushing when Triton is missing."""
    rep_ms = max(20, int(budget_s * 1e3))
    try:
        from triton.testing import do_bench, do_bench_cudagraph
    except ImportError:
        do_bench = do_bench_cudagraph = None
    if graph and do_bench_cudagraph is not None:
        try:
            # each sample is the mean of one graph replay of many unrolled calls
            samples = do_bench_cudagraph(fn, rep=rep_ms, return_mode="all")
            return _summary(samples, "cuda-graph")
        except Exception:  # not capturable (e.g. a library call that syncs): time it plainly
            torch.cuda.synchronize()
    if do_bench is not None:
        samples = do_bench(fn, warmup=25, rep=rep_ms, return_mode="all")
        if repeats is not None:
            samples = samples[:max(1, repeats)]
        return _summary(samples, "do_bench")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    n = repeats or 50
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _summary([s.elapsed_time(e) for s, e in events], "cuda-events")


def time_fn(fn, device: str, cfg: BenchConfig, *, cold: bool = False, graph: bool = False) -> dict:
    if device == "cuda":
        return time_cuda(fn, budget_s=cfg.budget_s, repeats=cfg.repeats, graph=graph)
    return time_cpu(fn, budget_s=cfg.budget_s, repeats=cfg.repeats, cold=cold)


# ---------------------------------------------------------------------------- correctness

def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| (in fp64); inf when shapes differ or y is not finite."""
    if tuple(y.shape) != tuple(ref.shape):
        return float("inf")
    y = y.detach().to(ref.device, torch.float64)
    if not torch.isfinite(y).all():
        return float("inf")
    scale = ref.abs().max().item() if ref.numel() else 0.0
    err = (y - ref).abs().max().item() if ref.numel() else 0.0
    return err / max(scale, 1e-30) if scale > 0 else err


# ---------------------------------------------------------------------------- the spmm grid

def _row(**kw) -> dict:
    row = {c: None for c in CSV_COLUMNS}
    row.update(kw)
    return row


def select_providers(cfg: BenchConfig, registry: dict[str, Provider]) -> list[Provider]:
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


def _cold(cfg: BenchConfig, problem: Problem, dtype: torch.dtype) -> bool:
    if cfg.device != "cpu" or cfg.cache == "hot":
        return False
    if cfg.cache == "cold":
        return True
    elem = torch.tensor([], dtype=dtype).element_size()
    return problem.in_features * problem.out_features * elem > COLD_CACHE_BYTES


def run_spmm_grid(cfg: BenchConfig, providers: Sequence[Provider], progress=None) -> list[dict]:
    """One row per (shape, sparsity, batch, dtype, provider); FAILED providers are not timed."""
    rows = []
    for dtype_name in cfg.dtypes:
        dtype = DTYPES[dtype_name]
        for shape in cfg.shapes:
            for sparsity in cfg.sparsities:
                problem = Problem(shape[0], shape[1], sparsity, cfg.device, cfg.seed)
                cold = _cold(cfg, problem, dtype)
                for batch in cfg.batches:
                    x = problem.x(batch, dtype)
                    ref = problem.reference(x)
                    for prov in providers:
                        base = dict(kind="spmm", shape=problem.shape,
                                    in_features=problem.in_features,
                                    out_features=problem.out_features, sparsity=sparsity,
                                    density=round(problem.density, 6), nnz=problem.nnz,
                                    batch=batch, dtype=dtype_name, device=cfg.device,
                                    provider=prov.name, cache="cold" if cold else "hot")
                        rows.append(_measure_provider(cfg, prov, problem, x, ref, dtype_name,
                                                      cold, base))
                        if progress is not None:
                            progress.update(1)
                    del x, ref
                problem.release()
    return rows


def _measure_provider(cfg, prov: Provider, problem, x, ref, dtype_name, cold, base) -> dict:
    ok, reason = prov.supports(cfg.device, dtype_name, problem)
    if not ok:
        return _row(**base, status="SKIPPED", reason=reason)
    try:
        fn = prov.build(problem, x)
        y = fn()
        _sync(cfg.device)
    except (NotImplementedError, BackendUnavailableError, torch.cuda.OutOfMemoryError) as exc:
        # cannot run this cell here (unsupported dtype/form, backend not built, too big)
        return _row(**base, status="SKIPPED", reason=f"{type(exc).__name__}: {exc}"[:300])
    except Exception as exc:  # a provider that crashes is as wrong as one that miscomputes
        return _row(**base, status="FAILED", reason=f"raised {type(exc).__name__}: {exc}"[:300])
    variant = getattr(fn, "variant", None)
    err = rel_error(y, ref)
    tol = TOLERANCE[prov.precision(dtype_name)]
    if not err <= tol:
        return _row(**base, variant=variant, status="FAILED", rel_error=err,
                    reason=f"max relative error {err:.3g} > tolerance {tol:g} "
                           f"({prov.precision(dtype_name)}) against the reference kernel")
    del y
    timing = time_fn(fn, cfg.device, cfg, cold=cold)
    return _row(**base, variant=variant, status="ok", rel_error=err, **timing)


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_dense / speedup_vs_torch_csr for each row, from the baselines of its own cell."""
    def key(r):
        return (r["kind"], r["shape"], r["sparsity"], r["batch"], r["dtype"], r["device"])
    base: dict = {}
    for r in rows:
        if r["status"] == "ok" and r["provider"] in ("dense", "dense-masked", "torch-csr"):
            name = "torch-csr" if r["provider"] == "torch-csr" else "dense"
            base[(key(r), name)] = r["median_ms"]
    for r in rows:
        if r["status"] != "ok" or not r["median_ms"]:
            continue
        d = base.get((key(r), "dense"))
        c = base.get((key(r), "torch-csr"))
        r["speedup_vs_dense"] = d / r["median_ms"] if d else None
        r["speedup_vs_torch_csr"] = c / r["median_ms"] if c else None


# ---------------------------------------------------------------------------- training step

def make_masked_mlp(sizes: Sequence[int], sparsity: float, seed: int = 0):
    """LeNet-style MLP with random torch.nn.utils.prune masks at `sparsity` on every layer.

    Pruned the way the LTH pipeline does it: `weight = weight_orig * weight_mask` is recomputed
    by a forward pre-hook every step, so the gradient of `weight_orig` is masked too.
    """
    from torch.nn.utils import prune

    from lth_sparse.lottery.models import MLP
    mlp = MLP(sizes[0], tuple(sizes[1:-1]), sizes[-1], seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for layer in mlp.layers:
        mask = (torch.rand(layer.weight.shape, generator=g) >= sparsity).to(layer.weight.dtype)
        prune.custom_from_mask(layer, "weight", mask)
    return mlp


def _sparse_from_masked(mlp, backend: str):
    """SparseMLP of a pruned MLP (its weight_mask buffers define the patterns)."""
    from lth_sparse.bridge.convert import sparse_mlp_from_mlp
    return sparse_mlp_from_mlp(mlp, backend=backend)


def _train_step(model, opt, x, y, autocast_dtype, device):
    def step():
        opt.zero_grad(set_to_none=True)
        if autocast_dtype is not None:
            with torch.autocast(device_type=device, dtype=autocast_dtype):
                out = model(x)
        else:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        return loss
    return step


def run_train_grid(cfg: BenchConfig, progress=None) -> list[dict]:
    """Training step (forward + backward + Adam) of dense masked vs SparseMLP per model/sparsity/batch.

    Before timing, the sparse model's logits and input gradient are compared with the dense
    masked model's (same weights); a mismatch marks it FAILED.
    bf16: the dense masked model runs under torch.autocast(bf16); the sparse model is cast to bf16.
    """
    rows = []
    backend = {"cpu": "cpu", "cuda": "triton"}[cfg.device]
    for dtype_name in cfg.dtypes:
        dtype = DTYPES[dtype_name]
        autocast = dtype if dtype in (torch.bfloat16, torch.float16) else None
        for sizes in cfg.train_models:
            for sparsity in cfg.train_sparsities:
                for batch in cfg.train_batches:
                    base = dict(kind="train", shape=model_label(sizes), in_features=sizes[0],
                                out_features=sizes[-1], sparsity=sparsity, batch=batch,
                                dtype=dtype_name, device=cfg.device, cache="hot")
                    rows.extend(_train_cell(cfg, sizes, sparsity, batch, dtype, autocast,
                                            backend, base))
                    if progress is not None:
                        progress.update(1)
    return rows


def _train_cell(cfg, sizes, sparsity, batch, dtype, autocast, backend, base) -> list[dict]:
    dev = cfg.device
    g = torch.Generator().manual_seed(cfg.seed + batch)
    x = torch.randn(batch, sizes[0], generator=g).to(dev)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(dev)
    dense = make_masked_mlp(sizes, sparsity, cfg.seed)
    nnz = int(sum(int(l.weight_mask.sum()) for l in dense.layers))
    total = sum(l.weight.numel() for l in dense.layers)
    base = dict(base, nnz=nnz, density=round(nnz / total, 6))
    name = f"sparse-{backend}"
    sparse, skip = None, None
    try:
        sparse = _sparse_from_masked(dense, backend).to(dev)
        if autocast is not None:
            sparse = sparse.to(dtype)
    except (ImportError, LthSparseError, RuntimeError, TypeError, ValueError) as exc:
        skip = f"{type(exc).__name__}: {exc}"[:300]
    # an fp64 twin (same seed -> same weights and masks; pruned modules cannot be deep-copied)
    ref_model = (make_masked_mlp(sizes, sparsity, cfg.seed).double().to(dev)
                 if sparse is not None else None)
    dense = dense.to(dev)
    out_rows = []

    # dense masked: what the LTH pipeline trains today
    opt = torch.optim.Adam([p for p in dense.parameters() if p.requires_grad], lr=1e-3)
    step = _train_step(dense, opt, x, y, autocast, dev)
    try:
        timing = time_fn(step, dev, cfg)
        out_rows.append(_row(**base, provider="dense-masked", status="ok", **timing))
    except (RuntimeError, ValueError) as exc:
        out_rows.append(_row(**base, provider="dense-masked", status="SKIPPED",
                             reason=f"{type(exc).__name__}: {exc}"[:300]))
    del dense, opt, step
    if sparse is None:
        out_rows.append(_row(**base, provider=name, status="SKIPPED", reason=skip))
        return out_rows

    try:
        err = check_sparse_mlp(sparse, ref_model, x, dtype)
    except Exception as exc:  # crashing is failing
        out_rows.append(_row(**base, provider=name, status="FAILED",
                             reason=f"raised {type(exc).__name__}: {exc}"[:300]))
        return out_rows
    del ref_model
    # three layers deep and through the backward pass: ten times the single-kernel tolerance
    tol = 10 * TOLERANCE[dtype_name_of(dtype)]
    if not err <= tol:
        out_rows.append(_row(**base, provider=name, status="FAILED", rel_error=err,
                             reason=f"logits or gradients differ from the fp64 dense masked model "
                                    f"by {err:.3g} (> {tol:g})"))
        return out_rows
    opt = torch.optim.Adam(sparse.parameters(), lr=1e-3)
    step = _train_step(sparse, opt, x.to(dtype), y, None, dev)
    timing = time_fn(step, dev, cfg)
    out_rows.append(_row(**base, provider=name, status="ok", rel_error=err, **timing))
    return out_rows


def check_sparse_mlp(sparse, ref_model, x: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest relative error of a SparseMLP against its fp64 dense masked twin.

    Compares the logits (with the ReLUs), then the input gradient and every layer's weight
    (at the stored nonzeros) and bias gradients of the network with its activations switched
    off: ReLU is discontinuous at 0, so a pre-activation within rounding of 0 may flip between
    any two correct implementations and move a whole row of the gradients; the linear chain
    checks spmm, spmm_t and sddmm through autograd exactly. Leaves no gradients behind.
    """
    from lth_sparse.sparse.kernels.reference import row_ids
    x = x.detach()
    with torch.no_grad():
        err = rel_error(sparse(x.to(dtype)), ref_model(x.double()))
    layers = list(sparse.layers.values())
    flags = [layer.relu for layer in layers]
    g = torch.Generator().manual_seed(7)
    weights = torch.randn(x.shape[0], ref_model.layers[-1].out_features, generator=g)
    try:
        for layer in layers:
            layer.relu = False
        xs = x.to(dtype).clone().requires_grad_(True)
        (sparse(xs).double() * weights.to(x.device, torch.float64)).sum().backward()
        xr = x.double().clone().requires_grad_(True)
        h = xr
        for lin in ref_model.layers:
            h = lin(h)
        (h * weights.to(x.device, torch.float64)).sum().backward()
        err = max(err, rel_error(xs.grad, xr.grad))
        for layer, lin in zip(layers, ref_model.layers):
            w_grad = getattr(lin, "weight_orig", lin.weight).grad
            ref_values = w_grad[row_ids(layer.indptr), layer.indices.long()]
            err = max(err, rel_error(layer.values.grad, ref_values))
            if layer.bias is not None:
                err = max(err, rel_error(layer.bias.grad, lin.bias.grad))
    finally:
        for layer, flag in zip(layers, flags):
            layer.relu = flag
        sparse.zero_grad(set_to_none=True)
    return err


def dtype_name_of(dtype: torch.dtype) -> str:
    return DTYPE_NAMES[dtype]


# ---------------------------------------------------------------------------- ticket end to end

def _default_evaluate(data_dir):
    """accuracy(model, device) on the MNIST test set via lth_sparse.lottery.data.load_mnist."""
    from lth_sparse.lottery.data import load_mnist
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


def run_ticket(cfg: BenchConfig, evaluate=None, progress=None) -> list[dict]:
    """Exported ticket (SparseMLP) vs its dense masked twin: forward latency per batch + accuracy.

    evaluate(model, device, dtype) -> accuracy in [0, 1]; default: MNIST test set.
    """
    from lth_sparse.sparse.ticket_file import load_ticket
    dev = cfg.device
    sparse = load_ticket(cfg.ticket, backend="auto", device=dev)
    from lth_sparse.bridge.convert import dense_mlp_from_sparse
    dense = dense_mlp_from_sparse(sparse)
    sparse, dense = sparse.to(dev).eval(), dense.to(dev).eval()
    sizes = [dense.layers[0].in_features] + [l.out_features for l in dense.layers]
    nnz = int(sum(layer.nnz for layer in sparse.layers.values()))  # kept zeros count too
    total = sum(l.weight.numel() for l in dense.layers)
    shape = model_label(sizes)
    base = dict(kind="ticket", shape=shape, in_features=sizes[0], out_features=sizes[-1],
                sparsity=round(1 - nnz / total, 6), density=round(nnz / total, 6), nnz=nnz,
                device=dev, cache="hot")
    rows = []
    if evaluate is None:
        try:
            evaluate = _default_evaluate(cfg.data_dir)
        except (ImportError, LthSparseError) as exc:
            evaluate = None
            print(f"bench: no test accuracy ({exc})", file=sys.stderr)
    ref_model = copy.deepcopy(dense).double()
    acc = {}
    for dtype_name in cfg.dtypes:
        dtype = DTYPES[dtype_name]
        # copies: casting the originals in place would round fp32 weights through bf16
        s_model, d_model = copy.deepcopy(sparse).to(dtype), copy.deepcopy(dense).to(dtype)
        if evaluate is not None:
            acc = {"dense-masked": evaluate(d_model, dev, dtype),
                   "sparse": evaluate(s_model, dev, dtype)}
        # the network is several layers deep: ten times the single-kernel tolerance
        tol = 10 * TOLERANCE[dtype_name]
        for batch in cfg.batches:
            g = torch.Generator().manual_seed(cfg.seed + batch)
            x = torch.randn(batch, sizes[0], generator=g).to(dev, dtype)
            with torch.no_grad():
                ref = ref_model(x.double())
                errs = {"dense-masked": rel_error(d_model(x), ref),
                        "sparse": rel_error(s_model(x), ref)}
            for name, model in (("dense-masked", d_model), ("sparse", s_model)):
                cell = dict(base, batch=batch, dtype=dtype_name, provider=name,
                            accuracy=acc.get(name), rel_error=errs[name])
                if not errs[name] <= tol:
                    rows.append(_row(**cell, status="FAILED",
                                     reason=f"logits differ from the fp64 dense model by "
                                            f"{errs[name]:.3g} (> {tol:g})"))
                    continue

                def fwd(model=model, x=x):
                    with torch.no_grad():
                        return model(x)
                graph = dev == "cuda" and cfg.cuda_graphs and batch <= 256
                rows.append(_row(**cell, status="ok", **time_fn(fwd, dev, cfg, graph=graph)))
            if progress is not None:
                progress.update(2)
    return rows


# ---------------------------------------------------------------------------- targets

def evaluate_targets(rows: list[dict], device: str, registry: dict[str, Provider]) -> list[dict]:
    """met / missed / not measured for each of the issue's targets on this device."""
    targets = GPU_TARGETS if device == "cuda" else CPU_TARGETS
    ours = {n for n, p in registry.items() if p.ours} | {"sparse-cpu", "sparse-triton"}
    out = []
    dtype = "bf16" if device == "cuda" else "fp32"

    def in_range(batch, batches):
        return batch >= batches[1] if batches[0] == "ge" else batch in batches

    for label, kind, shape, sparsity, batches, baseline, need in targets:
        cells = [r for r in rows if r["kind"] == kind and r["shape"] == shape
                 and abs(r["sparsity"] - sparsity) < 1e-9 and in_range(r["batch"], batches)
                 and r["status"] == "ok"]
        ratios = []
        for batch in sorted({r["batch"] for r in cells if r["dtype"] == dtype}):
            cell = [r for r in cells if r["batch"] == batch and r["dtype"] == dtype]
            bases = [r for r in cell if r["provider"] == baseline]
            note = ""
            if not bases and baseline == "torch-csr":
                # torch.sparse may not support bf16 here: its fp32 time is the best it can do
                bases = [r for r in cells if r["batch"] == batch and r["provider"] == baseline
                         and r["dtype"] == "fp32"]
                note = f" (torch-csr in fp32: no {dtype} support)"
            mine = [r for r in cell if r["provider"] in ours]
            if not bases or not mine:
                continue
            best = min(mine, key=lambda r: r["median_ms"])
            ratios.append((bases[0]["median_ms"] / best["median_ms"], batch,
                           best["provider"] + note))
        if not ratios:
            out.append(dict(target=label, required=need, measured=None, status="not measured",
                            detail="no successful side-by-side measurement in this run"))
            continue
        worst = min(ratios)  # every batch in the range must meet it
        status = "met" if worst[0] >= need else "missed"
        if need == 1.0:
            status = "met" if worst[0] > 1.0 else "missed"
        out.append(dict(target=label, required=need, measured=round(worst[0], 3), status=status,
                        detail=f"worst batch {worst[1]}, {worst[2]}"))
    return out


# ---------------------------------------------------------------------------- output

def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def _fmt_ms(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return "FAILED" if r["status"] == "FAILED" else "skip"
    m = r["median_ms"]
    prec = 3 if m < 1 else 2 if m < 100 else 1
    return f"{m:.{prec}f} ({r['q25_ms']:.{prec}f}–{r['q75_ms']:.{prec}f})"


def _fmt_x(v) -> str:
    return "" if v is None else f"{v:.2f}×"


def to_markdown(meta: dict, rows: list[dict], targets: list[dict],
                registry: dict[str, Provider]) -> str:
    m = meta["machine"]
    lines = [f"# lth_sparse benchmark: {meta['device']} {', '.join(meta['dtypes'])}", ""]
    lines += [
        f"- command: `{meta['command']}`",
        f"- machine: {m['cpu']} ({m['cores']} cores available)"
        + (f"; GPU {m['gpu']} (CUDA {m.get('cuda')})" if m.get("gpu") else ""),
        f"- threads: {meta['threads']}; environment {m.get('env') or '{}'}",
        f"- load average (1, 5, 15 min) at start {meta.get('load_average_start')}, at end "
        f"{m.get('load_average')}: the machine should be otherwise idle",
        f"- versions: torch {m['torch']}, triton {m['triton']}, numpy {m['numpy']}, "
        f"scipy {m['scipy']}, lth_sparse {m['lth_sparse']}, python {m['python']}",
        f"- extension: {m['extension']}",
        f"- git: {m['git_sha']}",
        f"- date: {m['date']}",
        f"- timing: {meta['timing']}",
        "", "Times are median milliseconds (interquartile range); speedups are ratios of medians "
        "measured side by side in this run. FAILED = wrong result against the reference kernel "
        "(not timed); skip = provider unavailable for this cell (see the end).", "",
    ]
    if targets:
        lines += ["## Targets", "", "| target | required | measured | status | detail |",
                  "|---|---:|---:|---|---|"]
        for t in targets:
            meas = "" if t["measured"] is None else f"{t['measured']:.2f}×"
            lines.append(f"| {t['target']} | ≥ {t['required']}× | {meas} | **{t['status']}** | "
                         f"{t['detail']} |")
        lines.append("")

    spmm = [r for r in rows if r["kind"] == "spmm"]
    if spmm:
        provs = list(dict.fromkeys(r["provider"] for r in spmm))
        fast = [p for p in provs if p not in ("dense", "dense-tf32", "reference")]
        for dtype in dict.fromkeys(r["dtype"] for r in spmm):
            for shape in dict.fromkeys(r["shape"] for r in spmm if r["dtype"] == dtype):
                cell_rows = [r for r in spmm if r["shape"] == shape and r["dtype"] == dtype]
                lines += [f"## Y = X Wᵀ + b, in×out = {shape}, {dtype}", ""]
                head = ["sparsity", "batch"] + [f"{p} ms" for p in provs]
                mine = [p for p in fast if p in registry and registry[p].ours]
                head += [f"{p} vs dense" for p in fast] + [f"{p} vs torch-csr" for p in mine]
                lines += ["| " + " | ".join(head) + " |",
                          "|" + "|".join(["---:"] * len(head)) + "|"]
                keys = dict.fromkeys((r["sparsity"], r["batch"]) for r in cell_rows)
                for sp, b in keys:
                    by = {r["provider"]: r for r in cell_rows
                          if r["sparsity"] == sp and r["batch"] == b}
                    vals = [f"{sp:g}", str(b)] + [_fmt_ms(by.get(p)) for p in provs]
                    vals += [_fmt_x(by[p]["speedup_vs_dense"]) if p in by else "" for p in fast]
                    vals += [_fmt_x(by[p]["speedup_vs_torch_csr"]) if p in by else ""
                             for p in mine]
                    lines.append("| " + " | ".join(vals) + " |")
                lines.append("")

    for kind, title in (("train", "Training step (forward + backward + Adam)"),
                        ("ticket", "Ticket end to end (forward, no grad)")):
        part = [r for r in rows if r["kind"] == kind]
        if not part:
            continue
        provs = list(dict.fromkeys(r["provider"] for r in part))
        lines += [f"## {title}", ""]
        head = ["model", "dtype", "sparsity", "batch"] + [f"{p} ms" for p in provs] + \
               [f"{p} vs dense masked" for p in provs if p != "dense-masked"]
        if kind == "ticket":
            head += [f"{p} test acc" for p in provs]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
        keys = dict.fromkeys((r["shape"], r["dtype"], r["sparsity"], r["batch"]) for r in part)
        for shape, dtype, sp, b in keys:
            by = {r["provider"]: r for r in part if (r["shape"], r["dtype"], r["sparsity"],
                                                     r["batch"]) == (shape, dtype, sp, b)}
            vals = [shape, dtype, f"{sp:g}", str(b)] + [_fmt_ms(by.get(p)) for p in provs]
            vals += [_fmt_x(by[p]["speedup_vs_dense"]) if p in by else ""
                     for p in provs if p != "dense-masked"]
            if kind == "ticket":
                vals += ["" if by.get(p, {}).get("accuracy") is None
                         else f"{100 * by[p]['accuracy']:.2f}%" for p in provs]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")

    notes = {}
    for r in rows:
        if r["status"] != "ok":
            notes.setdefault((r["provider"], r["status"], r["reason"]), 0)
            notes[(r["provider"], r["status"], r["reason"])] += 1
    if notes:
        lines += ["## Failed and skipped", "", "| provider | status | cells | reason |",
                  "|---|---|---:|---|"]
        for (p, s, reason), n in notes.items():
            lines.append(f"| {p} | {s} | {n} | {str(reason).replace('|', '/')} |")
        lines.append("")
    used = [registry[p] for p in dict.fromkeys(r["provider"] for r in rows) if p in registry]
    if used:
        lines += ["## Providers", ""] + [f"- **{p.name}**: {p.description}" for p in used] + [""]
    return "\n".join(lines)


def plot_speedups(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per shape and dtype: speedup vs dense over sparsity, one panel per batch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    spmm = [r for r in rows if r["kind"] == "spmm" and r["status"] == "ok"]
    for dtype in dict.fromkeys(r["dtype"] for r in spmm):
        for shape in dict.fromkeys(r["shape"] for r in spmm if r["dtype"] == dtype):
            part = [r for r in spmm if r["shape"] == shape and r["dtype"] == dtype
                    and r["speedup_vs_dense"] is not None and r["provider"] != "dense"]
            if not part:
                continue
            batches = sorted(dict.fromkeys(r["batch"] for r in part))
            fig, axes = plt.subplots(1, len(batches), figsize=(3.6 * len(batches), 3.4),
                                     squeeze=False, sharey=True)
            for ax, b in zip(axes[0], batches):
                for prov in dict.fromkeys(r["provider"] for r in part):
                    pts = sorted((r["sparsity"], r["speedup_vs_dense"]) for r in part
                                 if r["batch"] == b and r["provider"] == prov)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.set_yscale("log")
                ax.set_title(f"batch {b}")
                ax.set_xlabel("sparsity")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][0].set_ylabel("speedup vs dense masked (×)")
            axes[0][-1].legend(fontsize=7)
            fig.suptitle(f"Y = X Wᵀ + b, in×out = {shape}, {dtype}")
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            plt.close(fig)
            path = out_dir / f"speedup_{shape}_{dtype}.png"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


# ---------------------------------------------------------------------------- driver

def _progress(total: int):
    from tqdm import tqdm
    quiet = os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not sys.stderr.isatty()
    return tqdm(total=total, disable=quiet, desc="bench", unit="cell", leave=False)


def run_benchmarks(cfg: BenchConfig, providers: Sequence[Provider] | None = None,
                   evaluate=None, registry: dict[str, Provider] | None = None) -> dict:
    """Run what `cfg` asks for and write the outputs; returns {"meta", "rows", "targets", "files"}.

    providers: override the provider list (e.g. tests adding a deliberately wrong one).
    evaluate: accuracy hook for --ticket (see run_ticket).
    """
    registry = dict(registry or default_providers())
    for p in providers or ():
        registry.setdefault(p.name, p)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu")
    threads = cfg.threads or torch.get_num_threads()
    set_threads(threads)
    if cfg.device == "cuda":
        torch.set_float32_matmul_precision("highest")  # fp32 means fp32; TF32 is its own row
    provs = list(providers) if providers is not None else select_providers(cfg, registry)

    load_start = _load_average()
    rows: list[dict] = []
    n_spmm = (len(cfg.dtypes) * len(cfg.shapes) * len(cfg.sparsities) * len(cfg.batches)
              * len(provs)) if cfg.mode in ("inference", "all") and not cfg.ticket else 0
    n_train = (len(cfg.dtypes) * len(cfg.train_models) * len(cfg.train_sparsities)
               * len(cfg.train_batches)) if cfg.mode in ("train", "all") and not cfg.ticket else 0
    n_ticket = 2 * len(cfg.dtypes) * len(cfg.batches) if cfg.ticket else 0
    t_start = time.perf_counter()
    with _progress(n_spmm + n_train + n_ticket) as bar:
        if n_spmm:
            rows += run_spmm_grid(cfg, provs, bar)
        if n_train:
            rows += run_train_grid(cfg, bar)
        if n_ticket:
            rows += run_ticket(cfg, evaluate, bar)
    add_speedups(rows)
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    targets = [] if cfg.ticket or cfg.quick else evaluate_targets(rows, cfg.device, registry)

    timing = ("CPU: time.perf_counter after warm-up; samples fit a per-cell budget of "
              f"{cfg.budget_s}s (>= 5), fast calls timed in >= 0.1 ms blocks; cache policy "
              f"{cfg.cache} (auto: caches evicted before each call for weights > "
              f"{COLD_CACHE_BYTES >> 20} MiB)" if cfg.device == "cpu" else
              "CUDA: triton.testing.do_bench (CUDA events, L2 flushed before each run), median "
              "of all runs; ticket forwards at batch <= 256 as CUDA graphs")
    if cfg.repeats:
        timing += f"; fixed {cfg.repeats} samples per cell"
    meta = dict(command=cfg.command, device=cfg.device, dtypes=cfg.dtypes, threads=threads,
                machine=machine_info(cfg.device), load_average_start=load_start,
                timing=timing, quick=cfg.quick,
                config=dataclasses.asdict(cfg),
                elapsed_s=round(time.perf_counter() - t_start, 1))
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    files = write_outputs(out_dir, meta, rows, targets, registry, plots=cfg.plots)
    return dict(meta=meta, rows=rows, targets=targets, files=files)


def write_outputs(out_dir: Path, meta, rows, targets, registry, plots=True) -> list[Path]:
    out_dir = Path(out_dir)
    doc = json.dumps(dict(meta=meta, rows=rows, targets=targets), indent=1,
                     default=_json_default)
    files = [out_dir / "results.json", out_dir / "results.csv", out_dir / "results.md"]
    atomic_write_bytes(files[0], doc.encode())
    atomic_write_bytes(files[1], to_csv(rows).encode())
    atomic_write_bytes(files[2], to_markdown(meta, rows, targets, registry).encode())
    if plots:
        files += plot_speedups(rows, out_dir)
    return files


def format_targets(targets: list[dict]) -> str:
    if not targets:
        return ""
    lines = ["targets:"]
    for t in targets:
        meas = "n/a" if t["measured"] is None else f"{t['measured']:.2f}x"
        lines.append(f"  [{t['status']:>12}] {t['target']}: {meas} (need >= {t['required']}x; "
                     f"{t['detail']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI hooks

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `bench` flags on `parser` (used by `lth-sparse bench` and `-m lth_sparse.bench`)."""
    a = parser.add_argument
    a("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    a("--providers", default=None,
      help="comma-separated providers (default: all available for the device): "
           + ", ".join(default_providers()))
    a("--shapes", default=None,
      help=f"comma-separated in_features x out_features (default {DEFAULT_SHAPES})")
    a("--sparsities", default=None, help=f"fractions of zero weights (default {DEFAULT_SPARSITIES})")
    a("--batches", default=None,
      help=f"batch sizes (default cpu {DEFAULT_BATCHES['cpu']}; cuda {DEFAULT_BATCHES['cuda']})")
    a("--dtype", default=None,
      help="comma-separated dtypes among fp32, bf16, fp16, fp64 (default cpu fp32; cuda fp32,bf16)")
    a("--mode", choices=("inference", "train", "all"), default="all",
      help="spmm grid, training step, or both (default all)")
    a("--train-models", default=None,
      help=f"MLP layer sizes for the training step (default {DEFAULT_TRAIN_MODELS})")
    a("--train-sparsities", default=None,
      help=f"sparsities for the training step (default {DEFAULT_TRAIN_SPARSITIES['cpu']})")
    a("--train-batches", default=None,
      help=f"batch sizes for the training step (default {DEFAULT_TRAIN_BATCHES})")
    a("--ticket", default=None, metavar="PATH",
      help="benchmark an exported ticket file end to end (latency per --batches and MNIST test "
           "accuracy, sparse vs its dense masked model) instead of the grids")
    a("--data-dir", default=None, help="MNIST folder for --ticket accuracy (default $LTH_SPARSE_DATA)")
    a("--quick", action="store_true", help="a tiny grid (seconds): for tests and smoke runs")
    a("--repeats", type=int, default=None,
      help="timed samples per cell (default: as many as fit --budget)")
    a("--budget", type=float, default=None,
      help="seconds of timing per cell when --repeats is not given (default cpu 0.25, cuda 0.1, "
           "quick 0.02)")
    a("--threads", type=int, default=None, help="CPU threads (default: torch's current count)")
    a("--cache", choices=("auto", "hot", "cold"), default="auto",
      help="CPU: evict caches before each timed call (cold), never (hot), or for weights "
           f"> {COLD_CACHE_BYTES >> 20} MiB (auto, default)")
    a("--no-cuda-graphs", action="store_true", help="time ticket forwards without CUDA graphs")
    a("--no-plots", action="store_true", help="skip the PNG plots")
    a("--seed", type=int, default=0, help="seed of the random weights, masks and inputs")
    a("--out-dir", default=None,
      help="where to write results.{json,csv,md} and plots "
           "(default benchmarks/results/<machine-tag>/<mode-dtypes|quick|ticket-NAME>)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed flags into a BenchConfig (raises ConfigError on bad values)."""
    dev = args.device
    q = args.quick

    def pick(value, default):
        return value if value is not None else default

    cfg = BenchConfig(device=dev, mode=args.mode, ticket=args.ticket, data_dir=args.data_dir,
                      quick=q, repeats=args.repeats, threads=args.threads, cache=args.cache,
                      cuda_graphs=not args.no_cuda_graphs, out_dir=args.out_dir,
                      seed=args.seed, plots=not args.no_plots)
    cfg.shapes = _parse_list(pick(args.shapes, QUICK["shapes"] if q else DEFAULT_SHAPES),
                             _wrap(parse_shape), "shapes")
    cfg.sparsities = _parse_list(pick(args.sparsities, QUICK["sparsities"] if q
                                      else DEFAULT_SPARSITIES), _sparsity, "sparsities")
    cfg.batches = _parse_list(pick(args.batches, QUICK["batches"] if q else DEFAULT_BATCHES[dev]),
                              _positive_int, "batches")
    cfg.dtypes = _parse_list(pick(args.dtype, DEFAULT_DTYPES[dev]), _dtype_name, "dtype")
    cfg.train_models = _parse_list(pick(args.train_models, QUICK["train_models"] if q
                                        else DEFAULT_TRAIN_MODELS), _wrap(parse_model),
                                   "train-models")
    cfg.train_sparsities = _parse_list(pick(args.train_sparsities, QUICK["train_sparsities"] if q
                                            else DEFAULT_TRAIN_SPARSITIES[dev]), _sparsity,
                                       "train-sparsities")
    cfg.train_batches = _parse_list(pick(args.train_batches, QUICK["train_batches"] if q
                                         else DEFAULT_TRAIN_BATCHES), _positive_int,
                                    "train-batches")
    if args.providers:
        cfg.providers = _parse_list(args.providers, str, "providers")
    # do_bench takes many samples in 0.1 s on a GPU; CPU cells need longer for a stable median
    cfg.budget_s = args.budget if args.budget is not None else (
        0.02 if q else 0.1 if dev == "cuda" else 0.25)
    if cfg.repeats is not None and cfg.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {cfg.repeats}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
    if cfg.ticket and not Path(cfg.ticket).exists():
        raise ConfigError(f"ticket file {cfg.ticket} does not exist; export one with "
                          "`lth-sparse export` or pass the right --ticket PATH")
    cfg.command = getattr(args, "command_line", None) or " ".join(
        shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    return cfg


def _wrap(conv):
    def f(text):
        try:
            return conv(text)
        except (ValueError, TypeError):
            raise ValueError(text) from None
    return f


def run(args: argparse.Namespace) -> int:
    """Entry point of `lth-sparse bench`: runs, writes the outputs, prints targets. Returns 0."""
    cfg = config_from_args(args)
    result = run_benchmarks(cfg)
    out = result["files"][0].parent if result["files"] else None
    failed = sorted({r["provider"] for r in result["rows"] if r["status"] == "FAILED"})
    print(f"bench: {len(result['rows'])} rows in {result['meta']['elapsed_s']}s -> {out}")
    if failed:
        print(f"bench: FAILED correctness (not timed): {', '.join(failed)}")
    text = format_targets(result["targets"])
    if text:
        print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lth_sparse.bench ...` (same flags as `lth-sparse bench`)."""
    parser = argparse.ArgumentParser(prog="python -m lth_sparse.bench",
                                     description="Benchmark the sparse kernels against dense "
                                                 "masked PyTorch, torch.sparse and scipy.")
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(shlex.quote(a) for a in ["python", "-m", "lth_sparse.bench",
                                                          *argv])
    try:
        return run(args)
    except LthSparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
