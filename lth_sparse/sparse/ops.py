"""One dispatch entry per sparse op: `spmm`, `spmm_t`, `sddmm`.

backend: "auto" (Triton for CUDA tensors, C++ on CPU when built, else the reference),
"reference", "cpu" or "triton". An explicitly requested backend that cannot run raises
BackendUnavailableError with the reason. Arguments are checked here, once, and outputs are
allocated here (kernels never allocate); pass `out=` to write into an existing buffer.
"""
from __future__ import annotations

import os

import torch

from lth_sparse.errors import BackendUnavailableError, CSRError
from lth_sparse.sparse.kernels import base, cpu, reference, triton_backend

# The backends, by name (see lth_sparse.sparse.kernels.base for what each provides). Importing
# them is cheap: cpu loads the extension lazily, triton_backend imports Triton on its first op.
BACKENDS = {
    "reference": base.check_backend_module("reference", reference),
    "cpu": base.check_backend_module("cpu", cpu),
    "triton": base.check_backend_module("triton", triton_backend),
}
# The dtypes every backend accepts (the CSR container validates against the same tables).
INDPTR_DTYPES = (torch.int32, torch.int64)
INDEX_DTYPES = (torch.uint16, torch.int32, torch.int64)
VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def backend_status(name: str) -> tuple[bool, str]:
    """(available, reason) for one backend, without raising."""
    if name not in BACKENDS:
        return False, f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}"
    try:
        return BACKENDS[name].available()
    except ImportError as exc:
        return False, f"{name} backend could not be imported: {exc}"


def available_backends() -> dict[str, str]:
    """Every backend with "ok" or the reason it cannot run here."""
    return {name: backend_status(name)[1] for name in BACKENDS}


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The concrete backend name for `backend` on `device` (raises if it cannot run)."""
    if backend == "auto":
        # Triton kernels take fp32/fp16/bf16: float64 on CUDA goes to the reference.
        if device.type == "cuda" and dtype != torch.float64 and backend_status("triton")[0]:
            return "triton"
        if device.type == "cpu" and backend_status("cpu")[0]:
            return "cpu"
        return "reference"
    ok, reason = backend_status(backend)
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {reason}")
    if backend == "cpu" and device.type != "cpu":
        raise BackendUnavailableError(
            f"backend 'cpu' runs on CPU tensors, got tensors on {device}; use backend='auto' or 'triton'")
    if backend == "triton" and device.type != "cuda" and not _triton_interpreted():
        raise BackendUnavailableError(
            f"backend 'triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 to run "
            "it on the CPU through Triton's interpreter")
    return backend


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---------------------------------------------------------------------------- argument checks

def _check_csr(indptr, indices, values, n_rows: int, what: str) -> None:
    if indptr.dim() != 1 or indptr.numel() != n_rows + 1:
        raise CSRError(f"{what}: indptr must have shape ({n_rows + 1},) for {n_rows} rows, "
                       f"got {tuple(indptr.shape)}")
    if indptr.dtype not in INDPTR_DTYPES:
        raise CSRError(f"{what}: indptr dtype must be int32 or int64, got {indptr.dtype}")
    if indices.dtype not in INDEX_DTYPES:
        raise CSRError(f"{what}: indices dtype must be int32, int64 or uint16, got {indices.dtype}")
    if values.dtype not in VALUE_DTYPES:
        raise CSRError(f"{what}: values dtype must be float32, float16, bfloat16 or float64, "
                       f"got {values.dtype}")
    if indices.dim() != 1 or values.dim() != 1 or indices.numel() != values.numel():
        raise CSRError(f"{what}: indices and values must be 1-D of equal length (nnz), got "
                       f"{tuple(indices.shape)} and {tuple(values.shape)}")


def _check_pattern(indptr, indices, n_cols: int, what: str) -> None:
    """The CSR contents the kernels index with: monotone indptr ending at nnz, 0 <= col < n_cols.

    O(nnz); kernels trust these (an out-of-range index reads out of bounds), so the untrusted
    entry points check them. CSRMatrix.validate() checks everything once, and SparseLinear then
    uses the unchecked entry points.
    """
    nnz = indices.numel()
    if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
        raise CSRError(f"{what}: indptr must start at 0 and end at nnz={nnz}, got "
                       f"{int(indptr[0])}..{int(indptr[-1])}; build the matrix with CSRMatrix")
    if indptr.numel() > 1 and bool((indptr[1:] < indptr[:-1]).any()):
        raise CSRError(f"{what}: indptr must be non-decreasing; build the matrix with CSRMatrix")
    if nnz:
        if indices.dtype == torch.uint16:  # torch has no min/max for uint16
            indices = indices.to(torch.int32)
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n_cols:
            raise CSRError(f"{what}: column indices must lie in [0, {n_cols}), got {lo}..{hi}")


def _check_dense(t: torch.Tensor, name: str, shape: tuple, dtype=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and a != s for a, s in zip(t.shape, shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (same as the activations), got {t.dtype}")


def _same_device(*tensors) -> torch.device:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}; "
                         "move the model or the input with .to(device)")
    return devices.pop()


def _out(out, shape, dtype, device, name="out"):
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{name} must be a {dtype} tensor of shape {tuple(shape)} on {device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return out


# ---------------------------------------------------------------------------- public ops

def spmm(x: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
         n_out: int, bias: torch.Tensor | None = None, relu: bool = False,
         backend: str = "auto", out: torch.Tensor | None = None) -> torch.Tensor:
    """Y = X W^T (+ bias) (then ReLU if relu), W a CSR matrix of shape (n_out, K).

    x: (B, K) float32/float16/bfloat16/float64; bias: (n_out,) same dtype as x or None.
    Returns (B, n_out) in x's dtype (accumulated in fp32, fp64 for fp64). Every argument is
    checked, the CSR pattern included (O(nnz)).
    """
    _check_dense(x, "x", (None, None))
    _check_csr(indptr, indices, values, n_out, "spmm weight")
    _check_pattern(indptr, indices, x.shape[1], "spmm weight")
    if bias is not None:
        _check_dense(bias, "bias", (n_out,), x.dtype)
    _same_device(x, indptr, indices, values, bias)
    return spmm_unchecked(x, indptr, indices, values, n_out, bias, relu, backend, out)


def spmm_unchecked(x: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
                   values: torch.Tensor, n_out: int, bias: torch.Tensor | None = None,
                   relu: bool = False, backend: str = "auto",
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """spmm over TRUSTED arrays: the caller guarantees what `spmm` checks (a pattern validated
    when it was built, e.g. SparseLinear's from a validated CSRMatrix; x (B, K) on the same
    device; bias (n_out,) in x's dtype). For hot paths that must not re-check per call."""
    name = resolve_backend(backend, x.device, x.dtype)
    out = _out(out, (x.shape[0], n_out), x.dtype, x.device)
    return BACKENDS[name].spmm(x.contiguous(), indptr, indices, values, bias, bool(relu), out)


def spmm_t(dy: torch.Tensor, t_indptr: torch.Tensor, t_indices: torch.Tensor,
           t_values: torch.Tensor, n_in: int, backend: str = "auto",
           out: torch.Tensor | None = None) -> torch.Tensor:
    """dX = dY W, with W^T given as CSR of shape (n_in, N) (see CSRMatrix.transpose()).

    dy: (B, N) float; returns (B, n_in) in dy's dtype.
    """
    _check_dense(dy, "dy", (None, None))
    _check_csr(t_indptr, t_indices, t_values, n_in, "spmm_t transposed weight")
    _check_pattern(t_indptr, t_indices, dy.shape[1], "spmm_t transposed weight")
    device = _same_device(dy, t_indptr, t_indices, t_values)
    name = resolve_backend(backend, device, dy.dtype)
    out = _out(out, (dy.shape[0], n_in), dy.dtype, device)
    return BACKENDS[name].spmm_t(dy.contiguous(), t_indptr, t_indices, t_values, out)


def sddmm(dy: torch.Tensor, x: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
          backend: str = "auto", out: torch.Tensor | None = None,
          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Weight gradient at the nonzeros only: out[j] = sum_b dy[b, row_j] * x[b, col_j].

    dy: (B, N), x: (B, K) same dtype; W's pattern is CSR (N, K). Returns (nnz,) in out_dtype,
    by default the accumulation dtype: float64 for float64 inputs, float32 for float32/float16/
    bfloat16 (gradients of half-precision values are accumulated and returned in fp32).
    """
    _check_dense(dy, "dy", (None, None))
    _check_dense(x, "x", (dy.shape[0], None), dy.dtype)
    n_rows = indptr.numel() - 1
    if dy.shape[1] != n_rows:
        raise ValueError(f"dy must have shape (B, {n_rows}) to match the weight's {n_rows} rows, "
                         f"got {tuple(dy.shape)}")
    _check_csr(indptr, indices, torch.empty(indices.numel(), device=indices.device), n_rows,
               "sddmm weight pattern")
    _check_pattern(indptr, indices, x.shape[1], "sddmm weight pattern")
    device = _same_device(dy, x, indptr, indices)
    name = resolve_backend(backend, device, x.dtype)
    if out_dtype is None:
        out_dtype = torch.float64 if dy.dtype == torch.float64 else torch.float32
    out = _out(out, (indices.numel(),), out_dtype, device)
    return BACKENDS[name].sddmm(dy.contiguous(), x.contiguous(), indptr, indices, out)


def prepare_chain(layers: list[base.ChainLayer], device: torch.device, dtype: torch.dtype,
                  backend: str = "auto"):
    """A callable x -> y for a chain of validated CSR layers (each with its ReLU).

    The backend's `prepare_chain` hook (e.g. the native whole-network engine) prepares the chain
    once; without one, or when it declines, the layers run one spmm at a time. The tensors are
    used in place: the caller rebuilds the chain when any of them is replaced or modified.
    x: (B, K0) in `dtype` on `device`; returns (B, n_out of the last layer).
    """
    module = BACKENDS[resolve_backend(backend, device, dtype)]
    hook = getattr(module, "prepare_chain", None)  # optional part of the protocol (base.py)
    run = hook(layers, dtype) if hook is not None else None
    return run if run is not None else base.chain_forward(module, layers)
