"""Supermasks: edge-popup (Ramanujan et al. 2020) on frozen random weights.

"What's Hidden in a Randomly Weighted Neural Network?" keeps the weights at their random
initialisation and learns only which ones to keep: every weight gets a score, the forward pass
uses the weights whose |score| is in the top k of their layer, and the backward pass sends the
gradient of the masked weight straight through the (non-differentiable) top-k to every score,
kept or not, so a dropped weight can "pop up" again later.

The result is stored like one lottery round, so `show`, `export`, `train-ticket` and sweeps treat
it like any ticket:

    <runs>/<run_id>/config.json        kind "supermask"; the config has a [supermask] section, so
                                       it never hashes like a find-ticket config
    <runs>/<run_id>/rewind.pt          the frozen weights (what train-ticket rewinds to)
    <runs>/<run_id>/round_000/state.pt masks        top-k of the scores at the early-stop
                                                    evaluation (min validation loss)
                                       early_stop   the frozen weights
                                       final        the frozen weights (identical tensors)
                                       final_masks  top-k of the scores after the last iteration
                                       scores       {"early_stop": ..., "final": ...} raw scores
    <runs>/<run_id>/round_000/metrics.json  same keys as an IMP round

Weights never change, so "early-stop" and "final" differ only in the mask: `export --weights
early-stop` (the default) pairs the frozen weights with `masks`, the network whose test accuracy
the round reports; `export --weights final` pairs them with `final_masks` (lth_sparse.bridge.export
reads it when present). train-ticket retrains the early-stop mask from the frozen weights.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lth_sparse.errors import ConfigError, RunStoreError
from lth_sparse.lottery.config import (
    ExperimentConfig,
    LotteryConfig,
    ModelConfig,
    PruneConfig,
    derived_seed,
    layer_names,
)
from lth_sparse.lottery.data import Dataset, load_data_for
from lth_sparse.lottery.models import build_model
from lth_sparse.lottery.pruning import get_params, set_masks, sparsity_report
from lth_sparse.lottery.rounds import format_round
from lth_sparse.lottery.store import Run, default_runs_dir
from lth_sparse.lottery.training import TrainResult, train

Params = dict[str, torch.Tensor]

SCORE_OPTIMIZERS = ("adam", "sgd")
SCORE_SCHEDULES = ("cosine", "constant")
# The score learning rate when none is given: the paper's SGD rate, and for Adam the rate that
# found the best LeNet-300-100 masks in a short sweep (docs/supermasks.md).
DEFAULT_SCORE_LR = {"sgd": 0.1, "adam": 0.003}


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class SupermaskSection:
    keep: float = _help("fraction k of each layer's weights kept: those with the top-k |score| "
                        "(0 < k <= 1)", default=0.5)
    layer_keep: dict[str, float] = _help("per-layer overrides of keep, e.g. fc3=0.5",
                                         default_factory=dict)
    score_optimizer: str = _help("optimizer of the scores: adam or sgd (paper: SGD, momentum "
                                 "0.9, cosine)", default="adam")
    score_lr: float | None = _help("learning rate of the scores (default: 0.003 for adam, 0.1 "
                                   "for sgd)", default=None)
    score_momentum: float = _help("SGD momentum of the scores", default=0.9)
    score_weight_decay: float = _help("L2 weight decay on the scores (paper's MNIST FC: 1e-4)",
                                      default=1e-4)
    score_schedule: str = _help("learning-rate schedule of the scores over the iterations: "
                                "cosine (to 0) or constant", default="cosine")
    scale_fan: bool = _help("scale the frozen weights' std by 1/sqrt(k) (the paper's scaled "
                            "init: fan_in * k inputs survive)", default=False)


@dataclass
class SupermaskConfig(ExperimentConfig):
    """A supermask experiment: data/model/train as for find-ticket, plus [supermask].

    model.init picks the frozen weights (default signed_constant; kaiming_normal is the paper's
    other choice). train.iterations/batch_size/eval_every/seed drive the score training;
    train.lr stays the Adam rate used when train-ticket retrains the found mask. The [prune] and
    [lottery] sections do not apply and must stay at their defaults.
    """
    model: ModelConfig = field(default_factory=lambda: ModelConfig(init="signed_constant"))
    lottery: LotteryConfig = field(default_factory=lambda: LotteryConfig(rounds=0, controls=()))
    supermask: SupermaskSection = field(default_factory=SupermaskSection)

    SECTIONS = (*ExperimentConfig.SECTIONS, "supermask")
    KIND = "supermask"

    def validate(self) -> SupermaskConfig:
        super().validate()
        if self.prune != PruneConfig():
            raise ConfigError("[prune] options do not apply to a supermask run (it does not "
                              "prune by magnitude); set the kept fraction with supermask.keep / "
                              "--keep and --layer-keep")
        if self.lottery != LotteryConfig(rounds=0, controls=()):
            raise ConfigError("[lottery] options do not apply to a supermask run (one score "
                              "training, no rounds or controls); remove them")
        s = self.supermask
        _keep("supermask.keep", s.keep)
        names = layer_names(len(self.model.hidden) + 1)
        for name, k in s.layer_keep.items():
            if name not in names:
                raise ConfigError(f"supermask.layer_keep names unknown layer {name!r}; layers "
                                  f"are {', '.join(names)}")
            _keep(f"supermask.layer_keep[{name}]", k)
        if s.score_optimizer not in SCORE_OPTIMIZERS:
            raise ConfigError(f"supermask.score_optimizer must be one of "
                              f"{', '.join(SCORE_OPTIMIZERS)}; got {s.score_optimizer!r}")
        if s.score_schedule not in SCORE_SCHEDULES:
            raise ConfigError(f"supermask.score_schedule must be one of "
                              f"{', '.join(SCORE_SCHEDULES)}; got {s.score_schedule!r}")
        if s.score_lr is None:  # resolved here so that "default" and its value hash alike
            s.score_lr = DEFAULT_SCORE_LR[s.score_optimizer]
        if not (math.isfinite(s.score_lr) and s.score_lr > 0):
            raise ConfigError(f"supermask.score_lr must be a positive number, got {s.score_lr!r}")
        if not 0.0 <= s.score_momentum < 1.0:
            raise ConfigError(f"supermask.score_momentum must be in [0, 1), got "
                              f"{s.score_momentum!r}")
        if not (math.isfinite(s.score_weight_decay) and s.score_weight_decay >= 0):
            raise ConfigError(f"supermask.score_weight_decay must be >= 0, got "
                              f"{s.score_weight_decay!r}")
        return self

    def keep_per_layer(self) -> dict[str, float]:
        """Fraction kept in each weight layer ("fc1".."fcN")."""
        names = layer_names(len(self.model.hidden) + 1)
        return {n: self.supermask.layer_keep.get(n, self.supermask.keep) for n in names}

    def describe(self) -> str:
        s = self.supermask
        keep = ", ".join(f"{n} {100 * k:g}%" for n, k in self.keep_per_layer().items())
        return (f"supermask (edge-popup) on frozen {self.model.init} weights, keep {keep}; "
                f"scores: {s.score_optimizer} lr {s.score_lr:g} {s.score_schedule}, "
                f"{self.train.iterations} iterations, seed {self.train.seed}")


def _keep(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
        raise ConfigError(f"{name} must be a fraction in (0, 1], got {value!r}")


# ---------------------------------------------------------------------------- top-k masks

def kept_count(numel: int, keep: float) -> int:
    """Weights a layer of `numel` keeps at fraction `keep`: rounded as torch's pruning rounds the
    pruned count (numel - round((1 - keep) * numel)), and at least one."""
    return max(1, numel - round((1.0 - keep) * numel))


def topk_mask(magnitudes: torch.Tensor, kept: int) -> torch.Tensor:
    """Boolean mask (same shape) of exactly `kept` entries with the largest values.

    Ties at the threshold go to the lowest flat indices, so the count is exact and the mask is
    a deterministic function of the values. Uses numpy's introselect (O(n)), which on CPU is
    about 10x faster than torch.kthvalue/topk for a 784x300 layer.
    """
    flat = magnitudes.detach().reshape(-1)
    n = flat.numel()
    if not 0 < kept <= n:
        raise ValueError(f"kept must be in [1, {n}], got {kept}")
    if kept == n:
        return torch.ones_like(magnitudes, dtype=torch.bool)
    values = flat.to("cpu", torch.float32).numpy()
    threshold = float(np.partition(values, n - kept)[n - kept])  # the kept-th largest value
    mask = flat > threshold
    missing = kept - int(mask.sum())
    if missing > 0:
        ties = torch.nonzero(flat == threshold).reshape(-1)[:missing]
        mask[ties] = True
    return mask.view_as(magnitudes)


class _StraightThrough(torch.autograd.Function):
    """Forward: the given mask. Backward: the incoming gradient, unchanged, to the scores."""

    @staticmethod
    def forward(ctx, magnitudes, mask):
        return mask.to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class SupermaskLinear(nn.Module):
    """y = x @ (weight * topk_mask(|scores|, kept)).T + bias, weight and bias frozen buffers.

    weight (out, in) float32 and bias (out,) never change (buffers: no optimizer sees them);
    scores (out, in) is the only parameter. The mask is cached per score version, so evaluation
    chunks reuse the one computed after the last optimizer step.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, scores: torch.Tensor, kept: int):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.scores = nn.Parameter(scores.detach().clone())
        self.kept = int(kept)
        self._cache: tuple[int, torch.Tensor] | None = None

    def mask(self) -> torch.Tensor:
        """Boolean (out, in) mask of the current top-k |scores|."""
        version = self.scores._version
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, topk_mask(self.scores.detach().abs(), self.kept))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = _StraightThrough.apply(self.scores.abs(), self.mask())
        return F.linear(x, self.weight * mask, self.bias)


class SupermaskMLP(nn.Module):
    """The MLP's forward (ReLU between layers, logits out) over SupermaskLinear layers.

    input (B, 784) or (B, 1, 28, 28) float32 -> logits (B, 10).
    """

    def __init__(self, params: Params, kept: dict[str, int], score_seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(score_seed)
        layers = []
        for name, k in kept.items():
            w = params[f"{name}.weight"]
            # the paper's score init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +)
            bound = 1.0 / math.sqrt(w.shape[1])
            scores = torch.empty(w.shape, dtype=torch.float32).uniform_(-bound, bound, generator=g)
            layers.append(SupermaskLinear(w, params[f"{name}.bias"], scores, k))
        self.layers = nn.ModuleList(layers)
        self.names = list(kept)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    def scores(self) -> Params:
        """{"fc1.weight": scores clone, ...}: keyed like the weights they score."""
        return {f"{n}.weight": l.scores.detach().clone() for n, l in zip(self.names, self.layers)}

    def masks(self) -> dict[str, torch.Tensor]:
        """{"fc1.weight": bool mask, ...} of the current scores (the layout get_masks uses)."""
        return {f"{n}.weight": l.mask().clone() for n, l in zip(self.names, self.layers)}

    def frozen_params(self) -> Params:
        out = {}
        for n, l in zip(self.names, self.layers):
            out[f"{n}.weight"] = l.weight.detach().clone()
            out[f"{n}.bias"] = l.bias.detach().clone()
        return out


def masks_from_scores(scores: Params, kept: dict[str, int]) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": topk_mask(scores[f"{n}.weight"].abs(), k) for n, k in kept.items()}


# ---------------------------------------------------------------------------- the run

def frozen_weights(cfg: SupermaskConfig) -> Params:
    """The experiment's random weights: model.init with the training seed (biases as the scheme
    sets them: zero except pytorch_default), times 1/sqrt(k) per layer with scale_fan."""
    params = get_params(build_model(cfg))
    if cfg.supermask.scale_fan:
        for name, k in cfg.keep_per_layer().items():
            params[f"{name}.weight"] = params[f"{name}.weight"] / math.sqrt(k)
    return params


def score_optimizer(cfg: SupermaskConfig) -> Callable:
    s, iterations = cfg.supermask, cfg.train.iterations

    def factory(params: list):
        if s.score_optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=s.score_lr, momentum=s.score_momentum,
                                  weight_decay=s.score_weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=s.score_lr, weight_decay=s.score_weight_decay)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations)
                 if s.score_schedule == "cosine" else None)
        return opt, sched

    return factory


def _round_metrics(result: TrainResult, report: dict) -> dict:
    # the keys of an IMP round's "ticket" entry (lth_sparse.lottery.rounds)
    m = result.metrics()
    m["pct_remaining"] = 100.0 * report["remaining"]
    m["pct_remaining_per_layer"] = {k: 100.0 * v["remaining"] for k, v in report["layers"].items()}
    return m


def find_supermask(cfg: SupermaskConfig, runs_dir: str | Path | None = None, *,
                   data: Dataset | None = None, progress: bool | None = None,
                   log: Callable[[str], None] = print) -> Run:
    """Train (or resume) edge-popup scores for `cfg`; returns the run (one round, round 0).

    A completed run is returned as it is. An interrupted one restarts its score training from
    the stored frozen weights (rewind.pt). Nothing is written for a bad config or missing data.
    """
    if not isinstance(cfg, SupermaskConfig):
        raise ConfigError(f"find_supermask needs a SupermaskConfig, got {type(cfg).__name__}; "
                          "use find_ticket for iterative magnitude pruning")
    cfg.validate()
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    run = Run(runs_dir / cfg.run_id())
    if run.config_path.exists():
        stored = run.read_config()
        if stored.canonical_json() != cfg.canonical_json():
            raise RunStoreError(f"{run.path} holds a different experiment (config hash collision "
                                "or an edited config.json); move it away and run again")
        if run.completed_rounds():
            log(f"{run.path} is already complete")
            return run
    if data is None:
        data = load_data_for(cfg)
    if not run.config_path.exists():
        run.write_config(cfg)
    if run.rewind_path.exists():
        params = run.read_rewind()  # the store is the truth on resume
    else:
        params = frozen_weights(cfg)
        run.write_rewind(params)

    seed, names = cfg.train.seed, layer_names(len(cfg.model.hidden) + 1)
    keep = cfg.keep_per_layer()
    kept = {n: kept_count(params[f"{n}.weight"].numel(), keep[n]) for n in names}
    model = SupermaskMLP(params, kept, score_seed=derived_seed(seed, 0, "scores"))
    result = train(model, data, cfg.train, data_seed=derived_seed(seed, 0, "data"),
                   desc="supermask", progress=progress, snapshot=lambda m: m.scores(),
                   optimizer_factory=score_optimizer(cfg))
    frozen = model.frozen_params()
    if any(not torch.equal(frozen[k], params[k]) for k in params):
        raise RuntimeError("a frozen supermask weight changed during score training (bug)")

    es_scores = result.early_stop_params
    masks = masks_from_scores(es_scores, kept)
    dense = build_model(cfg)
    set_masks(dense, masks)
    report = sparsity_report(dense, keep)
    state = {"masks": masks, "early_stop": params, "final": params,
             "final_masks": model.masks(),
             "scores": {"early_stop": es_scores, "final": model.scores()}}
    metrics = {"round": 0, "ticket": _round_metrics(result, report), "controls": {},
               "sparsity": report}
    run.write_round(0, state, metrics)
    log(format_round(metrics))
    return run
