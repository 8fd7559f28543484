"""Correctness before timing: a provider is timed only when it agrees with the fp64 reference
within the package's tolerance table (lth_sparse.sparse.tolerances)."""
from __future__ import annotations

import torch

from lth_sparse.sparse.kernels.reference import row_ids


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| (in fp64); inf when shapes differ or y is not finite.

    y: any shape and floating dtype; ref: the same shape (fp64 by convention).
    """
    if tuple(y.shape) != tuple(ref.shape):
        return float("inf")
    y = y.detach().to(ref.device, torch.float64)
    if not torch.isfinite(y).all():
        return float("inf")
    scale = ref.abs().max().item() if ref.numel() else 0.0
    err = (y - ref).abs().max().item() if ref.numel() else 0.0
    return err / max(scale, 1e-30) if scale > 0 else err


def check_sparse_mlp(sparse, ref_model, x: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest relative error of a SparseMLP against its fp64 dense masked twin.

    sparse: SparseMLP; ref_model: the lottery MLP (prune masks) in fp64 with the same weights;
    x: (batch, in_features) float input. Compares the logits (with the ReLUs), then the input
    gradient and every layer's weight (at the stored nonzeros) and bias gradients of the network
    with its activations switched off: ReLU is discontinuous at 0, so a pre-activation within
    rounding of 0 may flip between any two correct implementations and move a whole row of the
    gradients; the linear chain checks spmm, spmm_t and sddmm through autograd exactly. Leaves
    no gradients behind.
    """
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
