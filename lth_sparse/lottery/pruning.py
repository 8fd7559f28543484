"""Masks made with torch.nn.utils.prune, plus the bookkeeping the lottery needs around them.

Tensors are named "<layer>.<param>" ("fc1.weight", "fc3.bias"). A pruned parameter keeps its raw
values in `<param>_orig` and its mask in the buffer `<param>_mask` (torch's reparametrisation), so
the effective weight is exactly zero where pruned and no gradient reaches the pruned raw values.
Pruning rounds compose (PruningContainer): each round prunes a fraction of the survivors.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from lth_sparse.errors import ConfigError
from lth_sparse.lottery.config import layer_names

Params = dict[str, torch.Tensor]


def named_layers(model) -> dict[str, nn.Linear]:
    """{"fc1": layer, ...} in forward order."""
    return dict(zip(layer_names(len(model.layers)), model.layers))


def _targets(model, prune_bias: bool) -> list[tuple[str, nn.Linear, str]]:
    out = []
    for name, layer in named_layers(model).items():
        out.append((name, layer, "weight"))
        if prune_bias:
            out.append((name, layer, "bias"))
    return out


def _current(layer: nn.Linear, pname: str) -> torch.Tensor:
    """The parameter as it is now. torch's pruning would score the cached `layer.weight`, which
    is only refreshed by a forward pass and so misses the last optimizer step and any rewind."""
    mask = getattr(layer, pname + "_mask", None)
    if mask is None:
        return getattr(layer, pname).detach()
    return (getattr(layer, pname + "_orig") * mask).detach()


def prune_round(model, method: str, rates: dict[str, float], *, prune_bias: bool = False,
                seed: int = 0) -> None:
    """Prune one round in place: each layer loses `rates[layer]` of its surviving weights.

    method: "layerwise" (l1_unstructured per tensor), "global" (global_unstructured: one rate,
    `rates["fc1"]`, applied to the survivors of all layers pooled), or "random"
    (random_unstructured per tensor, seeded).
    """
    targets = _targets(model, prune_bias)
    if method == "layerwise":
        for name, layer, pname in targets:
            prune.l1_unstructured(layer, pname, amount=float(rates[name]),
                                  importance_scores=_current(layer, pname))
    elif method == "global":
        rate = float(rates[next(iter(rates))])
        prune.global_unstructured(
            [(layer, p) for _, layer, p in targets], pruning_method=prune.L1Unstructured,
            amount=rate, importance_scores={(layer, p): _current(layer, p) for _, layer, p in targets})
    elif method == "random":
        # torch's random pruning draws from the global RNG: fork it so the seed decides alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for name, layer, pname in targets:
                prune.random_unstructured(layer, pname, amount=float(rates[name]))
    else:
        raise ConfigError(f"unknown pruning method {method!r}; choose layerwise, global or random")


def random_masks_like(model, masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random masks with exactly the same number of survivors per tensor as `masks`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, mask in masks.items():
        keep = int(mask.sum())
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=g)[:keep]] = True
        out[key] = flat.view_as(mask)
    return out


def get_masks(model) -> dict[str, torch.Tensor]:
    """Boolean masks of every pruned tensor, {"fc1.weight": (out, in) bool, ...}."""
    masks = {}
    for name, layer in named_layers(model).items():
        for pname in ("weight", "bias"):
            buf = getattr(layer, pname + "_mask", None)
            if buf is not None:
                masks[f"{name}.{pname}"] = buf.detach().to(torch.bool).clone()
    return masks


def set_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Replace all pruning of `model` by exactly `masks` (tensors absent from it become unpruned)."""
    layers = named_layers(model)
    for name, layer in layers.items():
        for pname in ("weight", "bias"):
            if prune.is_pruned(layer) and hasattr(layer, pname + "_mask"):
                prune.remove(layer, pname)
    for key, mask in masks.items():
        name, pname = key.split(".")
        prune.custom_from_mask(layers[name], pname, mask.to(torch.float32))


def get_params(model) -> Params:
    """Raw (un-masked) values of every parameter, cloned: {"fc1.weight": ..., "fc1.bias": ...}."""
    out = {}
    for name, layer in named_layers(model).items():
        for pname in ("weight", "bias"):
            raw = getattr(layer, pname + "_orig", None)
            if raw is None:
                raw = getattr(layer, pname)
            out[f"{name}.{pname}"] = raw.detach().clone()
    return out


def load_params(model, params: Params) -> None:
    """Write raw values into the model (into `_orig` where pruned); masks stay as they are."""
    layers = named_layers(model)
    with torch.no_grad():
        for key, value in params.items():
            name, pname = key.split(".")
            layer = layers[name]
            target = getattr(layer, pname + "_orig", None)
            if target is None:
                target = getattr(layer, pname)
            target.copy_(value)
            if hasattr(layer, pname + "_mask"):  # keep the cached masked tensor in step
                setattr(layer, pname, target * getattr(layer, pname + "_mask"))


def sparsity_report(model, desired_remaining: dict[str, float]) -> dict:
    """Actual vs desired fraction of weights remaining, per layer and overall (weights only)."""
    layers = named_layers(model)
    per_layer, total, kept = {}, 0, 0
    desired_kept = 0.0
    for name, layer in layers.items():
        mask = getattr(layer, "weight_mask", None)
        n = layer.weight.numel()
        k = int(mask.sum()) if mask is not None else n
        per_layer[name] = {"remaining": k / n, "desired": desired_remaining[name],
                           "kept": k, "total": n}
        total += n
        kept += k
        desired_kept += desired_remaining[name] * n
    return {"layers": per_layer, "remaining": kept / total, "desired": desired_kept / total,
            "kept": kept, "total": total}
