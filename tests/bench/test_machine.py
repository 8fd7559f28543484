"""Git state and the dirty-tree rule for benchmarks/results/: committed numbers must match
the commit they name."""
from __future__ import annotations

import subprocess

import pytest

from lth_sparse.bench import suite
from lth_sparse.bench.cli import bench_config_from_args, main
from lth_sparse.bench.machine import (
    GitState,
    check_clean_for_results,
    dirty_paths_from_porcelain,
    git_state,
    machine_tag,
)
from lth_sparse.errors import ConfigError
from tests.bench.helpers import parse_bench_args


def test_dirty_paths_ignore_results_and_untracked_files_outside_the_sources():
    porcelain = "\0".join([
        " M lth_sparse/bench/cli.py",          # tracked, modified: dirty
        "M  README.md",                        # staged: dirty
        " M benchmarks/results/x/results.md",  # a previous run's output: not dirty
        "?? benchmarks/results/new/results.csv",
        "?? notes.txt",                        # untracked outside the sources: not dirty
        "?? csrc/cpu/extra.cpp",               # untracked source CMake would glob: dirty
        "R  lth_sparse/new.py", "lth_sparse/old.py",  # rename: the source path follows
    ]) + "\0"
    assert dirty_paths_from_porcelain(porcelain) == [
        "lth_sparse/bench/cli.py", "README.md", "csrc/cpu/extra.cpp", "lth_sparse/new.py"]
    assert dirty_paths_from_porcelain("") == []


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_git_state_of_a_real_checkout(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "lth_sparse").mkdir()
    (tmp_path / "lth_sparse" / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_state(tmp_path)
    assert clean.sha and len(clean.sha) == 40 and not clean.dirty and clean.label == clean.sha
    (tmp_path / "scratch.txt").write_text("notes")
    assert not git_state(tmp_path).dirty
    (tmp_path / "lth_sparse" / "a.py").write_text("x = 2\n")
    dirty = git_state(tmp_path)
    assert dirty.dirty_paths == ["lth_sparse/a.py"] and dirty.label.endswith("-dirty")
    assert git_state(tmp_path / "lth_sparse").sha == clean.sha
    outside = tmp_path.parent / (tmp_path.name + "_not_git")
    outside.mkdir()
    assert git_state(outside).sha is None


def test_dirty_tree_may_not_write_into_results(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    dirty = GitState("a" * 40, ["lth_sparse/x.py"])
    clean = GitState("a" * 40, [])
    with pytest.raises(ConfigError, match="--allow-dirty") as err:
        check_clean_for_results(results / "cpu-x" / "all-fp32", dirty, False, results)
    assert "lth_sparse/x.py" in str(err.value) and "commit" in str(err.value)
    with pytest.raises(ConfigError, match="not a git checkout"):
        check_clean_for_results(results / "q", GitState(None), False, results)
    # allowed: a clean tree, --allow-dirty, or any folder outside benchmarks/results/
    check_clean_for_results(results / "cpu-x", clean, False, results)
    check_clean_for_results(results / "cpu-x", dirty, True, results)
    check_clean_for_results(tmp_path / "elsewhere", dirty, False, results)


def test_the_cli_refuses_before_measuring(tmp_path, monkeypatch, capsys):
    results = tmp_path / "benchmarks" / "results"
    monkeypatch.setattr(suite, "git_state", lambda: GitState("b" * 40, ["csrc/spmm.cpp"]))
    monkeypatch.setattr(suite, "results_root", lambda: results)
    monkeypatch.setattr("lth_sparse.bench.machine.results_root", lambda root=None: results)
    monkeypatch.setattr(suite, "run_spmm_grid", lambda *a, **k: pytest.fail("measured"))
    assert main(["--quick", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "dirty" in err and "--allow-dirty" in err and "csrc/spmm.cpp" in err
    assert not results.exists()


def test_allow_dirty_writes_and_records_it(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "results"
    monkeypatch.setattr(suite, "git_state", lambda: GitState("b" * 40, ["csrc/spmm.cpp"]))
    monkeypatch.setattr(suite, "results_root", lambda: results)
    monkeypatch.setattr("lth_sparse.bench.machine.results_root", lambda root=None: results)
    cfg = bench_config_from_args(parse_bench_args(
        "--quick", "--threads", "1", "--repeats", "2", "--mode", "inference", "--no-plots",
        "--shapes", "8x4", "--sparsities", "0.5", "--batches", "1", "--providers", "dense",
        "--allow-dirty"))
    result = suite.run_benchmarks(cfg)
    assert result["files"][0].is_relative_to(results)
    machine = result["meta"]["machine"]
    assert machine["git_dirty"] is True and machine["git_sha"] == "b" * 40 + "-dirty"
    assert "DIRTY" in result["files"][2].read_text()


def test_machine_tag():
    assert machine_tag("cpu").startswith("cpu-")
