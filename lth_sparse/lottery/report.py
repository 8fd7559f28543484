"""Human-readable views of runs: per-round tables, mean +/- std across seeds, and plots."""
from __future__ import annotations

import statistics
from pathlib import Path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-markdown table (readable as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([fmt(header), sep, *(fmt(r) for r in rows)])


def _controls(metrics: list[dict]) -> list[str]:
    names: list[str] = []
    for m in metrics:
        names += [c for c in m["controls"] if c not in names]
    return names


def round_table(metrics: list[dict]) -> str:
    """round | % remaining | early-stop it | test acc at it | max val acc | train acc | controls."""
    controls = _controls(metrics)
    header = ["round", "% remaining", "early-stop it", "test acc @ES", "max val acc",
              "train acc", "backend", "ms/it", *(f"{c} acc @ES (it)" for c in controls)]
    rows = []
    for m in metrics:
        t = m["ticket"]
        row = [str(m["round"]), f"{t['pct_remaining']:.1f}", str(t["early_stop_iteration"]),
               f"{100 * t['test_acc_at_early_stop']:.2f}", f"{100 * t['max_val_acc']:.2f}",
               f"{100 * t['final_train_acc']:.2f}", *backend_cells(t)]
        for c in controls:
            cm = m["controls"].get(c)
            row.append("-" if cm is None else
                       f"{100 * cm['test_acc_at_early_stop']:.2f} ({cm['early_stop_iteration']})")
        rows.append(row)
    return markdown_table(header, rows)


def backend_cells(train_metrics: dict) -> list[str]:
    """[backend, ms/iteration] of one trained model's metrics ("-" for runs stored before
    rounds recorded them: those trained dense)."""
    ms = train_metrics.get("ms_per_iteration")
    return [train_metrics.get("backend", "-"), "-" if ms is None else f"{ms:.3f}"]


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"


def seeds_table(runs: list[list[dict]]) -> str:
    """Mean +/- std over runs (e.g. seeds) per round: % remaining, early-stop it, accuracies."""
    controls = _controls([m for run in runs for m in run])
    n_rounds = min(len(r) for r in runs)
    header = ["round", "% remaining", "ticket early-stop it", "ticket test acc @ES",
              *(f"{c} test acc @ES" for c in controls), *(f"{c} early-stop it" for c in controls)]
    rows = []
    for i in range(n_rounds):
        ms = [run[i] for run in runs]
        row = [str(i), _mean_std([m["ticket"]["pct_remaining"] for m in ms]),
               _mean_std([m["ticket"]["early_stop_iteration"] for m in ms]),
               _mean_std([100 * m["ticket"]["test_acc_at_early_stop"] for m in ms])]
        for key in ("test_acc_at_early_stop", "early_stop_iteration"):
            for c in controls:
                vals = [m["controls"][c][key] for m in ms if c in m["controls"]]
                scale = 100 if key == "test_acc_at_early_stop" else 1
                row.append(_mean_std([scale * v for v in vals]) if vals else "-")
        rows.append(row)
    return markdown_table(header, rows)


def runs_listing(runs: list[dict]) -> str:
    if not runs:
        return "no runs yet: start one with `lth-sparse find-ticket` (or `lth-sparse demo`)"
    rows = [[r["run_id"], f"{r['rounds_done']}/{r['rounds_total']}", r["package_version"], r["path"]]
            for r in runs]
    return markdown_table(["run", "rounds done", "version", "path"], rows)


def plot_runs(runs: list[list[dict]], path: str | Path) -> Path:
    """Test accuracy at early stop vs % weights remaining (log x), ticket and controls, per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_it) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"ticket": "C0", "reinit": "C3", "random_prune": "C2", "finetune": "C1"}
    for i, run in enumerate(runs):
        kinds = ["ticket", *_controls(run)]
        for kind in kinds:
            pts = [(m["ticket"]["pct_remaining"],
                    m["ticket"] if kind == "ticket" else m["controls"].get(kind)) for m in run]
            pts = [(x, t) for x, t in pts if t is not None]
            label = kind if i == 0 else None
            ax_acc.plot([x for x, _ in pts], [100 * t["test_acc_at_early_stop"] for _, t in pts],
                        "o-", color=styles.get(kind), alpha=0.8, label=label, ms=3)
            ax_it.plot([x for x, _ in pts], [t["early_stop_iteration"] for _, t in pts],
                       "o-", color=styles.get(kind), alpha=0.8, label=label, ms=3)
    for ax, ylabel in ((ax_acc, "test accuracy at early stop (%)"), (ax_it, "early-stop iteration")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("% weights remaining")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Lottery tickets vs controls")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
