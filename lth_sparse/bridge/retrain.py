"""Retrain a ticket with the sparse kernels, side by side with dense masked training.

Both start from the ticket's rewind point with the round's mask and see the same minibatches as
the round's own training in find-ticket, so their accuracies pair up; the sparse model trains
only the surviving weights (SparseLinear values), the dense one trains a masked nn.Linear.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch

from lth_sparse.bridge.export import pick_round
from lth_sparse.errors import ConfigError
from lth_sparse.lottery.config import derived_seed
from lth_sparse.lottery.data import Dataset, load_data_for
from lth_sparse.lottery.models import build_model
from lth_sparse.lottery.pruning import get_params, load_params, set_masks
from lth_sparse.lottery.report import markdown_table
from lth_sparse.lottery.store import open_run
from lth_sparse.lottery.training import TrainResult, train


def _state_snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_ticket(ref, *, round_: int | None = None, backend: str = "auto",
                 train_backend: str = "auto", iterations: int | None = None, compare_dense: bool = True, runs_dir=None,
                 data: Dataset | None = None, progress: bool | None = None,
                 log: Callable[[str], None] = print) -> dict[str, TrainResult]:
    """Train round `round_`'s ticket with SparseMLP(backend) (and dense masked, unless disabled).

    train_backend: "sparse" trains the SparseMLP with the fused native trainer (CPU), "dense"
    through autograd with the `backend` kernels, "auto" fused where it can run.
    Returns {"sparse": TrainResult, "dense": TrainResult?}; logs a comparison table.
    """
    from lth_sparse.bridge.trainers import SparseMLPStepper
    from lth_sparse.sparse.trainer import fused_trainer_available

    from lth_sparse.bridge.convert import sparse_mlp_from_mlp

    run = open_run(ref, runs_dir)
    cfg = run.read_config()
    if cfg.prune.prune_bias:
        raise ConfigError("train-ticket trains weight masks only, but this run also pruned biases "
                          "(prune_bias=true); use a run without bias pruning")
    r = pick_round(run, round_)
    train_cfg = dataclasses.replace(cfg.train)
    if iterations is not None:
        if iterations <= 0:
            raise ConfigError(f"--iterations must be positive, got {iterations}")
        train_cfg.iterations = iterations
    masks = run.read_round_state(r)["masks"]
    rewind = run.read_rewind()
    data = data if data is not None else load_data_for(cfg)
    data_seed = derived_seed(cfg.train.seed, r, "data")

    dense = build_model(cfg)
    set_masks(dense, masks)
    load_params(dense, rewind)
    sparse = sparse_mlp_from_mlp(copy.deepcopy(dense), backend=backend)

    if train_backend not in ("auto", "dense", "sparse"):
        raise ConfigError(f"--train-backend must be auto, dense or sparse, got {train_backend!r}")
    on_cpu = data.train.images.device.type == "cpu"
    fused_ok, why = fused_trainer_available()
    if train_backend == "sparse" and not (fused_ok and on_cpu):
        raise ConfigError("--train-backend sparse: the fused trainer "
                          + (f"is unavailable ({why})" if not fused_ok else "runs on the CPU only")
                          + "; use --train-backend dense")
    fused = train_backend == "sparse" or (train_backend == "auto" and fused_ok and on_cpu)
    factory = SparseMLPStepper if fused else None
    label = "fused" if fused else backend
    results = {"sparse": train(sparse, data, train_cfg, data_seed=data_seed,
                               desc=f"round {r} sparse ({label})", progress=progress,
                               snapshot=_state_snapshot, trainer_factory=factory)}
    if compare_dense:
        results["dense"] = train(dense, data, train_cfg, data_seed=data_seed,
                                 desc=f"round {r} dense masked", progress=progress,
                                 snapshot=get_params)
    pct = 100.0 * (1.0 - sparse.sparsity)
    rows = [[f"{name} ({res.backend})", f"{1000.0 / res.iters_per_s:.3f}", str(res.early_stop_iteration),
             f"{100 * res.test_acc_at_early_stop:.2f}", f"{100 * res.final_test_acc:.2f}"]
            for name, res in results.items()]
    log(f"run {run.run_id} round {r}: {pct:.1f}% weights remaining, {train_cfg.iterations} "
        f"iterations, batch {train_cfg.batch_size}")
    log(markdown_table(["model", "ms/iteration", "early-stop it", "test acc @ES", "final test acc"], rows))
    if compare_dense:
        diff = 100 * (results["sparse"].final_test_acc - results["dense"].final_test_acc)
        speed = results["sparse"].iters_per_s / results["dense"].iters_per_s
        log(f"final test accuracy sparse - dense: {diff:+.2f} points; sparse trains "
            f"{speed:.2f}x the dense masked iterations/s")
    return results
