"""Fused sparse training: a whole Adam step of a sparse MLP in one native call.

`FusedTrainer` wraps the C++ `SparseMLPTrainer` (csrc/engine/sparse_mlp_trainer.cpp): forward
(bias + ReLU fused), softmax cross-entropy (mean over the batch, as F.cross_entropy), backward at
the nonzeros only (SDDMM for the weight gradients, the cached transpose pattern for the input
gradients) and torch.optim.Adam's update (_single_tensor_adam's arithmetic), on the CPU in fp32.
The pure-PyTorch oracle is SparseMLP (reference backend) trained with torch.optim.Adam.

Minibatches are picked by row index from in-memory tensors (`set_data` + `step_rows`), so a
step wraps no tensors and copies nothing in Python.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from lth_sparse import _ext
from lth_sparse.errors import ConfigError
from lth_sparse.sparse.csr import CSRMatrix

__all__ = ["FusedTrainer", "fused_trainer_available"]

STATE_NAMES = ("values", "bias", "exp_avg", "exp_avg_sq", "bias_exp_avg", "bias_exp_avg_sq")


def fused_trainer_available() -> tuple[bool, str]:
    """(available, reason): the compiled extension with SparseMLPTrainer is importable."""
    ext = _ext.extension()
    if ext is None:
        return False, _ext.unavailable_reason()
    if not hasattr(ext, "SparseMLPTrainer"):
        return False, "lth_sparse._C was built without SparseMLPTrainer; rebuild the extension"
    return True, "ok"


def _np_f32(t: Tensor | np.ndarray, what: str) -> np.ndarray:
    """A C-contiguous float32 numpy view of a CPU tensor (a copy only if it is not contiguous)."""
    if isinstance(t, Tensor):
        if t.device.type != "cpu":
            raise ConfigError(f"the fused sparse trainer runs on the CPU; {what} is on {t.device}")
        if t.dtype != torch.float32:
            raise TypeError(f"{what} must be float32, got {t.dtype}")
        return t.detach().contiguous().numpy()
    return np.ascontiguousarray(t)


def _np_i64(t: Tensor | np.ndarray, what: str) -> np.ndarray:
    if isinstance(t, Tensor):
        if t.device.type != "cpu":
            raise ConfigError(f"the fused sparse trainer runs on the CPU; {what} is on {t.device}")
        if t.dtype != torch.int64:
            raise TypeError(f"{what} must be int64 class ids, got {t.dtype}")
        return t.detach().contiguous().numpy()
    return np.ascontiguousarray(t)


class FusedTrainer:
    """A sparse MLP (fixed CSR patterns) trained with Adam by the native fused step.

    layers: per layer, input to output, (CSRMatrix (out, in) float32, bias (out,) float32 or
    None); ReLU follows every layer but the last. Adam: torch.optim.Adam's lr, betas, eps,
    weight_decay (amsgrad/maximize unsupported). threads: OpenMP threads (None: the default).
    The trainer holds copies: read the trained parameters back with `values`/`bias`,
    `to_csr_layers` or `write_to`.
    """

    def __init__(self, layers: Sequence[tuple[CSRMatrix, Tensor | None]], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, threads: int | None = None):
        ok, why = fused_trainer_available()
        if not ok:
            raise ConfigError(f"the fused sparse trainer is unavailable: {why}")
        if not layers:
            raise ConfigError("FusedTrainer needs at least one layer")
        specs, self._shapes = [], []
        for i, (csr, bias) in enumerate(layers):
            if not isinstance(csr, CSRMatrix):
                raise TypeError(f"layer {i}: expected a CSRMatrix, got {type(csr).__name__}")
            csr = csr.cpu()
            if csr.dtype != torch.float32:
                raise TypeError(f"layer {i}: the fused trainer trains float32 values, got "
                                f"{csr.dtype}; convert with csr.to(dtype=torch.float32)")
            indices = csr.indices
            if indices.dtype not in (torch.int32, torch.uint16):
                indices = indices.to(torch.int32)
            b = None
            if bias is not None:
                b = _np_f32(torch.as_tensor(bias).detach().cpu(), f"layer {i} bias").copy()
            specs.append((csr.indptr.to(torch.int32).numpy(), indices.numpy(),
                          csr.values.detach().numpy(), b, csr.n_cols, i < len(layers) - 1))
            self._shapes.append((csr.n_rows, csr.n_cols))
        self._patterns = [(c.indptr.clone(), c.indices.clone()) for c, _ in layers]
        self._t = _ext.extension().SparseMLPTrainer(
            specs, lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
            weight_decay=float(weight_decay), threads=int(threads or 0))
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    @classmethod
    def from_sparse_mlp(cls, mlp, **adam) -> "FusedTrainer":
        """From a SparseMLP (its layers' patterns, values and biases; float32, CPU)."""
        return cls([(layer.to_csr(), layer.bias) for layer in mlp.layers.values()], **adam)

    # ------------------------------------------------------------------ training

    def set_data(self, images: Tensor, labels: Tensor) -> None:
        """Keep zero-copy views of a training set: images (N, n_in) float32, labels (N,) int64."""
        self._x = _np_f32(images, "images")
        self._y = _np_i64(labels, "labels")

    def step_rows(self, rows: Tensor | np.ndarray) -> float:
        """One Adam step on rows `rows` (B,) int64 of the data given to set_data; returns the
        batch's mean cross-entropy loss before the update."""
        if self._x is None:
            raise ConfigError("call set_data(images, labels) before step_rows")
        r = rows.numpy() if isinstance(rows, Tensor) else rows
        return self._t.step(self._x, self._y, r)

    def step(self, x: Tensor, labels: Tensor) -> float:
        """One Adam step on the batch x (B, n_in) float32, labels (B,) int64; returns the loss."""
        return self._t.step(_np_f32(x, "x"), _np_i64(labels, "labels"))

    @torch.no_grad()
    def evaluate(self, x: Tensor, labels: Tensor) -> tuple[float, float]:
        """(mean cross-entropy loss, accuracy) on x (N, n_in) float32, labels (N,) int64."""
        n = int(labels.shape[0])
        if n == 0:
            raise ValueError("evaluate needs at least one example")
        loss_sum, correct = self._t.evaluate(_np_f32(x, "x"), _np_i64(labels, "labels"))
        return loss_sum / n, correct / n

    def forward(self, x: Tensor) -> Tensor:
        """logits (N, n_out) float32 of x (N, n_in) float32."""
        return torch.from_numpy(self._t.forward(_np_f32(x, "x")))

    # ------------------------------------------------------------------ state

    @property
    def n_layers(self) -> int:
        return self._t.n_layers

    @property
    def step_count(self) -> int:
        return self._t.step_count

    @property
    def lr(self) -> float:
        return self._t.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._t.lr = float(value)

    @property
    def threads(self) -> int:
        return self._t.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self._t.threads = int(n)

    def get(self, layer: int, name: str) -> Tensor:
        """A copy of one array of layer `layer`: values, bias, exp_avg, exp_avg_sq (nnz,),
        bias_exp_avg, bias_exp_avg_sq (n_out,), or the last step's grad_values / grad_bias."""
        return torch.from_numpy(self._t.get_state(layer, name))

    def set(self, layer: int, name: str, value: Tensor) -> None:
        self._t.set_state(layer, name, _np_f32(torch.as_tensor(value), name))

    def values(self, layer: int) -> Tensor:
        return self.get(layer, "values")

    def bias(self, layer: int) -> Tensor | None:
        has_bias = self._t.layer_shape(layer)[3]
        return self.get(layer, "bias") if has_bias else None

    def state_dict(self) -> dict:
        """Everything needed to resume: parameters, Adam moments and the step count."""
        return {"step": self.step_count,
                "layers": [{n: self.get(l, n) for n in STATE_NAMES} for l in range(self.n_layers)]}

    def load_state_dict(self, state: dict) -> None:
        layers = state["layers"]
        if len(layers) != self.n_layers:
            raise ValueError(f"state has {len(layers)} layers, the trainer {self.n_layers}")
        for l, arrays in enumerate(layers):
            for name in STATE_NAMES:
                self.set(l, name, arrays[name])
        self._t.step_count = int(state["step"])

    def to_csr_layers(self) -> list[tuple[CSRMatrix, Tensor | None]]:
        """The current weights as (CSRMatrix, bias or None) per layer (copies)."""
        return [(CSRMatrix(ip.clone(), ix.clone(), self.values(l), shape), self.bias(l))
                for l, ((ip, ix), shape) in enumerate(zip(self._patterns, self._shapes))]

    @torch.no_grad()
    def write_to(self, mlp) -> None:
        """Copy the trained values and biases into a SparseMLP built from the same patterns."""
        layers = list(mlp.layers.values())
        if len(layers) != self.n_layers:
            raise ValueError(f"the SparseMLP has {len(layers)} layers, the trainer {self.n_layers}")
        for l, layer in enumerate(layers):
            layer.values.copy_(self.values(l))
            if layer.bias is not None:
                layer.bias.copy_(self.bias(l))
