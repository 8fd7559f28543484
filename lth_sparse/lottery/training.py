"""Iteration-based training with periodic evaluation and the paper's metrics.

The loop indexes in-memory tensors (lth_sparse.lottery.data) and evaluates validation and test every
`eval_every` iterations. Early stopping follows the LTH paper: the early-stop iteration is the
evaluation with minimum validation loss, and the reported test accuracy is the one at it.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclasses_fields
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lth_sparse.lottery.config import TrainConfig
from lth_sparse.lottery.data import BatchSampler, Dataset, Split

# {"fc1.weight": tensor, "fc1.bias": tensor, ...}: what early stopping and rewinding keep.
Params = dict[str, torch.Tensor]

EVAL_CHUNK = 10_000
OptimizerFactory = Callable[[list], "tuple[torch.optim.Optimizer, object | None]"]


def progress_bar(total: int, desc: str, progress: bool | None = None, file=None) -> tqdm:
    """A tqdm bar over `total` iterations, written to `file` (default: stderr).

    progress: True always draws, False never; None (default) draws only when `file` is a
    terminal (or a notebook) and TQDM_DISABLE is unset. Redirected to a log, tqdm's carriage-
    return redraws are spam; there the one summary line per round (rounds.find_ticket's log)
    is the progress report.
    """
    if progress is None:
        stream = file if file is not None else sys.stderr
        is_tty = getattr(stream, "isatty", None)
        interactive = "notebook" in tqdm.__module__ or (callable(is_tty) and bool(is_tty()))
        progress = interactive and os.environ.get("TQDM_DISABLE", "0") in ("", "0")
    return tqdm(total=total, desc=desc, disable=not progress, unit="it", file=file,
                dynamic_ncols=True, leave=False)


@dataclass
class EvalPoint:
    iteration: int
    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float


@dataclass
class TrainResult:
    evals: list[EvalPoint]
    early_stop_iteration: int
    test_acc_at_early_stop: float
    val_loss_at_early_stop: float
    max_val_acc: float
    final_train_acc: float
    final_test_acc: float
    wall_time_s: float  # the training loop, periodic evaluations included
    iters_per_s: float  # training steps per second, evaluations excluded
    backend: str = "dense"  # which trainer ran the steps ("dense" or "sparse")
    # raw parameters at the early-stop evaluation and, if asked, at the rewind iteration
    early_stop_params: Params = field(repr=False, default_factory=dict)
    captured_params: Params | None = field(repr=False, default=None)
    # first iteration of this training: 0, or the rewind iteration k of a late-rewound round
    start_iteration: int = 0

    def metrics(self) -> dict:
        """JSON-able summary (no tensors). `evals` is the whole evaluation curve, one row per
        evaluation in the order of `eval_columns` (older metrics.json files lack that key; their
        rows have the same order)."""
        d = asdict(self)
        d.pop("early_stop_params")
        d.pop("captured_params")
        d["evals"] = [list(asdict(e).values()) for e in self.evals]
        d["eval_columns"] = EVAL_COLUMNS
        d["ms_per_iteration"] = 1000.0 / self.iters_per_s if self.iters_per_s > 0 else None
        return d


EVAL_COLUMNS = [f.name for f in dataclasses_fields(EvalPoint)]


class Stepper(Protocol):
    """One way to train a model for `train`: it owns the optimizer (and may own a copy of the
    parameters, e.g. the fused sparse trainer); `train` owns the minibatch order, the
    evaluation schedule and early stopping, so every backend sees the same loop."""

    backend: str

    def step(self, idx: torch.Tensor) -> None:
        """One optimizer step on the training rows idx (B,) int64."""

    def evaluate(self, split: Split) -> tuple[float, float]:
        """(mean cross-entropy loss, accuracy) of the current parameters on a split."""

    def snapshot(self) -> Params:
        """A copy of the current parameters, as `snapshot(model)` gives them."""

    def finish(self) -> None:
        """Leave the trained parameters in the model."""


# (model, data, train config, snapshot) -> the Stepper that trains it
TrainerFactory = Callable[[torch.nn.Module, Dataset, TrainConfig, Callable], Stepper]


class DenseStepper:
    """The model itself (dense masked with torch.nn.utils.prune hooks) and torch.optim.Adam."""

    backend = "dense"

    def __init__(self, model, data: Dataset, cfg: TrainConfig,
                 snapshot: Callable[[torch.nn.Module], Params],
                 optimizer_factory: OptimizerFactory | None = None):
        self.model, self._snapshot = model, snapshot
        self.images, self.labels = data.train.images, data.train.labels
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = (
            optimizer_factory(trainable) if optimizer_factory is not None
            else (make_optimizer(trainable, cfg.lr), None))
        model.train()

    def step(self, idx: torch.Tensor) -> None:
        out = self.model(self.images.index_select(0, idx))
        loss = F.cross_entropy(out, self.labels.index_select(0, idx))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def evaluate(self, split: Split) -> tuple[float, float]:
        return evaluate(self.model, split)

    def snapshot(self) -> Params:
        return self._snapshot(self.model)

    def finish(self) -> None:
        pass


def dense_stepper(model, data: Dataset, cfg: TrainConfig, snapshot) -> DenseStepper:
    return DenseStepper(model, data, cfg, snapshot)


@torch.no_grad()
def evaluate(model, split: Split) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of `model` on a split, in chunks."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(split), EVAL_CHUNK):
        x = split.images[start:start + EVAL_CHUNK]
        y = split.labels[start:start + EVAL_CHUNK]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train()
    return loss_sum / len(split), correct / len(split)


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """Adam; the fused CPU/GPU implementation where this torch has it (same maths, fewer passes)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def train(model, data: Dataset, cfg: TrainConfig, *, data_seed: int, capture_at: int | None = None,
          start_iteration: int = 0, desc: str = "train", progress: bool | None = None,
          snapshot: Callable[[torch.nn.Module], Params],
          trainer_factory: TrainerFactory | None = None,
          optimizer_factory: OptimizerFactory | None = None) -> TrainResult:
    """Train `model` in place up to iteration cfg.iterations (T) with a fresh optimizer.

    data_seed fixes the minibatch order. start_iteration k: the model holds the weights of
    iteration k (late rewinding), so it trains the T - k remaining iterations k+1..T of the same
    schedule, taking batches k+1..T of the data order -- the total schedule stays T iterations,
    as in Frankle et al. (2019/2020), not k + T. capture_at: also return the raw parameters at that
    iteration (0 = before the first step), for late rewinding. Evaluates at start_iteration, at
    every multiple of cfg.eval_every and at T; iterations in the results are absolute (k..T).
    `snapshot(model)` copies the parameters kept for early stopping and rewinding (for a pruned
    MLP: lth_sparse.lottery.pruning.get_params).
    trainer_factory(model, data, cfg, snapshot) builds the Stepper that runs the steps (default:
    dense, torch Adam on the model); the result records its `backend`.
    optimizer_factory(trainable parameters) -> (optimizer, per-iteration LR scheduler or None)
    replaces the dense stepper's Adam(cfg.lr) (supermask scores train with their own optimizer).
    progress: the bar policy of progress_bar (None: only on a terminal).
    """
    if not 0 <= start_iteration < cfg.iterations:
        raise ValueError(f"start_iteration must be in [0, {cfg.iterations}), got {start_iteration}")
    device = data.train.images.device
    sampler = BatchSampler(len(data.train), cfg.batch_size, data_seed, device=device)
    sampler.seek(start_iteration)
    if optimizer_factory is not None:
        if trainer_factory is not None:
            raise ValueError("train: give trainer_factory or optimizer_factory, not both")
        stepper = DenseStepper(model, data, cfg, snapshot, optimizer_factory)
    else:
        stepper = (trainer_factory or dense_stepper)(model, data, cfg, snapshot)

    evals: list[EvalPoint] = []
    best: tuple[float, int, Params] | None = None
    captured = stepper.snapshot() if capture_at == start_iteration else None

    eval_time = 0.0

    def run_eval(it: int) -> None:
        nonlocal best, eval_time
        t0 = time.perf_counter()
        vl, va = stepper.evaluate(data.val)
        tl, ta = stepper.evaluate(data.test)
        evals.append(EvalPoint(it, vl, va, tl, ta))
        if best is None or vl < best[0]:
            best = (vl, it, stepper.snapshot())
        bar.set_postfix(val_acc=f"{va:.4f}", test_acc=f"{ta:.4f}", refresh=False)
        eval_time += time.perf_counter() - t0

    bar = progress_bar(cfg.iterations - start_iteration, f"{desc} [{stepper.backend}]", progress)
    start = time.perf_counter()
    run_eval(start_iteration)
    for it in range(start_iteration + 1, cfg.iterations + 1):
        stepper.step(sampler.next())
        if capture_at == it:
            captured = stepper.snapshot()
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            run_eval(it)
        bar.update(1)
    wall = time.perf_counter() - start
    bar.close()

    _, train_acc = stepper.evaluate(data.train)
    stepper.finish()
    es = min(evals, key=lambda e: e.val_loss)
    return TrainResult(
        evals=evals,
        early_stop_iteration=es.iteration,
        test_acc_at_early_stop=es.test_acc,
        val_loss_at_early_stop=es.val_loss,
        max_val_acc=max(e.val_acc for e in evals),
        final_train_acc=train_acc,
        final_test_acc=evals[-1].test_acc,
        wall_time_s=wall,
        iters_per_s=(cfg.iterations - start_iteration) / max(wall - eval_time, 1e-9),
        backend=stepper.backend,
        early_stop_params=best[2],
        captured_params=captured,
        start_iteration=start_iteration,
    )
