"""`lth-sparse report`: the files it writes and the numbers in its tables."""
from __future__ import annotations

import statistics

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.lottery import sweep
from lth_sparse.lottery.store import Run
from lth_sparse.lottery.sweep_report import eval_curve, load_report_runs, write_report
from tests.lottery.test_sweep import QUIET

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A one-shot vs 2-round grid to two target sparsities, 2 seeds, reinit control."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("runs")
    g = sweep.parse_grid({
        "sweep": {"name": "mini"},
        "base": {"model": {"hidden": [32, 16]}, "lottery": {"controls": ["reinit"]},
                 "train": {"iterations": 40, "eval_every": 10, "batch_size": 30}},
        "axes": {"train.seed": [0, 1], "lottery.rounds": [1, 2],
                 "prune.target_sparsity": [0.5, 0.8]}})
    result = sweep.run_sweep(g, runs, executor="inline", **QUIET)
    torch.set_num_threads(before)
    assert result.failed == []
    return runs, result


def test_report_writes_tables_and_figures(swept, tmp_path):
    runs, result = swept
    files = write_report(["mini"], tmp_path / "out", runs_dir=runs)
    assert set(files) == {"accuracy", "early_stop", "curves", "parallel", "report", "rounds"}
    for name in ("accuracy", "early_stop", "curves", "parallel"):
        data = files[name].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
    text = files["report"].read_text()
    assert "![accuracy](accuracy.png)" in text and "8 runs (8 done)" in text
    for cell in result.cells:
        assert cell.run_id in text


def test_rounds_csv_holds_every_stored_round_of_every_kind(swept, tmp_path):
    import csv

    runs, result = swept
    path = write_report(["mini"], tmp_path, runs_dir=runs)["rounds"]
    rows = list(csv.DictReader(path.open()))
    by_key = {(r["run"], int(r["round"]), r["kind"]): r for r in rows}
    expected = 0
    for cell in result.cells:
        run = Run(runs / cell.run_id)
        for rnd in range(cell.rounds + 1):
            m = run.read_round_metrics(rnd)
            for kind, res in [("ticket", m["ticket"]), *m["controls"].items()]:
                expected += 1
                row = by_key[(cell.run_id, rnd, kind)]
                assert float(row["test_acc_at_early_stop"]) == res["test_acc_at_early_stop"]
                assert int(row["early_stop_iteration"]) == res["early_stop_iteration"]
                assert row["backend"] == res.get("backend", "dense")
                assert int(row["seed"]) == cell.config.train.seed
    assert len(rows) == expected  # cells sharing a round each list it: rows are per run


def test_summary_rows_are_the_mean_and_std_over_seeds(swept, tmp_path):
    runs, result = swept
    text = write_report(["mini"], tmp_path, runs_dir=runs)["report"].read_text()
    for rounds in (1, 2):
        for p in (0.5, 0.8):
            cells = [c for c in result.cells
                     if c.rounds == rounds and c.config.prune.target_sparsity == p]
            last = [Run(runs / c.run_id).read_round_metrics(rounds) for c in cells]
            assert len(last) == 2
            pct = statistics.mean(m["ticket"]["pct_remaining"] for m in last)
            for kind in ("ticket", "reinit"):
                res = [m["ticket"] if kind == "ticket" else m["controls"][kind] for m in last]
                accs = [100 * r["test_acc_at_early_stop"] for r in res]
                its = [r["early_stop_iteration"] for r in res]
                row = (f"| {kind} · rounds={rounds} | {pct:.2f} | 2 | "
                       f"{statistics.mean(accs):.2f} +/- {statistics.stdev(accs):.2f} | "
                       f"{statistics.mean(its):.0f} +/- {statistics.stdev(its):.0f} |")
                squeezed = [" ".join(line.split()) for line in text.splitlines()]
                assert " ".join(row.split()) in squeezed, row
    # a target-sparsity cell is one point (its last round): two sparsities, two rows per line
    rows = [line for line in squeezed if line.startswith("| ticket · rounds=2 |")]
    assert len(rows) == 2


def test_report_of_runs_by_id_through_the_cli(swept, tmp_path, capsys):
    runs, result = swept
    ids = [c.run_id for c in result.cells[:2]]
    assert main(["report", *ids, "-o", str(tmp_path / "r"), "--runs-dir", str(runs)]) == 0
    assert "report.md" in capsys.readouterr().out
    title, loaded = load_report_runs(ids, runs)
    assert title == "2 run(s)" and [r.run_id for r in loaded] == ids


def test_eval_curves_read_old_and_new_metrics():
    rows = [[0, 2.3, 0.1, 2.3, 0.12], [10, 0.5, 0.9, 0.6, 0.88]]
    old = eval_curve({"evals": rows})  # metrics.json written before eval_columns existed
    assert old[1] == {"iteration": 10, "val_loss": 0.5, "val_acc": 0.9, "test_loss": 0.6,
                      "test_acc": 0.88}
    reordered = eval_curve({"evals": [[0.9, 10]], "eval_columns": ["val_acc", "iteration"]})
    assert reordered == [{"val_acc": 0.9, "iteration": 10}]
    assert eval_curve({"evals": [{"iteration": 5, "val_acc": 0.5}]})[0]["iteration"] == 5


def test_report_of_an_unknown_name_is_a_clear_error(tmp_path):
    assert main(["report", "nothing-here", "--runs-dir", str(tmp_path)]) == 2
