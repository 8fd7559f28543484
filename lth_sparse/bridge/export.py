"""The one bridge from a run's masks and weights to CSR ticket files.

Reads a completed round from the run store, builds one CSRMatrix per layer (nonzeros = the
mask's survivors), and writes a ticket file (lth_sparse.sparse.ticket_file) that deploys without the
training code: input preprocessing, architecture, provenance and accuracy travel in its metadata.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lth_sparse.errors import ConfigError, RunStoreError
from lth_sparse.fileio import DEFAULT_MODE
from lth_sparse.lottery.config import layer_names
from lth_sparse.lottery.data import STATS
from lth_sparse.lottery.store import Run, open_run
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.ticket_file import save_ticket

WEIGHTS = {"early-stop": "early_stop", "final": "final"}


def pick_round(run: Run, round_: int | None = None, sparsity: float | None = None) -> int:
    """The requested completed round: explicit, closest to a sparsity, or the last one."""
    done = run.completed_rounds()
    if not done:
        raise RunStoreError(f"{run.path} has no completed round yet; run find-ticket first")
    if round_ is not None:
        if round_ not in done:
            raise RunStoreError(f"round {round_} of {run.path} is not complete; completed rounds "
                                f"are 0..{done[-1]}")
        return round_
    if sparsity is not None:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"--sparsity must be a fraction in [0, 1), got {sparsity}")
        spars = {r: 1.0 - run.read_round_metrics(r)["sparsity"]["remaining"] for r in done}
        return min(done, key=lambda r: abs(spars[r] - sparsity))
    return done[-1]


def ticket_layers(run: Run, r: int, weights: str = "early-stop"
                  ) -> list[tuple[str, CSRMatrix, torch.Tensor]]:
    """[(name, CSRMatrix, bias)] of round r, masked, in forward order."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    cfg = run.read_config()
    state = run.read_round_state(r)
    params, masks = state[WEIGHTS[weights]], state["masks"]
    if weights == "final" and "final_masks" in state:
        # a supermask's mask moves while its weights stay: the final mask goes with "final"
        masks = state["final_masks"]
    layers = []
    for name in layer_names(len(cfg.model.hidden) + 1):
        weight = params[f"{name}.weight"]
        bias = params[f"{name}.bias"]
        if f"{name}.bias" in masks:
            bias = bias * masks[f"{name}.bias"]
        csr = CSRMatrix.from_dense(weight, masks.get(f"{name}.weight"), name=name)
        layers.append((name, csr, bias.clone()))
    return layers


def ticket_metadata(run: Run, r: int, weights: str) -> dict:
    """The provenance a ticket carries: source run and round, accuracy, input preprocessing, and
    the experiment config minus machine-local paths (a ticket travels; the exporting machine's
    data folder means nothing elsewhere and leaks its layout, so data.data_dir is dropped and
    only the dataset name is kept)."""
    cfg = run.read_config()
    config = cfg.to_dict()
    config["data"].pop("data_dir", None)
    metrics = run.read_round_metrics(r)
    t = metrics["ticket"]
    mean, std = STATS[cfg.data.dataset]
    accuracy = t["test_acc_at_early_stop"] if weights == "early-stop" else t["final_test_acc"]
    return {
        "source": {"run_id": run.run_id, "round": r, "weights": weights,
                   "pct_remaining": t["pct_remaining"],
                   "early_stop_iteration": t["early_stop_iteration"]},
        "accuracy": {"test": accuracy, "dataset": cfg.data.dataset},
        # what a deployment must do to raw 28x28 uint8 images before the first layer
        "input": {"flatten": 784, "scale": 1 / 255,
                  "normalize": {"mean": mean, "std": std} if cfg.data.normalize else None},
        "config": config,
    }


def export_run(ref, output: str | Path, *, round_: int | None = None,
               sparsity: float | None = None, weights: str = "early-stop",
               fmt: str = "safetensors", runs_dir=None, mode: int = DEFAULT_MODE) -> list[Path]:
    """Export one round of a run as a ticket file; returns the written paths.

    mode: permission bits of the written files before the umask (default 0o666, i.e. 0o644
    under umask 022); e.g. 0o600 to keep them private.
    fmt "npz" writes the safetensors ticket at `output` and a scipy-readable .npz beside it.
    """
    if fmt not in ("safetensors", "npz"):
        raise ConfigError(f"--format must be safetensors or npz, got {fmt!r}")
    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"{output} is a directory; give a file name like ticket.safetensors")
    run = open_run(ref, runs_dir)
    r = pick_round(run, round_, sparsity)
    layers = ticket_layers(run, r, weights)
    meta = ticket_metadata(run, r, weights)
    written = []
    if fmt == "npz":
        npz = output.with_suffix(".npz")
        if npz == output:
            raise ConfigError(f"with --format npz, -o names the safetensors ticket and the .npz is "
                              f"written beside it; give -o {output.with_suffix('.safetensors')}")
        # the interop file first: if it fails, an existing ticket at `output` is untouched
        save_ticket(npz, layers, activation="relu", metadata=meta, fmt="npz", mode=mode)
        written.append(npz)
    save_ticket(output, layers, activation="relu", metadata=meta, fmt="safetensors",
                mode=mode)
    written.insert(0, output)
    return written
