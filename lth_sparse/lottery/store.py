"""The run store: the one module that knows file names.

    <runs>/<run_id>/config.json           the experiment config + store format version + kind
                                          (ticket: find-ticket; supermask: find-supermask)
    <runs>/<run_id>/rewind.pt             raw parameters at the rewind iteration (round 0)
    <runs>/<run_id>/round_NNN/state.pt    masks, trained (final) and early-stop parameters
    <runs>/<run_id>/round_NNN/metrics.json  written last: its presence marks the round complete

run_id is a hash of the canonical config, so the same experiment always maps to the same
directory and repeating a command resumes it. Every file is written atomically.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from lth_sparse._version import __version__
from lth_sparse.errors import ConfigError, RunStoreError
from lth_sparse.fileio import atomic_write_bytes, atomic_write_json
from lth_sparse.lottery.config import ExperimentConfig

STORE_FORMAT = 1
RUNS_ENV = "LTH_SPARSE_RUNS"


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV, "runs"))


def atomic_torch_save(path: Path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class Run:
    """One experiment's directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # ---------------------------------------------------------------- paths
    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def rewind_path(self) -> Path:
        return self.path / "rewind.pt"

    def round_dir(self, r: int) -> Path:
        return self.path / f"round_{r:03d}"

    # ---------------------------------------------------------------- config
    def read_config(self) -> ExperimentConfig:
        if not self.config_path.is_file():
            raise RunStoreError(f"{self.path} is not a run directory (no config.json); pass a "
                                "directory made by `lth-sparse find-ticket` or its run id")
        try:
            raw = json.loads(self.config_path.read_text())
        except ValueError as exc:
            raise RunStoreError(f"{self.config_path} is not valid JSON ({exc}); delete the run "
                                "directory and run find-ticket again") from None
        fmt = raw.get("store_format")
        if fmt != STORE_FORMAT:
            raise RunStoreError(
                f"{self.path} was written in run-store format {fmt!r} (by lth_sparse "
                f"{raw.get('package_version', '?')}); this lth_sparse ({__version__}) reads format "
                f"{STORE_FORMAT}. Re-run find-ticket with this version, or use the version that "
                "wrote it.")
        try:
            return config_class(raw.get("kind", "ticket")).from_dict(raw["config"]).validate()
        except (KeyError, ConfigError) as exc:
            raise RunStoreError(f"{self.config_path} holds an invalid config ({exc})") from None

    def write_config(self, cfg: ExperimentConfig) -> None:
        atomic_write_json(self.config_path, {"store_format": STORE_FORMAT,
                                             "kind": getattr(cfg, "KIND", "ticket"),
                                             "package_version": __version__,
                                             "run_id": self.run_id,
                                             "config": cfg.to_dict()})

    # ---------------------------------------------------------------- rounds
    def completed_rounds(self) -> list[int]:
        done = []
        r = 0
        while (self.round_dir(r) / "metrics.json").is_file():
            done.append(r)
            r += 1
        return done

    def write_round(self, r: int, state: dict, metrics: dict) -> None:
        """Persist one round; metrics.json goes last and marks the round complete."""
        d = self.round_dir(r)
        atomic_torch_save(d / "state.pt", state)
        atomic_write_json(d / "metrics.json", metrics)

    def read_round_state(self, r: int) -> dict:
        path = self.round_dir(r) / "state.pt"
        if not (self.round_dir(r) / "metrics.json").is_file() or not path.is_file():
            raise RunStoreError(f"round {r} of {self.path} is not complete; finish it with "
                                "find-ticket (same options) or pick a completed round")
        return _load(path, f"delete {self.round_dir(r)} and run find-ticket again")

    def read_round_metrics(self, r: int) -> dict:
        path = self.round_dir(r) / "metrics.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunStoreError(f"{path} is unreadable or corrupt ({exc}); delete "
                                f"{self.round_dir(r)} and run find-ticket again") from None

    def all_metrics(self) -> list[dict]:
        return [self.read_round_metrics(r) for r in self.completed_rounds()]

    def adopt_rounds(self, donor: "Run", n_rounds: int) -> int:
        """Give this run rounds 0..n_rounds-1 (and the rewind weights) of `donor`, which computed
        them already; returns how many rounds were added. The caller has checked that both
        experiments define those rounds identically (lth_sparse.lottery.sweep.shared_rounds).

        Files are hard-linked (copied across file systems): the store never writes a file in
        place -- every write is an os.replace -- so a later write to either run cannot reach the
        other. Rounds this run completed itself are kept; each adopted round is linked
        state.pt first and metrics.json last, so an interrupted adoption leaves no round that
        looks complete without being so.
        """
        have = len(self.completed_rounds())
        donor_done = len(donor.completed_rounds())
        if n_rounds > donor_done:
            raise RunStoreError(f"{donor.path} has {donor_done} complete rounds, cannot share "
                                f"{n_rounds}")
        if have >= n_rounds:
            return 0
        if not self.rewind_path.is_file():
            _link_or_copy(donor.rewind_path, self.rewind_path)
        for r in range(have, n_rounds):
            for name in ("state.pt", "metrics.json"):
                _link_or_copy(donor.round_dir(r) / name, self.round_dir(r) / name)
        return n_rounds - have

    def write_rewind(self, params: dict) -> None:
        atomic_torch_save(self.rewind_path, params)

    def read_rewind(self) -> dict:
        if not self.rewind_path.is_file():
            raise RunStoreError(f"{self.rewind_path} is missing; the run's round 0 is incomplete")
        return _load(self.rewind_path, f"delete {self.path} and run find-ticket again")


def config_class(kind: str) -> type[ExperimentConfig]:
    """The config class of a run's "kind" (runs written before kinds existed are tickets)."""
    if kind == "ticket":
        return ExperimentConfig
    if kind == "supermask":
        from lth_sparse.lottery.supermask import SupermaskConfig  # imports this module
        return SupermaskConfig
    raise ConfigError(f"unknown run kind {kind!r} (ticket or supermask); this run was written "
                      "by another lth_sparse version")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link src to dst atomically (through a temp name and os.replace); copy if the file
    systems differ or do not support links."""
    import shutil
    import tempfile

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, fix: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises many kinds
        raise RunStoreError(f"{path} is unreadable or corrupt ({type(exc).__name__}); {fix}") from None


def open_run(ref: str | os.PathLike, runs_dir: Path | None = None) -> Run:
    """A run by directory path, or by run id (or unique id prefix) under runs_dir."""
    path = Path(ref)
    if (path / "config.json").is_file():
        return Run(path)
    root = Path(runs_dir or default_runs_dir())
    matches = sorted(p for p in root.glob(f"{ref}*") if (p / "config.json").is_file()) \
        if root.is_dir() and str(ref) and "/" not in str(ref) else []
    if len(matches) == 1:
        return Run(matches[0])
    if len(matches) > 1:
        raise RunStoreError(f"run id prefix {ref!r} matches {len(matches)} runs under {root}; "
                            "give more characters")
    raise RunStoreError(f"no run {str(ref)!r}: not a run directory, and no run id under {root} "
                        "starts with it; list runs with `lth-sparse show`")


# -------------------------------------------------------------------- listing

def list_runs(runs_dir: Path | None = None) -> list[dict]:
    """Every run under runs_dir, newest first, read from the run directories themselves (the
    files are the one source of truth: there is no separate index to fall out of step)."""
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if not root.is_dir():
        return []
    runs = []
    for path in root.iterdir():
        run = Run(path)
        if not run.config_path.is_file():
            continue
        try:
            cfg = run.read_config()
        except (ConfigError, RunStoreError):
            continue  # not a run of this store format: open_run explains why when asked
        done = run.completed_rounds()
        raw = json.loads(run.config_path.read_text())
        runs.append({"run_id": run.run_id, "path": str(path), "rounds_done": len(done),
                     "rounds_total": cfg.lottery.rounds + 1,
                     "package_version": raw.get("package_version", "?"),
                     "updated": max((run.round_dir(r) / "metrics.json").stat().st_mtime
                                    for r in done) if done else run.config_path.stat().st_mtime})
    return sorted(runs, key=lambda r: r["updated"], reverse=True)
