"""`lth-sparse report`: markdown tables and PNG figures over a sweep or a set of runs.

What a point is. Each stored round of a run gives one point per kind -- the ticket and each
control (reinit, random_prune, finetune) -- at the ticket's % weights remaining. A run with a
fixed per-round rate (iterative pruning) contributes every round; a finished run with a target
sparsity contributes its last round only, since its earlier rounds are steps toward its own
target rather than points of the grid (a grid puts target 0 in to get the unpruned point). A line (series) is a kind plus the values
of the config fields that vary across the runs, except the seed and the sparsity axes; points of
a series at the same % remaining are averaged over seeds (mean +/- sample std; a seed that
reaches the same point from two runs -- the shared dense round -- counts once).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from lth_sparse.errors import RunStoreError
from lth_sparse.lottery.report import markdown_table

DEFAULT_EVAL_COLUMNS = ["iteration", "val_loss", "val_acc", "test_loss", "test_acc"]
SEED = "train.seed"
SPARSITY_AXES = ("prune.target_sparsity",)
KIND_COLORS = {"ticket": "C0", "reinit": "C3", "random_prune": "C2", "finetune": "C1"}


@dataclass
class RunData:
    run_id: str
    config: object  # ExperimentConfig
    metrics: list[dict]  # per completed round
    status: str = "done"
    axes: dict | None = None


def eval_curve(result: dict) -> list[dict]:
    """A training's evaluations as dicts, from metrics.json in any stored form: rows in
    `eval_columns` order (or the historic default order when that key is absent), or dicts."""
    columns = result.get("eval_columns", DEFAULT_EVAL_COLUMNS)
    out = []
    for row in result.get("evals", []):
        out.append(dict(row) if isinstance(row, dict) else dict(zip(columns, row)))
    return out


def _flat(cfg) -> dict:
    d = cfg.to_dict()
    out = {}
    for section, values in d.items():
        for k, v in values.items():
            if (section, k) in cfg.NON_SEMANTIC:
                continue
            out[f"{section}.{k}"] = tuple(v) if isinstance(v, list) else (
                json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
    return out


def varying_fields(runs: list[RunData]) -> list[str]:
    flats = [_flat(r.config) for r in runs]
    keys = list(flats[0]) if flats else []
    return [k for k in keys if len({repr(f[k]) for f in flats}) > 1]


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def series_fields(runs: list[RunData]) -> list[str]:
    fields = [f for f in varying_fields(runs) if f != SEED and f not in SPARSITY_AXES]
    if all(r.config.prune.target_sparsity is None for r in runs):
        fields = [f for f in fields if f != "lottery.rounds"]  # rounds only extend the same line
    return fields


def _points(runs: list[RunData]):
    """(series, seed, pct, result-dict) for every point (see the module docstring)."""
    label_fields = series_fields(runs)
    for run in runs:
        flat = _flat(run.config)
        label = tuple((f, flat[f]) for f in label_fields)
        rounds = run.metrics
        if run.config.prune.target_sparsity is not None and len(rounds) == run.config.lottery.rounds + 1:
            rounds = rounds[-1:]
        for m in rounds:
            pct = round(m["ticket"]["pct_remaining"], 2)
            yield ("ticket", label), run.config.train.seed, pct, m["ticket"]
            for kind, res in m["controls"].items():
                yield (kind, label), run.config.train.seed, pct, res


def series_label(series) -> str:
    kind, label = series
    return " · ".join([kind, *(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in label)])


def aggregate(runs: list[RunData]) -> dict:
    """{series: [(pct, {seed: result})...]} sorted by decreasing % remaining."""
    table: dict = {}
    for series, seed, pct, res in _points(runs):
        table.setdefault(series, {}).setdefault(pct, {}).setdefault(seed, res)
    return {s: sorted(pts.items(), key=lambda kv: -kv[0]) for s, pts in table.items()}


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float], digits: int = 2) -> str:
    mean, std = _ms(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} +/- {std:.{digits}f}"


def summary_table(runs: list[RunData]) -> str:
    """line | % remaining | seeds | test acc @ES (%) | early-stop iteration."""
    rows = []
    for series, pts in aggregate(runs).items():
        for pct, by_seed in pts:
            accs = [100 * r["test_acc_at_early_stop"] for r in by_seed.values()]
            its = [r["early_stop_iteration"] for r in by_seed.values()]
            rows.append([series_label(series), f"{pct:.2f}", str(len(by_seed)), _pm(accs),
                         _pm(its, 0)])
    return markdown_table(["line", "% remaining", "seeds", "test acc @ES (%)",
                           "early-stop iteration"], rows)


def cells_table(runs: list[RunData]) -> str:
    fields = varying_fields(runs)
    rows = []
    for r in runs:
        flat = _flat(r.config)
        last = r.metrics[-1]["ticket"] if r.metrics else None
        rows.append([r.run_id, *(_fmt(flat[f]) for f in fields), r.status,
                     f"{len(r.metrics)}/{r.config.lottery.rounds + 1}",
                     "-" if last is None else f"{last['pct_remaining']:.2f}",
                     "-" if last is None else f"{100 * last['test_acc_at_early_stop']:.2f}"])
    return markdown_table(["run", *fields, "status", "rounds", "% remaining (last)",
                           "ticket test acc @ES (last)"], rows)


ROUND_COLUMNS = ["run", "seed", "round", "kind", "pct_remaining", "early_stop_iteration",
                 "test_acc_at_early_stop", "max_val_acc", "final_train_acc", "backend",
                 "ms_per_iteration", "wall_time_s"]


def round_rows(runs: list[RunData]) -> list[dict]:
    """The raw numbers: one row per run, round and kind (ticket or control), every stored round
    (a target-sparsity run's intermediate rounds included), in ROUND_COLUMNS."""
    rows = []
    for r in runs:
        for m in r.metrics:
            pct = m["ticket"]["pct_remaining"]
            for kind, res in [("ticket", m["ticket"]), *m["controls"].items()]:
                ms = res.get("ms_per_iteration")
                rows.append({"run": r.run_id, "seed": r.config.train.seed, "round": m["round"],
                             "kind": kind, "pct_remaining": round(pct, 4),
                             "early_stop_iteration": res["early_stop_iteration"],
                             "test_acc_at_early_stop": res["test_acc_at_early_stop"],
                             "max_val_acc": res["max_val_acc"],
                             "final_train_acc": res.get("final_train_acc"),
                             "backend": res.get("backend", "dense"),
                             "ms_per_iteration": None if ms is None else round(ms, 4),
                             "wall_time_s": round(res.get("wall_time_s", 0.0), 2)})
    return rows


def rounds_csv(runs: list[RunData]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROUND_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(round_rows(runs))
    return buf.getvalue()


# ---------------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _line_styles(series_list):
    labels = sorted({s[1] for s in series_list})
    markers = "osD^vP*X"
    linestyles = ["-", "--", ":", "-."]
    return {lab: (markers[i % len(markers)], linestyles[(i // len(markers)) % 4])
            for i, lab in enumerate(labels)}


def plot_metric(runs: list[RunData], key: str, ylabel: str, path: Path, scale: float = 1.0) -> Path:
    plt = _plt()
    agg = aggregate(runs)
    styles = _line_styles(agg)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for series, pts in sorted(agg.items(), key=lambda kv: series_label(kv[0])):
        xs, ys, es = [], [], []
        for pct, by_seed in pts:
            mean, std = _ms([scale * r[key] for r in by_seed.values()])
            xs.append(pct), ys.append(mean), es.append(std)
        marker, ls = styles[series[1]]
        ax.errorbar(xs, ys, yerr=es, marker=marker, linestyle=ls, ms=4, capsize=3,
                    color=KIND_COLORS.get(series[0]), label=series_label(series), alpha=0.85)
    _percent_log_axis(ax, sorted({pct for pts in agg.values() for pct, _ in pts}))
    ax.set_xlabel("% weights remaining (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    n_seeds = len({r.config.train.seed for r in runs})
    ax.set_title(f"{ylabel} vs weights remaining (mean +/- std over {n_seeds} seed(s))")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path, plt)


def _percent_log_axis(ax, levels: list[float]) -> None:
    """Log x axis, decreasing to the right, ticks at plain percentages (the sparsity levels
    themselves when there are few enough to label)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks: list[float] = []
    for v in sorted(levels, reverse=True):  # levels within 5% of each other share a tick
        if not ticks or v < 0.95 * ticks[-1]:
            ticks.append(v)
    if 0 < len(ticks) <= 14:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


def plot_curves(runs: list[RunData], path: Path, max_panels: int = 6) -> Path:
    """Validation accuracy over training, one line per sparsity, one panel per ticket line,
    for the lowest seed."""
    plt = _plt()
    seed = min(r.config.train.seed for r in runs)
    curves: dict = {}
    for series, s, pct, res in _points([r for r in runs if r.config.train.seed == seed]):
        if series[0] == "ticket":
            curves.setdefault(series, {}).setdefault(pct, eval_curve(res))
    panels = sorted(curves, key=series_label)[:max_panels]
    cols = min(3, max(1, len(panels)))
    rows = math.ceil(len(panels) / cols) if panels else 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, series in zip(axes.flat, panels):
        levels = sorted(curves[series], reverse=True)
        for i, pct in enumerate(levels):
            pts = curves[series][pct]
            ax.plot([p["iteration"] for p in pts], [100 * p["val_acc"] for p in pts],
                    color=cmap(i / max(1, len(levels) - 1)), lw=1.2, label=f"{pct:.1f}%")
        ax.set_title(series_label(series), fontsize=8)
        ax.set_xlabel("training iteration")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, title="remaining", title_fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"validation accuracy during training, seed {seed}")
    return _save(fig, path, plt)


def plot_parallel(runs: list[RunData], path: Path) -> Path:
    """Parallel coordinates: one polyline per run over the varying config fields, ending at its
    last round's ticket test accuracy at early stop (colour = that accuracy)."""
    plt = _plt()
    fields = varying_fields(runs)
    done = [r for r in runs if r.metrics]
    values = [[_flat(r.config)[f] for f in fields] for r in done]
    result = [100 * r.metrics[-1]["ticket"]["test_acc_at_early_stop"] for r in done]
    columns = [*fields, "test acc @ES (%)"]
    table = [row + [res] for row, res in zip(values, result)]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(columns)), 5))
    positions, ticks = [], []
    for j in range(len(columns)):
        col = [row[j] for row in table]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col)
        if numeric:
            lo, hi = min(col), max(col)
            span = (hi - lo) or 1.0
            positions.append([(v - lo) / span for v in col])
            shown = sorted(set(col)) if len(set(col)) <= 8 else [lo, (lo + hi) / 2, hi]
            ticks.append([((v - lo) / span, _fmt(round(v, 3) if isinstance(v, float) else v))
                          for v in shown])
        else:
            cats = sorted({repr(v): v for v in col}.values(), key=repr)
            index = {repr(v): i for i, v in enumerate(cats)}
            denom = max(1, len(cats) - 1)
            positions.append([index[repr(v)] / denom for v in col])
            ticks.append([(i / denom, _fmt(v)) for i, v in enumerate(cats)])
    cmap = plt.get_cmap("plasma")
    lo, hi = (min(result), max(result)) if result else (0, 1)
    for i in range(len(table)):
        ys = [positions[j][i] for j in range(len(columns))]
        ax.plot(range(len(columns)), ys, color=cmap((result[i] - lo) / ((hi - lo) or 1)),
                alpha=0.7, lw=1.2)
    for j, tk in enumerate(ticks):
        ax.axvline(j, color="k", lw=0.8)
        for y, text in tk:
            ax.text(j + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize=8, rotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label="ticket test acc @ES, last round (%)")
    ax.set_title("grid axes and result, one line per run")
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- entry point

def load_report_runs(refs: list[str], runs_dir=None) -> tuple[str, list[RunData]]:
    """(title, runs) from one sweep name/path, or from run directories / ids."""
    from lth_sparse.lottery.store import Run, default_runs_dir, open_run
    from lth_sparse.lottery.sweep import read_manifest

    if len(refs) == 1:
        manifest = read_manifest(refs[0], runs_dir)
        if manifest is not None:
            root = Path(runs_dir) if runs_dir is not None else Path(manifest["path"]).parents[2]
            runs = []
            for cell in manifest["cells"]:
                run = Run(root / cell["run_id"])
                if not run.config_path.is_file():
                    runs.append(None)
                    continue
                runs.append(RunData(run.run_id, run.read_config(), run.all_metrics(),
                                    cell["status"], cell["axes"]))
            runs = [r for r in runs if r is not None]
            if not runs:
                raise RunStoreError(f"sweep {manifest['name']} has no runs under {root} yet; "
                                    "run `lth-sparse sweep` first")
            return f"sweep {manifest['name']}", runs
    runs = []
    for ref in refs:
        run = open_run(ref, runs_dir if runs_dir is not None else default_runs_dir())
        cfg = run.read_config()
        metrics = run.all_metrics()
        runs.append(RunData(run.run_id, cfg, metrics,
                            "done" if len(metrics) == cfg.lottery.rounds + 1 else "incomplete"))
    return f"{len(runs)} run(s)", runs


def write_report(refs: list[str], out_dir: str | Path, runs_dir=None) -> dict[str, Path]:
    """report.md, rounds.csv (round_rows) + accuracy.png, early_stop.png, curves.png,
    parallel.png in out_dir."""
    title, runs = load_report_runs(refs, runs_dir)
    out = Path(out_dir)
    with_metrics = [r for r in runs if r.metrics]
    files: dict[str, Path] = {}
    if with_metrics:
        files["accuracy"] = plot_metric(with_metrics, "test_acc_at_early_stop",
                                        "test accuracy at early stop (%)", out / "accuracy.png",
                                        scale=100.0)
        files["early_stop"] = plot_metric(with_metrics, "early_stop_iteration",
                                          "early-stop iteration", out / "early_stop.png")
        files["curves"] = plot_curves(with_metrics, out / "curves.png")
        if varying_fields(with_metrics):
            files["parallel"] = plot_parallel(with_metrics, out / "parallel.png")
    text = [f"# Report: {title}", "",
            f"{len(runs)} runs ({sum(r.status == 'done' for r in runs)} done).", "",
            "## Accuracy and early stopping by % weights remaining", "",
            summary_table(with_metrics) if with_metrics else "no completed rounds yet", "",
            "## Runs", "", cells_table(runs), ""]
    for name, path in files.items():
        text += [f"![{name}]({path.name})", ""]
    from lth_sparse.fileio import atomic_write_bytes
    if with_metrics:
        files["rounds"] = out / "rounds.csv"
        atomic_write_bytes(files["rounds"], rounds_csv(with_metrics).encode())
        text += ["Every round of every run (ticket and controls): [rounds.csv](rounds.csv).", ""]
    files["report"] = out / "report.md"
    atomic_write_bytes(files["report"], "\n".join(text).encode())
    return files
