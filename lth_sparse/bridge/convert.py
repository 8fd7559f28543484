"""Pruned torch modules <-> CSR: the one place that reads torch.nn.utils.prune's
reparametrisation (`weight_orig` * `weight_mask`) and builds the lottery wing's `MLP`.

- `csr_from_linear`: an nn.Linear (pruned or plain) -> CSRMatrix of its weight.
- `sparse_linear_from_linear`, `sparse_mlp_from_mlp`: modules -> SparseLinear / SparseMLP.
- `dense_mlp_from_sparse`: SparseMLP -> MLP with zeros where pruned (optionally prune masks).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from lth_sparse.lottery.models import MLP
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.kernels import reference
from lth_sparse.sparse.nn import SparseLinear, SparseMLP

__all__ = ["csr_from_linear", "sparse_linear_from_linear", "sparse_mlp_from_mlp",
           "dense_mlp_from_sparse"]


def csr_from_linear(linear: nn.Module, index_dtype: Any = "auto",
                    value_dtype: torch.dtype | None = None, name: str = "weight") -> CSRMatrix:
    """CSR of an nn.Linear's weight (out_features, in_features).

    A layer pruned with torch.nn.utils.prune (it has `weight_orig` and `weight_mask`) stores
    exactly the mask's kept positions with values weight_orig * weight_mask; an unpruned
    layer stores its nonzero weights. The bias is not part of the matrix: take `linear.bias`.
    """
    mask = getattr(linear, "weight_mask", None)
    if mask is not None and hasattr(linear, "weight_orig"):
        weight = linear.weight_orig.detach() * mask.detach()
    else:
        weight = linear.weight.detach()
    return CSRMatrix.from_dense(weight, mask, index_dtype=index_dtype, value_dtype=value_dtype,
                                name=name)


def sparse_linear_from_linear(linear: nn.Linear, backend: str = "auto", relu: bool = False,
                              index_dtype="auto", value_dtype: torch.dtype | None = None,
                              name: str = "weight") -> SparseLinear:
    """A SparseLinear of an nn.Linear: pruned with torch.nn.utils.prune (weight_mask defines the
    pattern) or plain (its nonzero weights define it). The bias is copied (in the values' dtype)."""
    csr = csr_from_linear(linear, index_dtype=index_dtype, value_dtype=value_dtype, name=name)
    bias = linear.bias.detach() if linear.bias is not None else None
    return SparseLinear(csr, bias, backend=backend, relu=relu, name=name)


def sparse_mlp_from_mlp(mlp: nn.Module, backend: str = "auto", index_dtype="auto",
                        value_dtype: torch.dtype | None = None) -> SparseMLP:
    """A SparseMLP of an lth_sparse MLP (its `layers` of nn.Linear), pruned with
    torch.nn.utils.prune (weight_mask defines each pattern) or dense (nonzeros define it).

    index_dtype: "auto" (uint16 when in_features <= 65536), torch.int32 or torch.int64.
    value_dtype: dtype of values and bias (default: the MLP's weight dtype).
    """
    linears = getattr(mlp, "layers", None)
    if linears is None or not all(isinstance(m, nn.Linear) for m in linears):
        raise TypeError("sparse_mlp_from_mlp needs a model whose `layers` are nn.Linear modules "
                        f"(lth_sparse.lottery.models.MLP), got {type(mlp).__name__}")
    return SparseMLP({f"fc{i + 1}": sparse_linear_from_linear(
                          lin, backend=backend, index_dtype=index_dtype,
                          value_dtype=value_dtype, name=f"fc{i + 1}")
                      for i, lin in enumerate(linears)})


def dense_mlp_from_sparse(sparse: SparseMLP, masks: bool = False) -> MLP:
    """An MLP with the SparseMLP's weights (zeros where pruned), dtype and device.

    masks=True also attaches torch.nn.utils.prune masks of the patterns (weight_mask), so that
    training the dense model keeps pruned weights at zero.
    """
    layers = list(sparse.layers.values())
    mlp = MLP(input_size=layers[0].in_features,
              hidden=tuple(layer.out_features for layer in layers[:-1]),
              num_classes=layers[-1].out_features)
    mlp.to(device=layers[0].values.device, dtype=layers[0].values.dtype)
    with torch.no_grad():
        for src, dense in zip(layers, mlp.layers):
            dense.weight.copy_(src.to_dense_weight())
            if src.bias is not None:
                dense.bias.copy_(src.bias)
            else:
                dense.bias.zero_()
    if masks:
        for src, dense in zip(layers, mlp.layers):
            mask = reference.to_dense(src.indptr, src.indices, torch.ones_like(src.values),
                                      src.shape)
            prune.custom_from_mask(dense, "weight", mask)
    return mlp
