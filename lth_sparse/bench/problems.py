"""Benchmark problems: one random sparse layer Y = X W^T + b, as every provider sees it."""
from __future__ import annotations

import math

import torch

from lth_sparse.bench.config import shape_label
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.kernels import reference


class Problem:
    """One random sparse layer: W (out, in) with a random mask at `sparsity`, and a bias.

    The master copy is an fp32 CSRMatrix (int32 indices) on the CPU; `dense(dtype)`,
    `csr(dtype, index_dtype)` and `bias(dtype)` give copies in any dtype on the benchmark device,
    all derived from that master (so every provider sees exactly the same rounded numbers).
    """

    def __init__(self, in_features: int, out_features: int, sparsity: float, device: str,
                 seed: int = 0):
        self.in_features, self.out_features, self.sparsity = in_features, out_features, sparsity
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)
        keep = torch.rand(out_features, in_features, generator=g) >= sparsity
        self.master = CSRMatrix.from_dense(w, keep, index_dtype=torch.int32, name=self.shape)
        self.bias32 = torch.randn(out_features, generator=g) * 0.1
        self.nnz = self.master.nnz
        self.density = self.master.density
        self._cache: dict = {}

    @property
    def shape(self) -> str:
        return shape_label((self.in_features, self.out_features))

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def csr(self, dtype: torch.dtype, index_dtype: torch.dtype = torch.int32) -> CSRMatrix:
        """The weight as a CSRMatrix on the device (values `dtype`, indices `index_dtype`)."""
        return self._cached(("csr", dtype, index_dtype), lambda: self.master.to(
            self.device, dtype=dtype, index_dtype=index_dtype))

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """Masked dense weight (out, in) on the device: a dense matrix full of zeros."""
        return self._cached(("dense", dtype), lambda: self.csr(dtype).to_dense())

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """(out,) on the device."""
        return self._cached(("bias", dtype), lambda: self.bias32.to(self.device, dtype))

    def x(self, batch: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
        """A random input (batch, in) on the device."""
        g = torch.Generator().manual_seed(seed + batch)
        return torch.randn(batch, self.in_features, generator=g).to(self.device, dtype)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """fp64 Y = X W^T + b from x's and W's rounded values: the reference kernel's formula,
        with its dense W (lth_sparse.sparse.kernels.reference.to_dense) built once per dtype."""
        def make():
            w = self.csr(x.dtype)
            return reference.to_dense(w.indptr, w.indices, w.values.double(), w.shape)
        w64 = self._cached(("ref_dense", x.dtype), make)
        return torch.addmm(self.bias(x.dtype).double(), x.double(), w64.t())

    def release(self) -> None:
        """Drop the device copies (the next cell's problem needs the memory)."""
        self._cache.clear()
