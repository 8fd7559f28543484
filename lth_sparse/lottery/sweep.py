"""Sweeps: a grid of experiment configs, each cell an ordinary run in the run store.

Grid file (TOML or JSON)::

    [sweep]                      # optional
    name = "walkthrough"         # default: the file's stem
    [base.train]                 # [base] holds find-ticket's config sections
    iterations = 15000
    [axes]                       # product over these, in file order
    "train.seed" = [0, 1, 2]
    "prune.method" = ["layerwise", "random"]
    [[zip]]                      # each group: its axes advance together (equal lengths)
    "prune.target_sparsity" = [0.5, 0.9]
    "lottery.rounds" = [1, 5]

Every cell is `find_ticket(cell_config)`: hash-addressed, so re-running a sweep skips finished
cells and a killed sweep resumes where it stopped (a run resumes per round).

Shared prefixes. A run's round r depends on fewer fields than its whole config, so cells that
agree on them compute rounds 0..r once and the others adopt those round directories (hard
links; Run.adopt_rounds):

- round 0 (dense training, rewind weights) depends on ROUND0_FIELDS: every [data] field but
  data_dir, every [model] and [train] field, and lottery.rewind_iteration;
- rounds 1..r additionally on the pruning schedule: prune.method, prune.prune_bias, the per-round
  rates that config.per_round_rates() derives (from prune.rate, output_rate, layer_rates,
  target_sparsity -- and lottery.rounds when target_sparsity is set), and lottery.controls
  (the controls' results are stored in each round);
- lottery.rounds alone only sets how many rounds there are.

FIELD_ROLES classifies every config field this way (a test fails when a new field is not
classified). Different seeds share nothing: train.seed is a round-0 field. Seeds derived per
round (config.derived_seed) depend only on (train.seed, round), which is what makes the
adopted rounds identical to computing them again.

Sweep state -- cells, run ids, roles, status, errors -- lives in <runs>/sweeps/<name>/sweep.json,
rewritten atomically after every change; `lth-sparse report <name>` reads it.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from lth_sparse.errors import ConfigError, LthSparseError
from lth_sparse.lottery.config import ExperimentConfig, load_config_file

SWEEPS_DIR = "sweeps"
MANIFEST = "sweep.json"
MANIFEST_FORMAT = 1

# how each config field enters a round's result (see the module docstring)
ROUND0, SCHEDULE, LENGTH, NONE = "round0", "schedule", "length", "none"
FIELD_ROLES = {
    "data.dataset": ROUND0, "data.val_size": ROUND0, "data.split_seed": ROUND0,
    "data.normalize": ROUND0, "data.data_dir": NONE,
    # the kernels that train a round (dense torch or the fused sparse step) agree to fp32
    # rounding and are outside the run hash, as data_dir is: adopting a round ignores them
    "train.backend": NONE,
    "model.hidden": ROUND0, "model.init": ROUND0,
    "train.iterations": ROUND0, "train.batch_size": ROUND0, "train.lr": ROUND0,
    "train.eval_every": ROUND0, "train.seed": ROUND0,
    "lottery.rewind_iteration": ROUND0,
    "prune.method": SCHEDULE, "prune.prune_bias": SCHEDULE, "prune.rate": SCHEDULE,
    "prune.output_rate": SCHEDULE, "prune.layer_rates": SCHEDULE,
    "prune.target_sparsity": SCHEDULE, "lottery.controls": SCHEDULE,
    "lottery.rounds": LENGTH,
}


# ---------------------------------------------------------------------- prefixes

def _fields(cfg: ExperimentConfig, role: str) -> dict:
    d = cfg.to_dict()
    return {name: d[name.split(".")[0]][name.split(".")[1]]
            for name, r in FIELD_ROLES.items() if r == role}


def round0_key(cfg: ExperimentConfig) -> str:
    """Identity of round 0: equal keys, identical dense training and rewind weights."""
    return json.dumps(_fields(cfg, ROUND0), sort_keys=True, default=list)


def schedule_key(cfg: ExperimentConfig) -> str:
    """Identity of every round: equal keys, identical rounds 0..min(rounds)."""
    p = cfg.prune
    return json.dumps({"round0": round0_key(cfg), "method": p.method, "prune_bias": p.prune_bias,
                       "rates": cfg.per_round_rates(), "controls": list(cfg.lottery.controls)},
                      sort_keys=True)


def shared_rounds(a: ExperimentConfig, b: ExperimentConfig) -> int:
    """How many leading rounds (round 0 counts as one) runs of `a` and `b` compute identically."""
    if round0_key(a) != round0_key(b):
        return 0
    if schedule_key(a) != schedule_key(b):
        return 1
    return 1 + min(a.lottery.rounds, b.lottery.rounds)


# ---------------------------------------------------------------------- grid

@dataclass
class Cell:
    index: int
    axes: dict[str, Any]  # {"train.seed": 0, ...}: this cell's value of every grid axis
    config: ExperimentConfig

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def rounds(self) -> int:
        return self.config.lottery.rounds


@dataclass
class Grid:
    name: str
    base: dict
    axes: dict[str, list]
    zips: list[dict[str, list]]
    settings: dict = field(default_factory=dict)

    def axis_names(self) -> list[str]:
        return [*self.axes, *(k for z in self.zips for k in z)]

    def to_dict(self) -> dict:
        return {"sweep": {"name": self.name, **self.settings}, "base": self.base,
                "axes": self.axes, "zip": self.zips}


def load_grid(path: str | Path) -> Grid:
    """Read a grid file (.toml or .json); raises ConfigError naming what is wrong."""
    raw = load_config_file(path)
    return parse_grid(raw, default_name=Path(path).stem)


def parse_grid(raw: dict, default_name: str = "sweep") -> Grid:
    unknown = set(raw) - {"sweep", "base", "axes", "zip"}
    if unknown:
        raise ConfigError(f"unknown grid section(s) {sorted(unknown)}; a grid file has [sweep], "
                          "[base], [axes] and [[zip]]")
    settings = dict(raw.get("sweep", {}))
    name = str(settings.pop("name", default_name))
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"sweep name {name!r} must be a plain folder name")
    base = raw.get("base", {})
    ExperimentConfig.from_dict(base)  # unknown sections/fields are named here
    axes = raw.get("axes", {})
    zips = raw.get("zip", [])
    if isinstance(zips, dict):
        zips = [zips]
    seen: set[str] = set()
    for group_name, group in [("[axes]", axes), *((f"[[zip]] #{i + 1}", z)
                                                 for i, z in enumerate(zips))]:
        if not isinstance(group, dict):
            raise ConfigError(f"{group_name} must map config fields to lists of values")
        for key, values in group.items():
            if key in seen:
                raise ConfigError(f"grid axis {key!r} appears twice; give each field one axis")
            seen.add(key)
            if key.count(".") != 1:
                raise ConfigError(f"grid axis {key!r} must be section.field, e.g. train.seed")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid axis {key!r} in {group_name} needs a non-empty list")
        lengths = {len(v) for v in group.values()}
        if group is not axes and len(lengths) > 1:
            raise ConfigError(f"the axes of {group_name} must have equal lengths (they advance "
                              f"together), got {dict((k, len(v)) for k, v in group.items())}")
    return Grid(name, base, dict(axes), [dict(z) for z in zips], settings)


def apply_overrides(grid: Grid, assignments: list[str]) -> Grid:
    """`--set section.field=VALUE` on a grid, e.g. for a reduced-scale smoke of a full grid.

    VALUE is JSON where it parses (300, [0, 1], "x") and a plain string otherwise. A field that
    is a grid axis gets a new list of values (a [[zip]] axis keeps its group's length); any
    other field is set in [base]. The sweep gets its own name (<name>-<hash of the overrides>),
    so its manifest does not replace the full grid's.
    """
    if not assignments:
        return grid
    import hashlib

    base = json.loads(json.dumps(grid.base))
    axes = dict(grid.axes)
    zips = [dict(z) for z in grid.zips]
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key.count(".") != 1:
            raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. "
                              "train.iterations=300")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        group = axes if key in axes else next((z for z in zips if key in z), None)
        if group is not None:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"--set {key}: it is a grid axis, give a JSON list like [0, 1]")
            if group is not axes and len(value) != len(next(iter(group.values()))):
                raise ConfigError(f"--set {key}: its [[zip]] group needs "
                                  f"{len(next(iter(group.values())))} values")
            group[key] = value
        else:
            section, name = key.split(".")
            base.setdefault(section, {})[name] = value
    tag = hashlib.sha256("\n".join(assignments).encode()).hexdigest()[:6]
    return parse_grid({"sweep": {**grid.settings, "name": f"{grid.name}-{tag}"}, "base": base,
                       "axes": axes, "zip": zips})


def expand_grid(grid: Grid) -> list[Cell]:
    """Every cell: the product of [axes] (file order) and of each [[zip]] group (zipped).
    Cells whose configs coincide (the same run) are listed once."""
    dims: list[list[dict]] = [[{k: v} for v in values] for k, values in grid.axes.items()]
    for z in grid.zips:
        dims.append([dict(zip(z, vals)) for vals in zip(*z.values())])
    cells, seen = [], set()
    for combo in itertools.product(*dims):
        assignment = {k: v for part in combo for k, v in part.items()}
        raw = json.loads(json.dumps(grid.base))
        for key, value in assignment.items():
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        try:
            cfg = ExperimentConfig.from_dict(raw).validate()
        except ConfigError as exc:
            raise ConfigError(f"grid cell {assignment}: {exc}") from None
        if cfg.run_id() in seen:
            continue
        seen.add(cfg.run_id())
        cells.append(Cell(len(cells), assignment, cfg))
    return cells


# ---------------------------------------------------------------------- plan

@dataclass
class Job:
    """One find_ticket call: `cell` up to round `stop_after_round` (None: all), after adopting
    `adopt_rounds` rounds of cell `adopt_from`; runs once every job in `deps` succeeded.
    kind "copy": no training, the cell adopts all its rounds (done by the driver)."""
    id: int
    cell: int
    kind: str  # "train" | "copy"
    stop_after_round: int | None
    adopt_from: int | None
    adopt_rounds: int
    deps: list[int]


@dataclass
class Plan:
    cells: list[Cell]
    jobs: list[Job]
    roles: dict[int, str]  # cell -> "root" | "shares round 0" | "copies" (+ donor)
    donors: dict[int, int]

    def rounds_trained(self) -> int:
        """Rounds the plan trains (each with its controls), against sum(rounds + 1) unshared."""
        total = 0
        for c in self.cells:
            if self.roles[c.index] == "root":
                total += c.rounds + 1
            elif self.roles[c.index] == "shares round 0":
                total += c.rounds
        return total

    def rounds_unshared(self) -> int:
        return sum(c.rounds + 1 for c in self.cells)


def plan_sweep(cells: list[Cell]) -> Plan:
    """Order the cells so that shared prefixes are computed once.

    Per round-0 group (cells with equal round0_key) one root -- a cell with the most rounds --
    trains round 0 first. Per schedule group inside it, a leader (most rounds; the root for its
    own group) adopts round 0 and trains the rest; the group's other cells adopt all their
    rounds from the leader (copies, no training).
    """
    jobs: list[Job] = []
    roles: dict[int, str] = {}
    donors: dict[int, int] = {}

    def add(**kw) -> Job:
        jobs.append(Job(id=len(jobs), **kw))
        return jobs[-1]

    groups0: dict[str, list[Cell]] = {}
    for c in cells:
        groups0.setdefault(round0_key(c.config), []).append(c)
    for members in groups0.values():
        root = max(members, key=lambda c: (c.rounds, -c.index))
        schedules: dict[str, list[Cell]] = {}
        for c in members:
            schedules.setdefault(schedule_key(c.config), []).append(c)
        leaders = {k: (root if root in group else max(group, key=lambda c: (c.rounds, -c.index)))
                   for k, group in schedules.items()}
        roles[root.index] = "root"
        other_leaders = [c for c in leaders.values() if c is not root]
        if other_leaders and root.rounds > 0:
            first = add(cell=root.index, kind="train", stop_after_round=0, adopt_from=None,
                        adopt_rounds=0, deps=[])
            root_job = add(cell=root.index, kind="train", stop_after_round=None, adopt_from=None,
                           adopt_rounds=0, deps=[first.id])
            round0_job = first
        else:
            root_job = add(cell=root.index, kind="train", stop_after_round=None, adopt_from=None,
                           adopt_rounds=0, deps=[])
            round0_job = root_job
        leader_jobs = {root.index: root_job}
        for leader in other_leaders:
            roles[leader.index] = "shares round 0"
            donors[leader.index] = root.index
            kind = "train" if leader.rounds > 0 else "copy"
            leader_jobs[leader.index] = add(cell=leader.index, kind=kind, stop_after_round=None,
                                            adopt_from=root.index, adopt_rounds=1,
                                            deps=[round0_job.id])
        for k, group in schedules.items():
            leader = leaders[k]
            for c in group:
                if c is leader:
                    continue
                roles[c.index] = "copies"
                donors[c.index] = leader.index
                add(cell=c.index, kind="copy", stop_after_round=None, adopt_from=leader.index,
                    adopt_rounds=c.rounds + 1, deps=[leader_jobs[leader.index].id])
    return Plan(cells, jobs, roles, donors)


# ---------------------------------------------------------------------- time estimate

def measure_ms_per_iteration(cfg: ExperimentConfig, iterations: int = 200) -> tuple[float, float]:
    """(ms per training iteration, ms per evaluation of validation + test) of the cell's model
    on random MNIST-sized data in this process: a rough figure for --dry-run."""
    import torch

    from lth_sparse.lottery.data import Dataset, Split
    from lth_sparse.lottery.models import build_model
    from lth_sparse.lottery.pruning import get_params
    from lth_sparse.lottery.training import evaluate, train

    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))
    data = Dataset(split(max(cfg.train.batch_size * 4, 1000)), split(cfg.data.val_size),
                   split(10_000), "timing")
    model = build_model(cfg)
    warm = dataclasses.replace(cfg.train, iterations=20, eval_every=10**9)
    train(model, data, warm, data_seed=0, progress=False, snapshot=get_params)  # first-call costs
    t_cfg = dataclasses.replace(cfg.train, iterations=iterations, eval_every=10**9)
    res = train(model, data, t_cfg, data_seed=0, progress=False, snapshot=get_params)
    t0 = time.perf_counter()
    evaluate(model, data.val)
    evaluate(model, data.test)
    return 1000.0 / res.iters_per_s, 1000.0 * (time.perf_counter() - t0)


def estimate_seconds(plan: Plan, ms_per_iteration: float, ms_per_eval: float = 0.0) -> float:
    """Training time of the whole plan on one worker (divide by the workers for wall time)."""
    total = 0.0
    for c in plan.cells:
        role = plan.roles[c.index]
        if role == "copies":
            continue
        t, k = c.config.train, c.config.lottery.rewind_iteration
        trainings_after = 1 + len(c.config.lottery.controls)

        def cost(iters, eval_every=t.eval_every):
            return iters * ms_per_iteration + (iters / eval_every + 2) * ms_per_eval

        if role == "root":
            total += cost(t.iterations)
        total += c.rounds * trainings_after * cost(t.iterations - k)
    return total / 1000.0


# ---------------------------------------------------------------------- workers

_DATA_CACHE: dict[str, Any] = {}


def _init_worker(threads: int) -> None:
    """Process-pool initializer: this worker's share of the cores, set before it trains."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    torch.set_num_threads(threads)


def run_cell_job(config: dict, runs_dir: str, stop_after_round: int | None,
                 data_factory: Callable | None = None, threads: int | None = None,
                 find_ticket: Callable | None = None) -> dict:
    """Worker side of one job: find_ticket for the cell; returns {"run_id", "rounds_trained",
    "wall_s"}. The dataset is loaded once per worker process (`data_factory(cfg)` replaces
    load_data_for, e.g. synthetic data in tests) and reused by the jobs that follow.
    find_ticket: the IMP driver (default lottery.rounds.find_ticket, which trains dense; the CLI
    passes lth_sparse.bridge.trainers.find_ticket, which honours train.backend). It must be a
    module-level function, so that it pickles by reference into worker processes."""
    if threads is not None:
        _init_worker(threads)
    from lth_sparse.lottery.data import load_data_for
    from lth_sparse.lottery.store import Run

    if find_ticket is None:
        from lth_sparse.lottery.rounds import find_ticket

    cfg = ExperimentConfig.from_dict(config).validate()
    key = json.dumps(cfg.to_dict()["data"], sort_keys=True) + repr(data_factory)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset per worker at a time
        _DATA_CACHE[key] = (data_factory or load_data_for)(cfg)
    before = len(Run(Path(runs_dir) / cfg.run_id()).completed_rounds())
    t0 = time.perf_counter()
    run = find_ticket(cfg, runs_dir, data=_DATA_CACHE[key], stop_after_round=stop_after_round,
                      progress=False, log=lambda s: None)
    return {"run_id": run.run_id, "rounds_trained": len(run.completed_rounds()) - before,
            "wall_s": time.perf_counter() - t0}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor:
    """A spawn-context process pool of `workers`, each with cores/workers threads. A worker that
    dies (segfault, OOM kill) breaks the pool: its jobs fail and a fresh pool carries on."""

    def __init__(self, workers: int, threads: int | None = None):
        import multiprocessing

        self.workers = max(1, workers)
        self.threads = threads or max(1, available_cores() // self.workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._pool = None

    def _get_pool(self):
        from concurrent.futures import ProcessPoolExecutor
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=self._ctx,
                                             initializer=_init_worker, initargs=(self.threads,))
        return self._pool

    def submit(self, *args):
        return self._get_pool().submit(run_cell_job, *args)

    def wait_any(self, handles: list) -> list[tuple[Any, dict | None, BaseException | None]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out = []
        for h in done:
            try:
                out.append((h, h.result(), None))
            except BrokenProcessPool as exc:
                self._pool = None  # the next submit starts a fresh pool
                out.append((h, None, RuntimeError(f"worker process died ({exc})")))
            except BaseException as exc:  # the cell's own error: reported, others go on
                out.append((h, None, exc))
        return out

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class InlineExecutor:
    """Jobs run one at a time in this process (debugging, tests): no pool, no pickling."""
    workers = 1
    threads = None

    class _Done:
        def __init__(self, result, error):
            self.result, self.error = result, error

    def submit(self, *args):
        try:
            return self._Done(run_cell_job(*args), None)
        except Exception as exc:  # a cell's error is its result; the sweep goes on
            return self._Done(None, exc)

    def wait_any(self, handles):
        return [(h, h.result, h.error) for h in handles]

    def close(self):
        pass


class RayExecutor:
    """Each job a Ray task (num_cpus, num_gpus, max_retries: a task whose worker dies is run
    again and resumes from its last stored round). Workers write to the runs dir, which must be
    shared by every node (a local cluster, or a network file system)."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray, which is not installed: "
                              "pip install 'lth_sparse[sweep]' (or pip install ray), or use "
                              "--executor local") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        self.threads = max(1, int(num_cpus))
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                                  max_retries=max_retries)(run_cell_job)

    def submit(self, config, runs_dir, stop, data_factory, threads, find_ticket=None):
        return self._remote.remote(config, runs_dir, stop, data_factory, self.threads,
                                   find_ticket)

    def wait_any(self, handles):
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for h in ready:
            try:
                out.append((h, self.ray.get(h), None))
            except BaseException as exc:
                cause = getattr(exc, "cause", None)
                out.append((h, None, cause if isinstance(cause, BaseException) else exc))
        return out

    def close(self):
        pass


# ---------------------------------------------------------------------- manifest

def sweep_dir(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / SWEEPS_DIR / name


class Manifest:
    """<runs>/sweeps/<name>/sweep.json: the grid, and per cell its axes, run id, role, status."""

    def __init__(self, runs_dir: Path, grid: Grid, plan: Plan):
        self.path = sweep_dir(runs_dir, grid.name) / MANIFEST
        self.data = {
            "manifest_format": MANIFEST_FORMAT, "name": grid.name, "grid": grid.to_dict(),
            "runs_dir": str(runs_dir), "updated": None,
            "cells": [{"index": c.index, "axes": c.axes, "run_id": c.run_id,
                       "role": plan.roles[c.index], "prefix_from":
                       plan.cells[plan.donors[c.index]].run_id if c.index in plan.donors else None,
                       "status": "pending", "error": None} for c in plan.cells],
        }

    def set(self, cell: int, status: str, error: str | None = None) -> None:
        self.data["cells"][cell].update(status=status, error=error)

    def save(self) -> None:
        from lth_sparse.fileio import atomic_write_json
        self.data["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.path, self.data)


def read_manifest(ref: str | Path, runs_dir: Path | None = None) -> dict | None:
    """A sweep's manifest by path (sweep dir or sweep.json) or by name under runs_dir/sweeps;
    None when `ref` names no sweep."""
    from lth_sparse.errors import RunStoreError
    from lth_sparse.lottery.store import default_runs_dir

    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    candidates = [Path(ref), Path(ref) / MANIFEST]
    if "/" not in str(ref):
        candidates.append(sweep_dir(root, str(ref)) / MANIFEST)
    for path in candidates:
        if path.is_file() and path.name == MANIFEST:
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise RunStoreError(f"{path} is not valid JSON ({exc}); run the sweep again to "
                                    "rewrite it") from None
            if data.get("manifest_format") != MANIFEST_FORMAT:
                raise RunStoreError(f"{path} has manifest format "
                                    f"{data.get('manifest_format')!r}; this lth_sparse reads "
                                    f"{MANIFEST_FORMAT}: run the sweep again to rewrite it")
            data["path"] = str(path)
            return data
    return None


# ---------------------------------------------------------------------- driver

@dataclass
class SweepResult:
    manifest_path: Path
    cells: list[Cell]
    status: dict[int, str]
    errors: dict[int, str]
    rounds_trained: int

    @property
    def failed(self) -> list[int]:
        return [i for i, s in self.status.items() if s == "failed"]


def _cell_done(cell: Cell, runs_dir: Path, upto: int | None = None) -> bool:
    from lth_sparse.lottery.store import Run
    need = cell.rounds + 1 if upto is None else upto + 1
    return len(Run(runs_dir / cell.run_id).completed_rounds()) >= need


def _adopt(cells: list[Cell], job: Job, runs_dir: Path) -> int:
    """Give job.cell the rounds it shares with job.adopt_from (verified from the stored configs)."""
    from lth_sparse.lottery.store import Run

    cell, donor_cell = cells[job.cell], cells[job.adopt_from]
    donor = Run(runs_dir / donor_cell.run_id)
    shared = shared_rounds(cell.config, donor.read_config())
    if shared < job.adopt_rounds:
        raise LthSparseError(f"cell {job.cell} and {donor.path} share {shared} rounds, not "
                             f"{job.adopt_rounds}: the plan and the store disagree")
    run = Run(runs_dir / cell.run_id)
    if not run.config_path.exists():
        run.write_config(cell.config)
    elif run.read_config().canonical_json() != cell.config.canonical_json():
        raise LthSparseError(f"{run.path} holds a different experiment; move it away")
    return run.adopt_rounds(donor, job.adopt_rounds)


def _describe(cell: Cell) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.axes.items()) or "(base)"


def run_sweep(grid: Grid, runs_dir: str | Path | None = None, *, executor: str = "local",
              workers: int = 1, address: str | None = None, num_gpus: float = 0,
              max_retries: int = 3, data_factory: Callable | None = None,
              find_ticket: Callable | None = None,
              progress: bool | None = None, log: Callable[[str], None] = print) -> SweepResult:
    """Run every cell of `grid` (skipping finished ones, sharing prefixes); a failed cell is
    recorded with its error and the others go on. Returns the per-cell status.
    find_ticket: the IMP driver each cell runs (see run_cell_job)."""
    from tqdm.auto import tqdm

    from lth_sparse.lottery.store import default_runs_dir

    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    cells = expand_grid(grid)
    plan = plan_sweep(cells)
    if data_factory is None:  # fail before any worker starts when the data is missing
        from lth_sparse.lottery.data import load_data_for
        for cfg in {json.dumps(c.config.to_dict()["data"]): c.config for c in cells}.values():
            load_data_for(cfg)
    manifest = Manifest(runs_dir, grid, plan)
    if executor == "local":
        ex = LocalExecutor(workers)
    elif executor == "inline":
        ex = InlineExecutor()
    elif executor == "ray":
        ex = RayExecutor(address, num_cpus=max(1, available_cores() // max(1, workers))
                         if address is None else 1, num_gpus=num_gpus, max_retries=max_retries)
    else:
        raise ConfigError(f"--executor must be local, ray or inline, got {executor!r}")

    capacity = max(1, workers)  # training jobs in flight at once
    status = {c.index: "pending" for c in cells}
    errors: dict[int, str] = {}
    job_state = {j.id: "pending" for j in plan.jobs}  # pending|running|ok|failed
    last_job = {}  # cell -> its last job: the cell's status follows it
    for j in plan.jobs:
        last_job[j.cell] = j.id
    for c in cells:
        if _cell_done(c, runs_dir):
            status[c.index] = "skipped"
            manifest.set(c.index, "done")
    manifest.save()
    if progress is None:
        progress = sys.stderr.isatty() and os.environ.get("TQDM_DISABLE", "0") in ("", "0")
    n_skipped = sum(s == "skipped" for s in status.values())
    bar = tqdm(total=len(cells), initial=n_skipped, desc=f"sweep {grid.name}", unit="cell",
               disable=not progress, dynamic_ncols=True)
    if not progress:
        log(f"sweep {grid.name}: {len(cells)} cells ({n_skipped} already done), "
            f"{len(plan.jobs)} jobs, {executor} executor")
    finished = n_skipped
    rounds_trained = 0
    running: dict[Any, Job] = {}

    def counts() -> str:
        vals = list(status.values())
        return (f"done={sum(v in ('done', 'skipped') for v in vals)} "
                f"running={sum(v == 'running' for v in vals)} "
                f"failed={sum(v == 'failed' for v in vals)}")

    def finish_cell(cell: int, ok: bool, err: str | None = None, extra: str = "") -> None:
        nonlocal finished
        status[cell] = "done" if ok else "failed"
        manifest.set(cell, status[cell], err)
        if err:
            errors[cell] = err
        manifest.save()
        finished += 1
        bar.update(1)
        bar.set_postfix_str(counts(), refresh=True)
        c = cells[cell]
        line = (f"[{finished}/{len(cells)}] {status[cell]} {c.run_id} ({_describe(c)}){extra}"
                + (f": {err}" if err else ""))
        if not progress:
            log(line)
        elif err:
            bar.write(line)

    def job_finished(job: Job, ok: bool, err: str | None = None, extra: str = "") -> None:
        job_state[job.id] = "ok" if ok else "failed"
        if last_job[job.cell] == job.id or not ok:
            if status[job.cell] not in ("done", "failed", "skipped"):
                finish_cell(job.cell, ok, err, extra)

    try:
        while True:
            progressed = False
            for job in plan.jobs:
                if job_state[job.id] != "pending":
                    continue
                cell = cells[job.cell]
                dep_states = [job_state[d] for d in job.deps]
                if "failed" in dep_states:
                    failed_dep = next(plan.jobs[d] for d in job.deps if job_state[d] == "failed")
                    job_finished(job, False, f"its shared prefix (cell {failed_dep.cell}, run "
                                             f"{cells[failed_dep.cell].run_id}) failed")
                    progressed = True
                    continue
                if any(s != "ok" for s in dep_states):
                    continue
                if status[job.cell] == "skipped" or _cell_done(cell, runs_dir, job.stop_after_round):
                    job_finished(job, True)
                    progressed = True
                    continue
                if job.kind == "train" and len(running) >= capacity:
                    continue
                try:
                    if job.adopt_from is not None:
                        _adopt(cells, job, runs_dir)
                    if job.kind == "copy":
                        job_finished(job, True, extra=" (all rounds shared)")
                        progressed = True
                        continue
                except Exception as exc:
                    job_finished(job, False, f"{type(exc).__name__}: {exc}")
                    progressed = True
                    continue
                handle = ex.submit(cell.config.to_dict(), str(runs_dir), job.stop_after_round,
                                   data_factory, getattr(ex, "threads", None), find_ticket)
                running[handle] = job
                job_state[job.id] = "running"
                if status[job.cell] == "pending":
                    status[job.cell] = "running"
                    manifest.set(job.cell, "running")
                    manifest.save()
                bar.set_postfix_str(counts(), refresh=True)
                progressed = True
            if not running:
                if not progressed:
                    break
                continue
            for handle, result, exc in ex.wait_any(list(running)):
                job = running.pop(handle)
                if exc is None:
                    rounds_trained += result["rounds_trained"]
                    job_finished(job, True, extra=f" in {result['wall_s']:.1f}s")
                else:
                    job_finished(job, False, f"{type(exc).__name__}: {exc}")
    finally:
        bar.close()
        ex.close()
        manifest.save()
    result = SweepResult(manifest.path, cells, {i: ("done" if s == "skipped" else s)
                                                for i, s in status.items()}, errors,
                         rounds_trained)
    n_failed = len(result.failed)
    log(f"sweep {grid.name}: {len(cells) - n_failed}/{len(cells)} cells done, {n_failed} failed; "
        f"{rounds_trained} rounds trained this time; manifest {manifest.path}")
    for i in result.failed:
        log(f"  failed cell {i} ({_describe(cells[i])}): {errors.get(i)}")
    return result


def format_plan(plan: Plan, ms_per_iteration: float, ms_per_eval: float, workers: int,
                source: str) -> str:
    """The --dry-run listing: cells, their shared prefixes, and the estimated time."""
    from lth_sparse.lottery.report import markdown_table

    rows = []
    for c in plan.cells:
        role = plan.roles[c.index]
        donor = plan.donors.get(c.index)
        trains = {"root": c.rounds + 1, "shares round 0": c.rounds, "copies": 0}[role]
        rows.append([str(c.index), c.run_id, _describe(c),
                     role + (f" (cell {donor})" if donor is not None else ""), str(trains)])
    single = estimate_seconds(plan, ms_per_iteration, ms_per_eval)
    lines = [markdown_table(["cell", "run", "axes", "prefix", "rounds trained"], rows), "",
             f"{len(plan.cells)} cells, {len(plan.jobs)} jobs: {plan.rounds_trained()} rounds "
             f"trained (each with its controls) instead of {plan.rounds_unshared()} without "
             "prefix sharing",
             f"estimated time: {_hms(single)} on one worker, about {_hms(single / max(1, workers))} "
             f"with {workers} workers ({ms_per_iteration:.3f} ms/iteration, {ms_per_eval:.1f} "
             f"ms/evaluation, {source})"]
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
