"""Finding lth-sparse-run and reading its --bench output; a stand-in binary speaking the same
protocol drives the checked-then-timed path (no timing assertions)."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from lth_sparse.bench.c_runtime import ENV_VAR, find_runtime, parse_bench_output
from lth_sparse.bench.cli import bench_config_from_args
from lth_sparse.bench.suite import run_benchmarks
from lth_sparse.errors import ConfigError
from tests.bench.helpers import quick_args

REPO = Path(__file__).resolve().parents[2]

# Speaks lth-sparse-run's protocol through the package itself; LTH_FAKE_RUNTIME_SCALE != 1 makes
# its logits wrong (the bench must then refuse to report its timing).
FAKE_RUNTIME = f'''#!{sys.executable}
import json, os, sys
sys.path.insert(0, {str(REPO)!r})
import numpy as np, torch
from lth_sparse.sparse.ticket_file import load_ticket
args = sys.argv[1:]
ticket, opts = args[0], {{}}
i = 1
while i < len(args):
    if args[i] == "--bench":
        opts["bench"] = True; i += 1
    else:
        opts[args[i]] = args[i + 1]; i += 2
x = torch.from_numpy(np.load(opts["--input"]))
if opts.get("bench"):
    print("lth-sparse-run: timing")  # a line that is not a result: ignored
    print(json.dumps({{"bench": "lth_ticket_forward", "batch": int(opts["--batch"]),
                      "threads": int(opts["--threads"]), "repeats": int(opts["--repeats"]),
                      "median_us": 12.5, "min_us": 11.0, "p10_us": 11.5, "p90_us": 14.0}}))
else:
    with torch.no_grad():
        y = load_ticket(ticket, backend="reference")(x)
    np.save(opts["--output"], (y * float(os.environ.get("LTH_FAKE_RUNTIME_SCALE", "1"))).numpy())
'''


@pytest.fixture
def fake_runtime(tmp_path):
    path = tmp_path / "bin" / "lth-sparse-run"
    path.parent.mkdir()
    path.write_text(FAKE_RUNTIME)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_parse_bench_output_reads_json_lines_and_ignores_the_rest():
    text = "\n".join([
        "warming up",
        json.dumps({"bench": "lth_ticket_forward", "batch": 1, "threads": 2, "repeats": 200,
                    "median_us": 31.25, "min_us": 30.0, "p10_us": 30.5, "p90_us": 33.0}),
        "{not json",
        json.dumps({"batch": 16, "median_us": 0}),          # not a time: ignored
        json.dumps({"batch": 256, "median_us": 400.5, "nnz": 26600}),
    ])
    out = parse_bench_output(text)
    assert set(out) == {1, 256}
    assert out[1]["median_us"] == 31.25 and out[1]["p90_us"] == 33.0
    assert out[256]["nnz"] == 26600
    assert parse_bench_output("") == {}


def test_find_runtime_order(tmp_path, fake_runtime, monkeypatch):
    with pytest.raises(ConfigError, match="--runtime"):
        find_runtime(str(tmp_path / "missing"))
    assert find_runtime(str(fake_runtime)) == (fake_runtime, "--runtime")
    monkeypatch.setenv(ENV_VAR, str(fake_runtime))
    assert find_runtime(None, tmp_path) == (fake_runtime, f"${ENV_VAR}")
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path, why = find_runtime(None, tmp_path)
    assert path is None and "not found" in why and "--runtime" in why
    built = tmp_path / "build" / "csrc" / "runtime" / "lth-sparse-run"
    built.parent.mkdir(parents=True)
    built.write_bytes(fake_runtime.read_bytes())
    built.chmod(0o755)
    assert find_runtime(None, tmp_path) == (built, "build/")


def test_runtime_rows_are_checked_then_taken_from_its_output(tmp_path, tiny_ticket,
                                                             fake_runtime):
    cfg = bench_config_from_args(quick_args(tmp_path / "out", "--ticket", str(tiny_ticket),
                                            "--runtime", str(fake_runtime), "--batches", "1,3"))
    rows = [r for r in run_benchmarks(cfg, evaluate=lambda *a: 0.5)["rows"]
            if r["provider"] == "c-runtime"]
    assert [r["batch"] for r in rows] == [1, 3]
    assert all(r["status"] == "ok" and r["median_ms"] == 0.0125 and r["repeats"] == 3
               for r in rows), rows
    assert all("lth-sparse-run" in r["timer"] for r in rows)


def test_a_wrong_runtime_is_failed_not_timed(tmp_path, tiny_ticket, fake_runtime, monkeypatch):
    monkeypatch.setenv("LTH_FAKE_RUNTIME_SCALE", "1.1")
    cfg = bench_config_from_args(quick_args(tmp_path / "out", "--ticket", str(tiny_ticket),
                                            "--runtime", str(fake_runtime), "--batches", "2"))
    rows = [r for r in run_benchmarks(cfg, evaluate=lambda *a: 0.5)["rows"]
            if r["provider"] == "c-runtime"]
    assert len(rows) == 1 and rows[0]["status"] == "FAILED" and rows[0]["median_ms"] is None
    assert "differ" in rows[0]["reason"]


def test_missing_runtime_is_skipped_with_the_fix(tmp_path, tiny_ticket, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "empty"),
                                                os.path.dirname(sys.executable)]))
    monkeypatch.setattr("lth_sparse.bench.c_runtime.REPO_ROOT", tmp_path)
    cfg = bench_config_from_args(quick_args(tmp_path / "out", "--ticket", str(tiny_ticket),
                                            "--batches", "1"))
    rows = [r for r in run_benchmarks(cfg, evaluate=lambda *a: 0.5)["rows"]
            if r["provider"] == "c-runtime"]
    assert rows[0]["status"] == "SKIPPED" and "--runtime" in rows[0]["reason"]
