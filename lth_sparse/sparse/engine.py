"""Engine: a whole sparse MLP (CSR layers, fused bias + ReLU) run in one native call.

Wraps `lth_sparse._C.SparseMLPEngine` (csrc/engine/sparse_mlp_engine.cpp). At small batches a
LeNet-300-100 ticket is a few microseconds of arithmetic, so calling one kernel per layer from
Python would spend most of the time in call overhead; the engine runs every layer inside one
call (GIL released), with its activation buffers reused per calling thread.

The pure-PyTorch reference (`lth_sparse.sparse.kernels.reference.spmm`, layer by layer) is the
oracle it is tested against. SparseMLP uses an Engine automatically for CPU inference (see
`lth_sparse.sparse.kernels.cpu.prepare_chain`, the backend protocol's chain hook).

The engine computes in float32: values and bias of another dtype are converted once when the
engine is built, and float16/bfloat16 activations are upcast per call (the result is cast back
to the input's dtype). float64 networks are not run here (the layer-by-layer kernels keep fp64).
"""
from __future__ import annotations

from typing import Sequence

import torch

from lth_sparse import _ext
from lth_sparse.errors import BackendUnavailableError, CSRError
from lth_sparse.sparse.csr import CSRMatrix

__all__ = ["Engine", "available"]

_INT32_MAX = 2**31 - 1
_ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def available() -> tuple[bool, str]:
    """(True, "ok") when the compiled extension has the engine, else (False, why not)."""
    ext = _ext.extension()
    if ext is None:
        return False, _ext.unavailable_reason()
    if not hasattr(ext, "SparseMLPEngine"):
        return False, ("lth_sparse._C was built without the engine; rebuild it with "
                       "`pip install -e .`")
    return True, "ok"


def _numpy(t: torch.Tensor, dtype: torch.dtype, what: str):
    """A C-contiguous CPU numpy view of t in `dtype` (a converted copy only when needed)."""
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on {t.device}; the engine runs on the CPU (move the model "
                         "with .cpu())")
    t = t.detach()
    if t.dtype != dtype:
        t = t.to(dtype)
    return t.contiguous().numpy()


def _layer_arrays(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                  bias: torch.Tensor | None, n_in: int, relu: bool, what: str):
    """One layer as the tuple _C.SparseMLPEngine takes: (indptr int32, indices uint16/int32,
    values float32, bias float32 or None, n_in, relu)."""
    nnz = indices.numel()
    if nnz > _INT32_MAX or indptr.numel() - 1 > _INT32_MAX:
        raise CSRError(f"{what}: the engine takes int32 indptr (nnz and rows < 2**31), got "
                       f"nnz={nnz}, rows={indptr.numel() - 1}")
    if indices.dtype not in (torch.uint16, torch.int32):
        if n_in > _INT32_MAX:
            raise CSRError(f"{what}: the engine needs int32 or uint16 column indices "
                           f"(in_features < 2**31), got in_features={n_in}")
        index_dtype = torch.int32
    else:
        index_dtype = indices.dtype
    return (_numpy(indptr, torch.int32, f"{what} indptr"),
            _numpy(indices, index_dtype, f"{what} indices"),
            _numpy(values, torch.float32, f"{what} values"),
            None if bias is None else _numpy(bias, torch.float32, f"{what} bias"),
            int(n_in), bool(relu))


class Engine:
    """A chain of CSR layers y = relu?(x W_i^T + b_i) as one native forward.

    Engine(layers, relu=None, copy=True, threads=0)
      layers: sequence of (CSRMatrix (n_out, n_in), bias (n_out,) or None), input to output;
              each matrix is validated here (CSRMatrix.validate) and the layers must chain.
      relu:   one bool per layer; default: ReLU after every layer but the last (SparseMLP).
      copy:   True: the engine owns float32/int32/uint16 copies of the arrays. False: it reads
              the tensors' memory where no conversion is needed (kept alive by this object);
              do not change them while the engine exists (rebuild it instead).
      threads: threads per forward; 0 = the OpenMP default (lth_sparse._C.set_num_threads).

    engine(x): x (B, n_in) float32/float16/bfloat16 CPU tensor -> (B, n_out) in x's dtype.
    """

    __slots__ = ("_engine", "_run", "_n_in", "_n_out", "_ext")

    def __init__(self, layers: Sequence[tuple[CSRMatrix, torch.Tensor | None]],
                 relu: Sequence[bool] | None = None, copy: bool = True, threads: int = 0):
        layers = list(layers)
        if not layers:
            raise ValueError("Engine needs at least one layer")
        if relu is None:
            relu = [i < len(layers) - 1 for i in range(len(layers))]
        relu = list(relu)
        if len(relu) != len(layers):
            raise ValueError(f"relu has {len(relu)} entries for {len(layers)} layers")
        arrays = []
        for i, item in enumerate(layers):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], CSRMatrix)):
                raise TypeError(f"layer {i} must be a tuple (CSRMatrix, bias or None), got "
                                f"{type(item).__name__}")
            csr, bias = item
            what = f"layer {i}"
            csr.validate(what)
            if bias is not None and tuple(bias.shape) != (csr.n_rows,):
                raise ValueError(f"{what}: bias must have shape ({csr.n_rows},) to match the "
                                 f"weight's rows, got {tuple(bias.shape)}")
            if i and csr.n_cols != layers[i - 1][0].n_rows:
                raise ValueError(f"{what} takes {csr.n_cols} inputs but layer {i - 1} produces "
                                 f"{layers[i - 1][0].n_rows}; the layers must chain")
            arrays.append(_layer_arrays(csr.indptr, csr.indices, csr.values, bias, csr.n_cols,
                                        relu[i], what))
        self._build(arrays, copy, threads)

    @classmethod
    def from_chain(cls, chain, copy: bool = True, threads: int = 0) -> "Engine":
        """From already validated layers as the backend protocol passes them
        ([lth_sparse.sparse.kernels.base.ChainLayer], input to output). Only the native
        engine's O(nnz) memory-safety checks run (chaining, counts, index range)."""
        self = cls.__new__(cls)
        arrays = [_layer_arrays(l.indptr, l.indices, l.values, l.bias, l.n_in, l.relu,
                                f"layer {i}") for i, l in enumerate(chain)]
        self._build(arrays, copy, threads)
        return self

    @classmethod
    def from_sparse_mlp(cls, model, copy: bool = True, threads: int = 0) -> "Engine":
        """From a SparseMLP (its layers' current values and biases)."""
        from lth_sparse.sparse.kernels.base import ChainLayer
        chain = [ChainLayer(l.indptr, l.indices, l.values.detach(),
                            None if l.bias is None else l.bias.detach(), l.relu,
                            l.out_features, l.in_features)
                 for l in model.layers.values()]
        return cls.from_chain(chain, copy=copy, threads=threads)

    def _build(self, arrays, copy: bool, threads: int) -> None:
        ok, reason = available()
        if not ok:
            raise BackendUnavailableError(f"the native engine is unavailable: {reason}")
        try:
            self._engine = _ext.extension().SparseMLPEngine(arrays, copy=bool(copy),
                                                            threads=int(threads))
        except ValueError as exc:  # the native checks name the layer
            raise CSRError(str(exc)) from None
        self._run = self._engine.forward_ptr  # bound once: the per-call path is one C call
        self._n_in = self._engine.n_in
        self._n_out = self._engine.n_out

    # ------------------------------------------------------------------ properties

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def n_layers(self) -> int:
        return self._engine.n_layers

    @property
    def nnz(self) -> int:
        return self._engine.nnz

    @property
    def copies(self) -> bool:
        """True when the engine owns copies of the arrays (copy=True)."""
        return self._engine.copies

    @property
    def threads(self) -> int:
        return self._engine.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._engine.threads = int(n)

    @property
    def native(self):
        """The underlying lth_sparse._C.SparseMLPEngine (forward(x, out, threads, path))."""
        return self._engine

    def __repr__(self) -> str:
        return (f"Engine(n_in={self._n_in}, n_out={self._n_out}, layers={self.n_layers}, "
                f"nnz={self.nnz}, copies={self.copies}, threads={self.threads})")

    # ------------------------------------------------------------------ forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, n_in) float32/float16/bfloat16 on the CPU -> (B, n_out) in x's dtype."""
        # The common case costs a handful of attribute reads and one C call: this runs per
        # forward, and at batch 1 the whole network takes about 10 us.
        if (type(x) is torch.Tensor and x.dtype is torch.float32 and x.is_cpu and x.dim() == 2
                and x.shape[1] == self._n_in and x.is_contiguous()):
            n = x.shape[0]
            out = torch.empty(n, self._n_out)  # (faster than a shape tuple)
            self._run(x.data_ptr(), n, out.data_ptr())
            return out
        return self._slow_call(x)

    def _slow_call(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Engine input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self._n_in:
            raise ValueError(f"Engine input must have shape (B, {self._n_in}), got "
                             f"{tuple(x.shape)}")
        if x.dtype not in _ACTIVATION_DTYPES:
            raise TypeError(f"Engine input must be float32, float16 or bfloat16, got {x.dtype} "
                            "(float64 networks run layer by layer: backend 'cpu' ops)")
        if not x.is_cpu:
            raise ValueError(f"Engine input is on {x.device}; the engine runs on the CPU")
        x32 = x.detach().to(torch.float32).contiguous()
        out = torch.empty((x.shape[0], self._n_out))
        self._run(x32.data_ptr(), x.shape[0], out.data_ptr())
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def forward_into(self, x: torch.Tensor, out: torch.Tensor, path: str = "auto",
                     threads: int = 0) -> torch.Tensor:
        """Write the network's output for x (B, n_in) into out (B, n_out), both float32
        contiguous CPU tensors (checked; errors name the problem). Returns out.
        path: 'auto', 'gather' or 'tiled' (tests and benchmarks pin one)."""
        for name, t in (("x", x), ("out", out)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or not t.is_cpu:
                raise TypeError(f"{name} must be a float32 CPU tensor")
        self._engine.forward(x.detach().numpy(), out.detach().numpy(), threads, path)
        return out
