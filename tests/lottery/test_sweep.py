"""Sweeps: grid expansion, prefix sharing (identical to unshared runs), skip/resume, failed-cell
isolation, the local process pool and (when installed) Ray with a worker killed mid-cell."""
from __future__ import annotations

import functools
import json
import os
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.errors import ConfigError
from lth_sparse.lottery import sweep
from lth_sparse.lottery.config import ExperimentConfig
from lth_sparse.lottery.rounds import find_ticket
from lth_sparse.lottery.store import Run
from tests.lottery.test_rounds import synthetic_dataset, tiny_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.toml"


def synthetic_data(cfg) -> object:
    """data_factory for sweep workers (module level, so a worker process can import it)."""
    return synthetic_dataset()


def grid(**raw) -> sweep.Grid:
    return sweep.parse_grid(raw, default_name="t")


def smoke_grid() -> sweep.Grid:
    return sweep.load_grid(SMOKE)


def assert_same_run(a: Run, b: Run) -> None:
    """Same masks, weights and evaluation curves in every round."""
    assert a.completed_rounds() == b.completed_rounds()
    assert all(torch.equal(v, b.read_rewind()[k]) for k, v in a.read_rewind().items())
    for r in a.completed_rounds():
        sa, sb = a.read_round_state(r), b.read_round_state(r)
        for part in ("masks", "final", "early_stop"):
            assert sa[part].keys() == sb[part].keys()
            assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), (r, part)
        ma, mb = a.read_round_metrics(r), b.read_round_metrics(r)
        assert ma["sparsity"] == mb["sparsity"]
        for kind in ("ticket", *ma["controls"]):
            ra = ma["ticket"] if kind == "ticket" else ma["controls"][kind]
            rb = mb["ticket"] if kind == "ticket" else mb["controls"][kind]
            assert ra["evals"] == rb["evals"], (r, kind)


def stored_results(runs_dir: Path, result: sweep.SweepResult) -> dict[str, Run]:
    return {c.run_id: Run(runs_dir / c.run_id) for c in result.cells}


QUIET = dict(data_factory=synthetic_data, progress=False, log=lambda s: None)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as each worker of a 2-worker pool on 2 cores gets: results compare
    bit for bit only at equal thread counts (the reduction order differs), and tiny models run
    fastest single-threaded anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------ grid

def test_grid_is_the_product_of_axes_times_each_zip_group():
    g = grid(base={"model": {"hidden": [8]}, "lottery": {"rounds": 1}},
             axes={"train.seed": [0, 1], "prune.method": ["layerwise", "random", "global"]},
             zip=[{"prune.rate": [0.2, 0.5], "prune.output_rate": [0.1, 0.25]}])
    cells = sweep.expand_grid(g)
    assert len(cells) == 2 * 3 * 2
    combos = {(c.config.train.seed, c.config.prune.method, c.config.prune.rate,
               c.config.prune.output_rate) for c in cells}
    assert len(combos) == 12
    assert all((rate, out) in {(0.2, 0.1), (0.5, 0.25)} for *_, rate, out in combos)
    assert all(c.config.model.hidden == (8,) for c in cells)  # [base] under every cell
    assert cells[0].axes == {"train.seed": 0, "prune.method": "layerwise", "prune.rate": 0.2,
                             "prune.output_rate": 0.1}
    assert len({c.run_id for c in cells}) == 12


def test_duplicate_cells_are_listed_once():
    g = grid(axes={"train.seed": [0, 0, 1]})
    assert [c.config.train.seed for c in sweep.expand_grid(g)] == [0, 1]


@pytest.mark.parametrize("raw,match", [
    ({"zip": [{"prune.rate": [0.1, 0.2], "lottery.rounds": [1]}]}, "equal lengths"),
    ({"axes": {"train.seed": [0]}, "zip": [{"train.seed": [1]}]}, "appears twice"),
    ({"axes": {"train.sed": [0]}}, "unknown option train.sed"),
    ({"axes": {"seed": [0]}}, "section.field"),
    ({"axes": {"train.seed": []}}, "non-empty list"),
    ({"axes": {"prune.rate": [0.5, 1.5]}}, "prune.rate must be a fraction"),
    ({"base": {"trian": {}}}, "unknown config section"),
    ({"grid": {}}, "unknown grid section"),
])
def test_bad_grids_are_named(raw, match):
    with pytest.raises(ConfigError, match=match):
        sweep.expand_grid(grid(**raw))


def test_overrides_shrink_a_grid_under_its_own_name():
    g = sweep.apply_overrides(smoke_grid(), ["train.iterations=20", "train.seed=[3]"])
    cells = sweep.expand_grid(g)
    assert {c.config.train.iterations for c in cells} == {20}
    assert {c.config.train.seed for c in cells} == {3} and len(cells) == 4
    assert g.name.startswith("smoke-") and g.name != "smoke"
    with pytest.raises(ConfigError, match="grid axis"):
        sweep.apply_overrides(smoke_grid(), ["train.seed=3"])


# ------------------------------------------------------------------------ prefixes

def test_every_config_field_has_a_prefix_role():
    cfg = ExperimentConfig()
    names = {f"{s}.{f.name}" for s in cfg.SECTIONS for f in fields(getattr(cfg, s))}
    assert names == set(sweep.FIELD_ROLES), "classify new config fields in sweep.FIELD_ROLES"


def test_shared_rounds_follow_the_fields_that_define_them():
    a = tiny_config(lottery__rounds=3)
    assert sweep.shared_rounds(a, tiny_config(lottery__rounds=1)) == 2  # rounds 0 and 1
    assert sweep.shared_rounds(a, tiny_config(train__seed=1)) == 0
    assert sweep.shared_rounds(a, tiny_config(prune__method="random")) == 1  # the dense round
    assert sweep.shared_rounds(a, tiny_config(lottery__controls=("reinit",))) == 1
    b = tiny_config(data__data_dir="/elsewhere", lottery__rounds=3)
    assert sweep.shared_rounds(a, b) == 4
    # with a target sparsity the per-round rate depends on lottery.rounds: only round 0 shared
    t3 = tiny_config(prune__target_sparsity=0.9, lottery__rounds=3)
    assert sweep.shared_rounds(t3, tiny_config(prune__target_sparsity=0.9, lottery__rounds=1)) == 1


def test_plan_trains_each_shared_prefix_once():
    plan = sweep.plan_sweep(sweep.expand_grid(smoke_grid()))
    assert plan.rounds_unshared() == 20 and plan.rounds_trained() == 10
    assert sorted(plan.roles.values()).count("root") == 2  # one dense round per seed


def test_sweep_shares_prefixes_and_matches_unshared_runs(tmp_path):
    result = sweep.run_sweep(smoke_grid(), tmp_path / "sweep", executor="inline", **QUIET)
    assert result.failed == [] and set(result.status.values()) == {"done"}
    assert result.rounds_trained == 10  # instead of 20: fewer trainings than cell rounds
    data = synthetic_dataset()
    for cell in result.cells:
        alone = find_ticket(cell.config, tmp_path / "alone", data=data, progress=False,
                            log=lambda s: None)
        assert_same_run(Run(tmp_path / "sweep" / cell.run_id), alone)
    manifest = sweep.read_manifest("smoke", tmp_path / "sweep")
    assert [c["run_id"] for c in manifest["cells"]] == [c.run_id for c in result.cells]
    assert {c["status"] for c in manifest["cells"]} == {"done"}


def test_rerun_skips_and_a_killed_sweep_resumes(tmp_path):
    runs = tmp_path / "runs"
    first = sweep.run_sweep(smoke_grid(), runs, executor="inline", **QUIET)
    mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}
    again = sweep.run_sweep(smoke_grid(), runs, executor="inline", **QUIET)
    assert again.rounds_trained == 0 and again.failed == []
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")} == mtimes
    # as if killed: a root lost its last round mid-training, a copy cell never got its rounds
    root = next(c for c in first.cells if c.config.train.seed == 0 and c.rounds == 2
                and c.config.prune.method == "layerwise")
    copy = next(c for c in first.cells if c.config.train.seed == 0 and c.rounds == 1
                and c.config.prune.method == "layerwise")
    reference = tmp_path / "reference"
    for c in (root, copy):
        find_ticket(c.config, reference, data=synthetic_dataset(), progress=False,
                    log=lambda s: None)
    import shutil
    (Run(runs / root.run_id).round_dir(2) / "metrics.json").unlink()
    shutil.rmtree(runs / copy.run_id)
    resumed = sweep.run_sweep(smoke_grid(), runs, executor="inline", **QUIET)
    assert resumed.rounds_trained == 1 and resumed.failed == []
    for c in (root, copy):
        assert_same_run(Run(runs / c.run_id), Run(reference / c.run_id))


def test_a_failed_cell_is_reported_and_the_others_finish(tmp_path):
    # batch 1000 > the 600 synthetic training images: those cells raise inside the worker
    raw = sweep.apply_overrides(smoke_grid(), ["train.seed=[0]"]).to_dict()
    raw["axes"]["train.batch_size"] = [30, 1000]
    g = sweep.parse_grid(raw)
    result = sweep.run_sweep(g, tmp_path, executor="inline", **QUIET)
    bad = {c.index for c in result.cells if c.config.train.batch_size == 1000}
    assert set(result.failed) == bad and len(bad) == 4
    for i in bad:
        assert "batch size 1000 exceeds" in result.errors[i] or "shared prefix" in result.errors[i]
    good = [c for c in result.cells if c.index not in bad]
    assert all(result.status[c.index] == "done" for c in good)
    assert all(len(Run(tmp_path / c.run_id).completed_rounds()) == c.rounds + 1 for c in good)
    manifest = json.loads(result.manifest_path.read_text())
    assert {c["index"] for c in manifest["cells"] if c["status"] == "failed"} == bad
    assert all(c["error"] for c in manifest["cells"] if c["status"] == "failed")


def test_local_executor_with_two_workers_matches_inline(tmp_path):
    g = sweep.apply_overrides(smoke_grid(), ["train.seed=[0]"])
    inline = sweep.run_sweep(g, tmp_path / "inline", executor="inline", **QUIET)
    pooled = sweep.run_sweep(g, tmp_path / "pool", executor="local", workers=2, **QUIET)
    assert pooled.failed == [] and pooled.rounds_trained == inline.rounds_trained == 5
    for c in pooled.cells:
        assert_same_run(Run(tmp_path / "pool" / c.run_id), Run(tmp_path / "inline" / c.run_id))


def test_cli_dry_run_lists_cells_prefixes_and_time(capsys, tmp_path):
    rc = main(["sweep", str(SMOKE), "--dry-run", "--ms-per-iteration", "1.5",
               "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "8 cells" in out and "10 rounds trained" in out and "instead of 20" in out
    assert "copies (cell 1)" in out and "1.500 ms/iteration" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_cli_sweep_exits_nonzero_when_a_cell_fails(tmp_path, monkeypatch, capsys):
    real = sweep.run_sweep
    monkeypatch.setattr(sweep, "run_sweep", lambda g, runs_dir, **kw: real(
        g, runs_dir, executor="inline", data_factory=synthetic_data, progress=False))
    args = ["sweep", str(SMOKE), "--runs-dir", str(tmp_path), "--set", "train.seed=[0]",
            "--set", "train.batch_size=1000"]
    assert main(args) == 1
    assert "failed cell" in capsys.readouterr().out


def test_ray_missing_is_a_clear_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match="pip install"):
        sweep.RayExecutor()


# ------------------------------------------------------------------------ ray

def dying_data(cfg, marker: str, runs_dir: str):
    """data_factory that, the first time only, kills its worker process once a round of any run
    has been stored -- a worker lost mid-cell."""
    if not os.path.exists(marker):
        Path(marker).write_text("killed once")

        def kill_after_a_round():
            while not any(Path(runs_dir).glob("*/round_001/metrics.json")):
                time.sleep(0.005)
            os._exit(1)

        threading.Thread(target=kill_after_a_round, daemon=True).start()
    return synthetic_dataset()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("ray"), reason="ray not installed")
def test_ray_retries_a_killed_worker_and_matches_local(tmp_path):
    import ray

    g = sweep.apply_overrides(smoke_grid(), ["train.seed=[0]"])
    inline = sweep.run_sweep(g, tmp_path / "inline", executor="inline", **QUIET)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}})
    try:
        factory = functools.partial(dying_data, marker=str(tmp_path / "marker"),
                                    runs_dir=str(tmp_path / "ray"))
        result = sweep.run_sweep(g, tmp_path / "ray", executor="ray", workers=2, max_retries=2,
                                 data_factory=factory, progress=False, log=lambda s: None)
    finally:
        ray.shutdown()
    assert (tmp_path / "marker").exists()  # a worker really died
    assert result.failed == []
    for c in result.cells:
        assert_same_run(Run(tmp_path / "ray" / c.run_id), Run(tmp_path / "inline" / c.run_id))
