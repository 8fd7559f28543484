"""The MLP family (LeNet-300-100 by default) and its named, seeded initialisation schemes."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lth_sparse.errors import ConfigError

if TYPE_CHECKING:
    from lth_sparse.lottery.config import ExperimentConfig


def _glorot_normal(w: torch.Tensor, g: torch.Generator) -> None:
    # The LTH paper's "Gaussian Glorot": N(0, 2 / (fan_in + fan_out)).
    fan_out, fan_in = w.shape
    w.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=g)


def _glorot_uniform(w, g):
    fan_out, fan_in = w.shape
    a = math.sqrt(6.0 / (fan_in + fan_out))
    w.uniform_(-a, a, generator=g)


def _kaiming_normal(w, g):
    w.normal_(0.0, math.sqrt(2.0 / w.shape[1]), generator=g)


def _kaiming_uniform(w, g):
    a = math.sqrt(6.0 / w.shape[1])
    w.uniform_(-a, a, generator=g)


def _orthogonal(w, g):
    # QR of a Gaussian matrix with the sign fix, as torch.nn.init.orthogonal_ does, but seeded.
    rows, cols = w.shape
    flat = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r))
    w.copy_(q if rows >= cols else q.T)


def _pytorch_default(w, g):
    # nn.Linear's default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    a = 1.0 / math.sqrt(w.shape[1])
    w.uniform_(-a, a, generator=g)


INIT_SCHEMES = {
    "glorot_normal": _glorot_normal,
    "glorot_uniform": _glorot_uniform,
    "kaiming_normal": _kaiming_normal,
    "kaiming_uniform": _kaiming_uniform,
    "orthogonal": _orthogonal,
    "pytorch_default": _pytorch_default,
}


def initialize(model: "MLP", scheme: str, seed: int) -> None:
    """Re-initialise every layer of `model` in place: same scheme + seed -> same weights.

    Biases start at zero, except under "pytorch_default" (nn.Linear's uniform bias init).
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            INIT_SCHEMES[scheme](layer.weight, g)
            if scheme == "pytorch_default":
                a = 1.0 / math.sqrt(layer.weight.shape[1])
                layer.bias.uniform_(-a, a, generator=g)
            else:
                layer.bias.zero_()


class MLP(nn.Module):
    """Fully connected ReLU network producing logits.

    input (B, input_size) or (B, 1, 28, 28) float32 -> logits (B, num_classes).
    `layers` is an nn.ModuleList of nn.Linear (PyTorch weight layout (out, in)).
    """

    def __init__(self, input_size: int = 784, hidden: tuple[int, ...] = (300, 100),
                 num_classes: int = 10, init: str = "glorot_normal", seed: int = 0):
        super().__init__()
        if input_size <= 0 or num_classes <= 0 or any(h <= 0 for h in hidden):
            raise ConfigError(f"layer sizes must be positive, got input={input_size}, "
                              f"hidden={list(hidden)}, classes={num_classes}")
        sizes = [input_size, *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        initialize(self, init, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def build_model(cfg: "ExperimentConfig", seed: int | None = None) -> MLP:
    """The experiment's MLP (784 inputs, 10 classes), initialised with its scheme and seed
    (default: the training seed)."""
    return MLP(784, tuple(cfg.model.hidden), 10, init=cfg.model.init,
               seed=cfg.train.seed if seed is None else seed)
