"""A trainer for this mask: the bridge that lets IMP rounds train on the fused sparse trainer.

The lottery wing's `train` loop drives a Stepper (lth_sparse.lottery.training); this module
builds one for a pruned MLP: dense (torch, masked weights) or sparse (lth_sparse.sparse.trainer:
the round's CSR patterns trained by the native fused step). `auto` picks sparse for a round when
the round's density is below this machine's measured break-even for the network, from a short
calibration cached in the run store (runs/calibration.json, keyed by machine and layer shapes).

On CUDA, auto keeps dense: there is no fused GPU trainer yet, so nothing has been measured
faster there (the Triton kernels train through autograd, which is what the fused step replaces).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lth_sparse.errors import ConfigError
from lth_sparse.fileio import atomic_write_json
from lth_sparse.lottery.config import TrainConfig
from lth_sparse.lottery.data import Dataset, Split
from lth_sparse.lottery.models import MLP
from lth_sparse.lottery.training import DenseStepper, Params, TrainerFactory
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.trainer import FusedTrainer, fused_trainer_available

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 2
# Densities timed by the calibration. The sparse step's cost is not linear in density near the
# top (one thread: 0.75 ms at 30%, 2.5 ms at 80%, where dense takes 1.8 ms), so three points
# (1.0, 0.3, 0.05) interpolated put the break-even at 84% and trained 80% rounds sparse, slower.
# Points every 20% place it within one pruning round's step; they cost about a second, once.
CALIBRATION_DENSITIES = (1.0, 0.8, 0.6, 0.4, 0.2, 0.05)
CALIBRATION_STEPS = 30


# ---------------------------------------------------------------------- the sparse stepper

def _layer_mask(linear: nn.Linear) -> torch.Tensor:
    mask = getattr(linear, "weight_mask", None)
    if mask is None:  # an unpruned layer trains every weight, zeros included
        return torch.ones_like(linear.weight, dtype=torch.bool)
    return mask.detach() != 0


def _raw_weight(linear: nn.Linear) -> torch.Tensor:
    return getattr(linear, "weight_orig", linear.weight)


def sparse_unsupported_reason(model: nn.Module, data: Dataset) -> str | None:
    """Why the fused sparse trainer cannot train this model on this data (None: it can)."""
    ok, why = fused_trainer_available()
    if not ok:
        return why
    if not isinstance(model, MLP):
        return f"it trains lth_sparse MLPs (nn.Linear + ReLU), not {type(model).__name__}"
    if data.train.images.device.type != "cpu":
        return f"it runs on the CPU, the data is on {data.train.images.device}"
    for i, layer in enumerate(model.layers):
        if hasattr(layer, "bias_mask"):
            return f"layer fc{i + 1} has a pruned bias (prune_bias); it trains weight masks only"
        if layer.weight.dtype != torch.float32:
            return f"it trains float32 weights, fc{i + 1} is {layer.weight.dtype}"
    return None


class SparseStepper:
    """Trains a pruned MLP's surviving weights with the fused native trainer.

    The model's raw parameters (weight_orig where pruned) are written back at every snapshot and
    at the end, exactly where dense masked training would have changed them: the surviving
    positions and the biases (pruned raw values get zero gradient, so dense Adam leaves them
    untouched too).
    """

    backend = "sparse"

    def __init__(self, model: MLP, data: Dataset, cfg: TrainConfig,
                 snapshot: Callable[[nn.Module], Params], threads: int | None = None):
        why = sparse_unsupported_reason(model, data)
        if why:
            raise ConfigError(f"the sparse trainer cannot train this round: {why}; use "
                              "--train-backend dense (or auto)")
        self.model, self._snapshot = model, snapshot
        layers, self._flat = [], []
        for i, linear in enumerate(model.layers):
            mask = _layer_mask(linear)
            raw = _raw_weight(linear).detach()
            layers.append((CSRMatrix.from_dense(raw, mask, index_dtype=torch.int32,
                                                name=f"fc{i + 1}"),
                           linear.bias.detach() if linear.bias is not None else None))
            self._flat.append(mask.flatten().nonzero().squeeze(1))
        self.trainer = FusedTrainer(layers, lr=cfg.lr, threads=threads)
        self.trainer.set_data(data.train.images, data.train.labels)

    def step(self, idx: torch.Tensor) -> None:
        self.trainer.step_rows(idx)

    def evaluate(self, split: Split) -> tuple[float, float]:
        return self.trainer.evaluate(split.images, split.labels)

    @torch.no_grad()
    def sync_to_model(self) -> None:
        for l, linear in enumerate(self.model.layers):
            raw = _raw_weight(linear)
            raw.view(-1)[self._flat[l]] = self.trainer.values(l)
            if linear.bias is not None:
                linear.bias.copy_(self.trainer.bias(l))
            if hasattr(linear, "weight_mask"):  # keep the cached masked tensor in step
                linear.weight = raw * linear.weight_mask

    def snapshot(self) -> Params:
        self.sync_to_model()
        return self._snapshot(self.model)

    def finish(self) -> None:
        self.sync_to_model()


class SparseMLPStepper:
    """Trains a SparseMLP (sparse wing) with the fused native trainer; the trained values and
    biases are written back into the SparseMLP at every snapshot and at the end."""

    backend = "sparse"

    def __init__(self, model, data: Dataset, cfg: TrainConfig, snapshot, threads: int | None = None):
        if data.train.images.device.type != "cpu":
            raise ConfigError("the fused sparse trainer runs on the CPU; use --train-backend dense "
                              f"for data on {data.train.images.device}")
        self.model, self._snapshot = model, snapshot
        self.trainer = FusedTrainer.from_sparse_mlp(model, lr=cfg.lr, threads=threads)
        self.trainer.set_data(data.train.images, data.train.labels)

    def step(self, idx: torch.Tensor) -> None:
        self.trainer.step_rows(idx)

    def evaluate(self, split: Split) -> tuple[float, float]:
        return self.trainer.evaluate(split.images, split.labels)

    def snapshot(self) -> Params:
        self.trainer.write_to(self.model)
        return self._snapshot(self.model)

    def finish(self) -> None:
        self.trainer.write_to(self.model)


# ---------------------------------------------------------------------- calibration

def machine_key(threads: int) -> str:
    """The CPU model and thread count: what the break-even depends on besides the network."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}|threads={threads}"


def calibration_key(shapes: list[tuple[int, int]], batch_size: int, threads: int) -> str:
    layers = ",".join(f"{o}x{i}" for o, i in shapes)
    return f"{machine_key(threads)}|torch={torch.__version__}|layers={layers}|batch={batch_size}"


def _median_step_ms(step: Callable[[torch.Tensor], None], n_rows: int, batch: int,
                    steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, n_rows, (batch,), generator=g) for _ in range(steps + 5)]
    for i in idx[:5]:  # warm-up: allocations, caches, the OpenMP team
        step(i)
    times = []
    for i in idx[5:]:
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def measure_break_even(shapes: list[tuple[int, int]], batch_size: int, *,
                       densities=CALIBRATION_DENSITIES, steps: int = CALIBRATION_STEPS) -> dict:
    """Time `steps` training steps dense masked vs sparse at each density; returns the points
    and the break-even density (sparse is faster below it; >= 1.0: faster everywhere measured,
    0.0: nowhere)."""
    from torch.nn.utils import prune

    n_in = shapes[0][1]
    hidden = tuple(o for o, _ in shapes[:-1])
    n_rows = max(4 * batch_size, 256)
    g = torch.Generator().manual_seed(0)
    data = Dataset(Split(torch.randn(n_rows, n_in, generator=g),
                         torch.randint(0, shapes[-1][0], (n_rows,), generator=g)),
                   Split(torch.zeros(1, n_in), torch.zeros(1, dtype=torch.int64)),
                   Split(torch.zeros(1, n_in), torch.zeros(1, dtype=torch.int64)), "calibration")
    cfg = TrainConfig(batch_size=batch_size)
    points = []
    for d in densities:
        model = MLP(n_in, hidden, shapes[-1][0], seed=0)
        for layer in model.layers:
            keep = torch.rand(layer.weight.shape, generator=g) < d
            prune.custom_from_mask(layer, "weight", keep.to(torch.float32))
        dense = DenseStepper(model, data, cfg, snapshot=lambda m: {})
        dense_ms = _median_step_ms(dense.step, n_rows, batch_size, steps)
        sparse = SparseStepper(model, data, cfg, snapshot=lambda m: {})
        sparse_ms = _median_step_ms(sparse.step, n_rows, batch_size, steps)
        points.append({"density": d, "dense_ms": dense_ms, "sparse_ms": sparse_ms})
    return {"points": points, "break_even_density": break_even(points)}


def break_even(points: list[dict]) -> float:
    """The density below which sparse is faster, linearly interpolated between measured points."""
    pts = sorted(points, key=lambda p: p["density"])
    adv = [(p["density"], p["dense_ms"] - p["sparse_ms"]) for p in pts]  # > 0: sparse faster
    if all(a > 0 for _, a in adv):
        return max(1.0, adv[-1][0])
    if adv[0][1] <= 0:
        return 0.0
    for (d0, a0), (d1, a1) in zip(adv, adv[1:]):
        if a0 > 0 >= a1:
            return d0 + (d1 - d0) * a0 / (a0 - a1)
    return 0.0


def load_calibrations(runs_dir: Path) -> dict:
    """The cached calibrations of a run store ({} when missing or unreadable)."""
    import json

    path = Path(runs_dir) / CALIBRATION_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("version") != CALIBRATION_VERSION:
        return {}
    entries = raw.get("entries")
    return entries if isinstance(entries, dict) else {}


def calibration_for(shapes: list[tuple[int, int]], batch_size: int, threads: int,
                    runs_dir: Path | None, log: Callable[[str], None] = print) -> dict:
    """This machine's break-even for the network: cached in runs_dir, measured when missing."""
    key = calibration_key(shapes, batch_size, threads)
    entries = load_calibrations(runs_dir) if runs_dir is not None else {}
    entry = entries.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("break_even_density"), (int, float)):
        return entry
    log(f"calibrating the training backends for layers {shapes} at batch {batch_size} "
        f"({len(CALIBRATION_DENSITIES)} densities x {CALIBRATION_STEPS} steps each)")
    entry = measure_break_even(shapes, batch_size)
    entry["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if runs_dir is not None:
        entries = load_calibrations(runs_dir)  # re-read: another process may have added one
        entries[key] = entry
        atomic_write_json(Path(runs_dir) / CALIBRATION_FILE,
                          {"version": CALIBRATION_VERSION, "entries": entries})
    log(f"break-even density {entry['break_even_density']:.3f}: sparse training below it")
    return entry


# ---------------------------------------------------------------------- choosing per round

def model_density(model: MLP) -> float:
    kept = sum(int(_layer_mask(l).sum()) for l in model.layers)
    total = sum(l.weight.numel() for l in model.layers)
    return kept / total


def _threads() -> int:
    from lth_sparse import _ext
    ext = _ext.extension()
    return int(ext.build_info()["max_threads"]) if ext is not None else 1


def choose_backend(model: MLP, data: Dataset, cfg: TrainConfig, backend: str,
                   runs_dir: Path | None, log: Callable[[str], None] = print) -> str:
    """"dense" or "sparse" for training `model` (its masks) under `backend`."""
    if backend == "dense":
        return "dense"
    why = sparse_unsupported_reason(model, data)
    if backend == "sparse":
        if why:
            raise ConfigError(f"--train-backend sparse cannot train this round: {why}; use "
                              "--train-backend dense or auto")
        return "sparse"
    if backend != "auto":
        raise ConfigError(f"train backend must be auto, dense or sparse, got {backend!r}")
    if why:  # CUDA data among others: no fused GPU trainer has been measured faster
        return "dense"
    shapes = [tuple(l.weight.shape) for l in model.layers]
    cal = calibration_for(shapes, cfg.batch_size, _threads(), runs_dir, log)
    return "sparse" if model_density(model) < cal["break_even_density"] else "dense"


def trainer_factory(backend: str, runs_dir: Path | None = None,
                    log: Callable[[str], None] = print) -> TrainerFactory:
    """The factory `lottery.training.train` calls for each model it trains."""

    def factory(model, data: Dataset, cfg: TrainConfig, snapshot):
        if choose_backend(model, data, cfg, backend, runs_dir, log) == "sparse":
            return SparseStepper(model, data, cfg, snapshot)
        return DenseStepper(model, data, cfg, snapshot)

    return factory


def find_ticket(cfg, runs_dir: str | os.PathLike | None = None, **kw):
    """lottery.rounds.find_ticket with each round trained by cfg.train.backend's trainer."""
    from lth_sparse.lottery.rounds import find_ticket as _find_ticket
    from lth_sparse.lottery.store import default_runs_dir

    store = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    log = kw.get("log", print)
    return _find_ticket(cfg, runs_dir, trainer_factory=trainer_factory(cfg.train.backend, store, log),
                        **kw)
