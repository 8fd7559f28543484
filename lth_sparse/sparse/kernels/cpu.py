"""C++ (OpenMP) CPU backend: wraps `lth_sparse._C.spmm / spmm_t / sddmm`.

Same contract as every backend (see `lth_sparse.sparse.kernels`): arguments were checked by
`lth_sparse.sparse.ops`, activations are contiguous, `out` is preallocated, and the result is written
into `out` and returned. The C++ side takes numpy views of the tensors (zero-copy, so writes
land in the tensors' memory) and never allocates; this module supplies any workspace.

Conversions done here, each a copy only when needed:
- The compute dtype is float64 for float64 activations and float32 otherwise. float16/bfloat16
  activations, values or bias are upcast to float32 (the C++ kernels take float32/float64 only),
  and values/bias of another float dtype are cast to the compute dtype.
- int64 indices and indptr become int32 (int32 and uint16 indices pass as they are; uint16 moves
  the fewest bytes and is the fastest choice for K <= 65536).
- When `out` is not a contiguous tensor of the compute dtype (e.g. float16 activations, or a
  float64 `out` requested for sddmm of float32 data), the kernel writes a temporary of the
  compute dtype that is then copied into `out`.
"""
from __future__ import annotations

import threading

import torch

from lth_sparse import _ext

_tls = threading.local()  # per-thread workspace: the kernels release the GIL


def available() -> tuple[bool, str]:
    ext = _ext.extension()
    if ext is None:
        return False, _ext.unavailable_reason()
    if not hasattr(ext, "spmm"):
        return False, ("lth_sparse._C was built without the CPU kernels; rebuild it with "
                       "`pip install -e .`")
    return True, "ok"


def _C():
    ext = _ext.extension()
    if ext is None:
        from lth_sparse.errors import BackendUnavailableError
        raise BackendUnavailableError(f"backend 'cpu' is unavailable: {_ext.unavailable_reason()}")
    return ext


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/float16/bfloat16 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _np(t: torch.Tensor, dtype: torch.dtype | None = None):
    """Zero-copy numpy view of `t` (cast to `dtype` and made contiguous first if needed)."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.requires_grad:
        t = t.detach()
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def _index(t: torch.Tensor, what: str):
    if t.dtype in (torch.int32, torch.uint16):
        return _np(t)
    if t.numel() and int(t.max()) > torch.iinfo(torch.int32).max:
        raise ValueError(f"{what} exceeds int32; the cpu backend needs int32 (or uint16) indices")
    return _np(t, torch.int32)


def _target(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`out` itself when the kernel can write it directly, else a temporary of `dtype`."""
    if out.dtype == dtype and out.is_contiguous():
        return out
    return torch.empty(out.shape, dtype=dtype)


def _finish(tmp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if tmp is not out:
        out.copy_(tmp)
    return out


def _workspace(op: str, B: int, N: int, K: int, dtype: torch.dtype):
    """A reused per-thread buffer big enough for op's batched path (None when not needed)."""
    ext = _C()
    if B <= ext.SMALL_BATCH:  # the gather path (chosen for such batches) needs none
        return None
    n = ext.workspace_size(op, B, N, K, "float64" if dtype == torch.float64 else "float32")
    if n == 0:
        return None
    cache = getattr(_tls, "ws", None)
    if cache is None:
        cache = _tls.ws = {}
    buf = cache.get(dtype)
    if buf is None or buf.numel() < n:
        # Grow geometrically so slowly rising batch sizes do not reallocate every call.
        size = max(n, int(buf.numel() * 1.5) if buf is not None else 0)
        buf = cache[dtype] = torch.empty(size, dtype=dtype)
    return buf.numpy()


def spmm(x, indptr, indices, values, bias, relu, out):
    """out (B, N) = x (B, K) @ W.T (+ bias) (ReLU); W CSR (N, K). Returns out."""
    cd = compute_dtype(x.dtype)
    tmp = _target(out, cd)
    B, K = x.shape
    N = out.shape[1]
    _C().spmm(_np(x, cd), _index(indptr, "indptr"), _index(indices, "indices"), _np(values, cd),
              None if bias is None else _np(bias, cd), bool(relu), tmp.numpy(),
              _workspace("spmm", B, N, K, cd))
    return _finish(tmp, out)


def spmm_t(dy, t_indptr, t_indices, t_values, out):
    """out (B, K) = dy (B, N) @ W, W^T given as CSR (K, N). Returns out."""
    cd = compute_dtype(dy.dtype)
    tmp = _target(out, cd)
    B, N = dy.shape
    K = out.shape[1]
    _C().spmm_t(_np(dy, cd), _index(t_indptr, "t_indptr"), _index(t_indices, "t_indices"),
                _np(t_values, cd), tmp.numpy(), _workspace("spmm_t", B, N, K, cd))
    return _finish(tmp, out)


def sddmm(dy, x, indptr, indices, out):
    """out (nnz,)[j] = sum_b dy[b, row_j] * x[b, col_j]; W's pattern CSR (N, K). Returns out."""
    cd = compute_dtype(x.dtype)
    tmp = _target(out, cd)
    B, N = dy.shape
    K = x.shape[1]
    _C().sddmm(_np(dy, cd), _np(x, cd), _index(indptr, "indptr"), _index(indices, "indices"),
               tmp.numpy(), _workspace("sddmm", B, N, K, cd))
    return _finish(tmp, out)


def prepare_chain(layers, dtype: torch.dtype):
    """The backend protocol's chain hook (see kernels/base.py), for float32/16/bf16
    activations; None for float64 (which then runs layer by layer in fp64).

    The native whole-network engine (lth_sparse.sparse.engine.Engine: every layer in one C++
    call) when the extension has it, else a _Chain (one spmm call per layer). The engine owns
    copies of the arrays, so it can take its batch-1 path (a transposed copy that skips zero
    and background inputs: 8.1 vs 12.4 us for a 10.8% LeNet ticket on MNIST images, borrowing),
    and nothing done to the tensors later can make it read out of bounds. In-place changes are
    not seen: SparseMLP rebuilds the plan when a version counter moves, and drops it on every
    graph-recording forward, since fused optimizers update values without bumping them.
    """
    if dtype == torch.float64:
        return None
    from lth_sparse.sparse import engine  # lazy: engine imports the CSR container
    if engine.available()[0]:
        return engine.Engine.from_chain(layers, copy=True)
    return _Chain(layers)


class _Chain:
    """A chain of spmm calls (one per layer, each with its ReLU) with every layer's arrays
    converted to numpy once: per call only the activations and outputs are wrapped.

    layers: [base.ChainLayer]. Views share the tensors' memory (in-place updates are seen);
    values or bias that are not float32 are converted once, so the owner rebuilds the chain
    when they change.
    """

    def __init__(self, layers):
        self.layers = [(_index(l.indptr, "indptr"), _index(l.indices, "indices"),
                        _np(l.values, torch.float32),
                        None if l.bias is None else _np(l.bias, torch.float32), bool(l.relu),
                        int(l.n_out)) for l in layers]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K0) float32/float16/bfloat16 -> (B, n_out) (cast back to x's dtype)."""
        ext = _C()
        h = _np(x, torch.float32)
        out = x
        for indptr, indices, values, bias, relu, n_out in self.layers:
            out = torch.empty((h.shape[0], n_out), dtype=torch.float32)
            ext.spmm(h, indptr, indices, values, bias, relu, out.numpy(),
                     _workspace("spmm", h.shape[0], n_out, h.shape[1], torch.float32))
            h = out.numpy()
        return out if x.dtype == torch.float32 else out.to(x.dtype)
