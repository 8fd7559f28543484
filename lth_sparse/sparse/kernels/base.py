"""The backend protocol: what every kernel backend module provides.

A backend is a plain module registered by name in `lth_sparse.sparse.ops.BACKENDS`. It exposes
pure functions over tensors; `lth_sparse.sparse.ops` checks arguments and allocates outputs
once, so backends trust their inputs:

    available() -> (bool, reason)
    spmm(x, indptr, indices, values, bias, relu, out)   -> out     Y = X W^T (+ b) (ReLU)
    spmm_t(dy, t_indptr, t_indices, t_values, out)      -> out     dX = dY W (W^T given as CSR)
    sddmm(dy, x, indptr, indices, out)                  -> out     dW values at the nonzeros

and, optionally, a whole-network hook:

    prepare_chain(layers: list[ChainLayer], dtype) -> Callable[[Tensor], Tensor] | None

which prepares a chain of layers once (e.g. the native whole-network engine) and returns a
callable x (B, K0) -> (B, n_out of the last layer), or None when it cannot take this chain
(then `chain_forward` below runs the layers one spmm call at a time).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

import torch

REQUIRED = ("available", "spmm", "spmm_t", "sddmm")


@dataclass(frozen=True)
class ChainLayer:
    """One layer of a chain, as validated tensors (a SparseLinear's buffers and parameters).

    y (B, n_out) = x (B, n_in) W^T + bias, then ReLU if relu; W CSR (n_out, n_in).
    """
    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    bias: Optional[torch.Tensor]
    relu: bool
    n_out: int
    n_in: int


def chain_forward(module: ModuleType, layers: list[ChainLayer]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The generic chain: one backend spmm per layer, each output freshly allocated."""
    def run(x: torch.Tensor) -> torch.Tensor:
        for l in layers:
            out = torch.empty((x.shape[0], l.n_out), dtype=x.dtype, device=x.device)
            x = module.spmm(x, l.indptr, l.indices, l.values, l.bias, l.relu, out)
        return x
    return run


def check_backend_module(name: str, module: ModuleType) -> ModuleType:
    """The module itself, after checking it provides every required function."""
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise TypeError(f"backend {name!r} ({module.__name__}) lacks {', '.join(missing)}")
    return module
