"""Iterative magnitude pruning with rewinding (the lottery), its controls, and resumable rounds.

Round 0 trains the dense network. Round r >= 1 prunes the survivors of round r-1's trained
weights, rewinds the survivors to their values at the rewind iteration, and trains again with a
fresh optimizer. Controls run beside each round on the same masks and data order, so results pair
up: `reinit` (same mask, new init from the same scheme), `random_prune` (random mask with the same
per-layer counts, same rewind weights), `finetune` (same mask, no rewinding: continue from round
r-1's trained weights). Every round is stored before the next begins; re-running resumes.

Late rewinding (lottery.rewind_iteration k > 0): round 0 trains the full T = train.iterations and
keeps the weights of iteration k. Every later round -- ticket and controls alike -- restarts at
iteration k and trains the remaining T - k iterations, taking batches k+1..T of its round's data
order, so each round runs the same T-iteration schedule as the dense one (not k + T).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lth_sparse.errors import ConfigError, RunStoreError
from lth_sparse.lottery.config import ExperimentConfig, derived_seed
from lth_sparse.lottery.data import Dataset, load_data_for
from lth_sparse.lottery.models import build_model
from lth_sparse.lottery.pruning import (
    get_masks,
    get_params,
    load_params,
    prune_round,
    random_masks_like,
    set_masks,
    sparsity_report,
)
from lth_sparse.lottery.store import Run, default_runs_dir
from lth_sparse.lottery.training import TrainerFactory, TrainResult, train


def desired_remaining(cfg: ExperimentConfig, r: int) -> dict[str, float]:
    """Fraction of weights each layer should keep after r pruning rounds."""
    rates = cfg.per_round_rates()
    if cfg.prune.method == "global":
        return {name: (1.0 - rates["fc1"]) ** r for name in rates}
    return {name: (1.0 - rate) ** r for name, rate in rates.items()}


def _metrics(result: TrainResult, report: dict) -> dict:
    m = result.metrics()
    m["pct_remaining"] = 100.0 * report["remaining"]
    m["pct_remaining_per_layer"] = {k: 100.0 * v["remaining"] for k, v in report["layers"].items()}
    return m


def find_ticket(cfg: ExperimentConfig, runs_dir: str | Path | None = None, *,
                data: Dataset | None = None, stop_after_round: int | None = None,
                progress: bool | None = None, log: Callable[[str], None] = print,
                trainer_factory: TrainerFactory | None = None) -> Run:
    """Run (or resume) the lottery for `cfg`; returns the run. Nothing is written for a bad config.

    stop_after_round: stop once that round is stored (to split long runs, or test resuming).
    trainer_factory: builds the trainer of every model a round trains (see lottery.training);
    the lottery itself only has the dense one, so None trains dense. lth_sparse.find_ticket and
    the CLI pass the bridge's factory for cfg.train.backend (lth_sparse.bridge.trainers).
    """
    cfg.validate()
    if trainer_factory is None and cfg.train.backend == "sparse":
        raise ConfigError("train.backend 'sparse' needs the sparse trainer: call "
                          "lth_sparse.find_ticket (or lth_sparse.bridge.trainers.find_ticket), "
                          "which passes it, instead of lth_sparse.lottery.rounds.find_ticket")
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    run = Run(runs_dir / cfg.run_id())
    if run.config_path.exists():
        stored = run.read_config()  # raises for other store formats / versions
        if stored.canonical_json() != cfg.canonical_json():
            raise RunStoreError(f"{run.path} holds a different experiment (config hash collision "
                                "or an edited config.json); move it away and run again")
    if data is None:
        data = load_data_for(cfg)  # before writing anything: missing data leaves no trace
    if not run.config_path.exists():
        run.write_config(cfg)
    done = run.completed_rounds()
    if done:
        log(f"resuming {run.path}: rounds 0..{done[-1]} already complete")
    last = cfg.lottery.rounds if stop_after_round is None else min(stop_after_round, cfg.lottery.rounds)
    for r in range(len(done), last + 1):
        metrics = _run_round(cfg, run, r, data, progress, trainer_factory)
        log(format_round(metrics))
    return run


def _run_round(cfg: ExperimentConfig, run: Run, r: int, data: Dataset, progress,
               trainer_factory: TrainerFactory | None = None) -> dict:
    seed, k = cfg.train.seed, cfg.lottery.rewind_iteration
    data_seed = derived_seed(seed, r, "data")
    desired = desired_remaining(cfg, r)
    tag = f"round {r}"
    model = build_model(cfg)

    if r == 0:
        init = get_params(model)
        result = train(model, data, cfg.train, data_seed=data_seed, capture_at=k or None,
                       desc=f"{tag} dense", progress=progress, snapshot=get_params,
                       trainer_factory=trainer_factory)
        run.write_rewind(init if k == 0 else result.captured_params)
        report = sparsity_report(model, desired)
        state = {"masks": {}, "final": get_params(model), "early_stop": result.early_stop_params}
        metrics = {"round": 0, "ticket": _metrics(result, report), "controls": {},
                   "sparsity": report}
        run.write_round(0, state, metrics)
        return metrics

    prev = run.read_round_state(r - 1)
    rewind = run.read_rewind()
    set_masks(model, prev["masks"])
    load_params(model, prev["final"])
    prune_round(model, cfg.prune.method, cfg.per_round_rates(), prune_bias=cfg.prune.prune_bias,
                seed=derived_seed(seed, r, "prune"))
    masks = get_masks(model)
    report = sparsity_report(model, desired)
    load_params(model, rewind)  # rewinding keeps the masks
    result = train(model, data, cfg.train, data_seed=data_seed, start_iteration=k,
                   desc=f"{tag} ticket",
                   progress=progress, snapshot=get_params,
                   trainer_factory=trainer_factory)
    state = {"masks": masks, "final": get_params(model), "early_stop": result.early_stop_params}

    controls = {}
    for control in cfg.lottery.controls:
        if control == "reinit":
            ctl = build_model(cfg, seed=derived_seed(seed, r, "reinit"))
            set_masks(ctl, masks)
        elif control == "random_prune":
            ctl = build_model(cfg)
            set_masks(ctl, random_masks_like(ctl, masks, derived_seed(seed, r, "random_prune")))
            load_params(ctl, rewind)
        else:  # finetune: same mask, keep training from round r-1's weights (no rewind)
            ctl = build_model(cfg)
            set_masks(ctl, masks)
            load_params(ctl, prev["final"])
        # same schedule and batches as the ticket: the controls pair up with it
        ctl_result = train(ctl, data, cfg.train, data_seed=data_seed, start_iteration=k,
                           desc=f"{tag} {control}",
                           progress=progress, snapshot=get_params,
                           trainer_factory=trainer_factory)
        controls[control] = _metrics(ctl_result, sparsity_report(ctl, desired))

    metrics = {"round": r, "ticket": _metrics(result, report), "controls": controls,
               "sparsity": report}
    run.write_round(r, state, metrics)
    return metrics


def format_round(metrics: dict) -> str:
    """One log line per round: remaining (actual vs desired, per layer) and the paper's metrics."""
    s, t = metrics["sparsity"], metrics["ticket"]
    layers = " ".join(f"{n} {100 * v['remaining']:.1f}%/{100 * v['desired']:.1f}%"
                      for n, v in s["layers"].items())
    line = (f"round {metrics['round']:2d}: {100 * s['remaining']:5.1f}% remaining (desired "
            f"{100 * s['desired']:.1f}%; {layers}) | early-stop it {t['early_stop_iteration']}, "
            f"test acc {100 * t['test_acc_at_early_stop']:.2f}%")
    if t.get("ms_per_iteration") is not None:
        line += f" | {t.get('backend', 'dense')} {t['ms_per_iteration']:.3f} ms/it"
    for name, c in metrics["controls"].items():
        line += f" | {name} {100 * c['test_acc_at_early_stop']:.2f}%"
    return line
