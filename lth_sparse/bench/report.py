"""A run's outputs: results.json, results.csv, results.md (the human tables) and the speedup
PNGs, all written atomically."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from lth_sparse.bench.rows import COLUMNS
from lth_sparse.bench.ticket import FLOOR
from lth_sparse.fileio import atomic_write_bytes

__all__ = ["to_csv", "to_markdown", "plot_speedups", "write_outputs"]

# ticket table: the contenders compared with each baseline, as (contender, baseline) columns
TICKET_RATIOS = [("lth_sparse", "torch-dense"), ("lth_sparse", "onnxruntime"),
                 ("lth_sparse", "torch-csr"), ("c-runtime", "onnxruntime"),
                 ("c-runtime", "lth_sparse")]
# ticket table: how far from the machine's floor these providers are (median / floor)
TICKET_FLOOR_COLUMNS = ("lth_sparse", "c-runtime", "onnxruntime")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    return buf.getvalue()


def _fmt_ms(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return "FAILED" if r["status"] == "FAILED" else "skip"
    m = r["median_ms"]
    prec = 4 if m < 0.1 else 3 if m < 1 else 2 if m < 100 else 1
    if r.get("q25_ms") is None or r.get("timer") == "model":
        return f"{m:.{prec}f}"
    return f"{m:.{prec}f} ({r['q25_ms']:.{prec}f}–{r['q75_ms']:.{prec}f})"


def _fmt_x(v) -> str:
    return "" if v is None else f"{v:.2f}×"


def _ratio(by: dict, num: str, den: str):
    """by[den] time / by[num] time when both are ok (num is `den`'s multiple faster)."""
    a, b = by.get(num), by.get(den)
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return None
    return b["median_ms"] / a["median_ms"]


def _header(meta: dict) -> list[str]:
    m = meta["machine"]
    dirty = {True: " (DIRTY tree: " + ", ".join(m.get("git_dirty_paths") or []) + ")",
             False: " (clean)", None: ""}[m.get("git_dirty")]
    lines = [f"# lth_sparse benchmark: {meta['device']} {', '.join(meta['dtypes'])}", "",
             f"- command: `{meta['command']}`",
             f"- machine: {m['cpu']} ({m['cores']} cores available)"
             + (f"; GPU {m['gpu']} (CUDA {m.get('cuda')})" if m.get("gpu") else ""),
             f"- threads: {meta['threads']}; environment {m.get('env') or '{}'}",
             f"- load average (1, 5, 15 min) at start {meta.get('load_average_start')}, at end "
             f"{m.get('load_average')}: the machine should be otherwise idle",
             f"- versions: torch {m['torch']}, triton {m['triton']}, numpy {m['numpy']}, "
             f"scipy {m['scipy']}, onnxruntime {m.get('onnxruntime')}, lth_sparse "
             f"{m['lth_sparse']}, python {m['python']}",
             f"- extension: {m['extension']}",
             f"- git: {m['git_sha']}{dirty}",
             f"- date: {m['date']}",
             f"- timing: {meta['timing']}"]
    if meta.get("limits"):
        lim = meta["limits"]
        lines.append(f"- machine limits (measured in this run, {meta['threads']} threads): read "
                     f"bandwidth {lim['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s; "
                     f"{lim['nnz_per_s'] / 1e9:.2f} G nonzero multiply-adds/s "
                     f"({lim['rate_kernel']})")
    lines += ["", "Times are median milliseconds (interquartile range); speedups are ratios of "
              "medians measured side by side in this run. FAILED = wrong result against the "
              "reference (not timed); skip = provider unavailable for this cell (see the end).",
              ""]
    return lines


def _targets_table(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    lines = ["## Targets", "", "| target | required | measured | status | detail |",
             "|---|---:|---:|---|---|"]
    for t in targets:
        meas = "" if t["measured"] is None else f"{t['measured']:.2f}×"
        lines.append(f"| {t['target']} | ≥ {t['required']}× | {meas} | **{t['status']}** | "
                     f"{t['detail']} |")
    return lines + [""]


def _spmm_tables(rows: list[dict], ours: set[str]) -> list[str]:
    spmm = [r for r in rows if r["kind"] == "spmm"]
    if not spmm:
        return []
    lines = []
    provs = list(dict.fromkeys(r["provider"] for r in spmm))
    fast = [p for p in provs if p not in ("dense", "dense-tf32", "reference")]
    mine = [p for p in fast if p in ours]
    for dtype in dict.fromkeys(r["dtype"] for r in spmm):
        for shape in dict.fromkeys(r["shape"] for r in spmm if r["dtype"] == dtype):
            cell_rows = [r for r in spmm if r["shape"] == shape and r["dtype"] == dtype]
            lines += [f"## Y = X Wᵀ + b, in×out = {shape}, {dtype}", ""]
            head = (["sparsity", "batch"] + [f"{p} ms" for p in provs]
                    + [f"{p} vs dense" for p in fast] + [f"{p} vs torch-csr" for p in mine])
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
            for sp, b in dict.fromkeys((r["sparsity"], r["batch"]) for r in cell_rows):
                by = {r["provider"]: r for r in cell_rows
                      if r["sparsity"] == sp and r["batch"] == b}
                vals = [f"{sp:g}", str(b)] + [_fmt_ms(by.get(p)) for p in provs]
                vals += [_fmt_x(by[p]["speedup_vs_dense"]) if p in by else "" for p in fast]
                vals += [_fmt_x(by[p]["speedup_vs_torch_csr"]) if p in by else "" for p in mine]
                lines.append("| " + " | ".join(vals) + " |")
            lines.append("")
    return lines


def _train_table(rows: list[dict]) -> list[str]:
    part = [r for r in rows if r["kind"] == "train"]
    if not part:
        return []
    provs = list(dict.fromkeys(r["provider"] for r in part))
    head = (["model", "dtype", "sparsity", "batch"] + [f"{p} ms" for p in provs]
            + [f"{p} vs dense masked" for p in provs if p != "dense-masked"])
    lines = ["## Training step (forward + backward + Adam)", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for key in dict.fromkeys((r["shape"], r["dtype"], r["sparsity"], r["batch"]) for r in part):
        by = {r["provider"]: r for r in part
              if (r["shape"], r["dtype"], r["sparsity"], r["batch"]) == key}
        vals = [key[0], key[1], f"{key[2]:g}", str(key[3])] + [_fmt_ms(by.get(p)) for p in provs]
        vals += [_fmt_x(by[p]["speedup_vs_dense"]) if p in by else ""
                 for p in provs if p != "dense-masked"]
        lines.append("| " + " | ".join(vals) + " |")
    return lines + [""]


def _ticket_tables(rows: list[dict]) -> list[str]:
    part = [r for r in rows if r["kind"] == "ticket"]
    lines = []
    for name in dict.fromkeys(r["ticket"] for r in part):
        for dtype in dict.fromkeys(r["dtype"] for r in part if r["ticket"] == name):
            mine = [r for r in part if r["ticket"] == name and r["dtype"] == dtype]
            first = mine[0]
            provs = [p for p in dict.fromkeys(r["provider"] for r in mine) if p != FLOOR]
            has_floor = any(r["provider"] == FLOOR for r in mine)
            ratios = [(a, b) for a, b in TICKET_RATIOS if a in provs and b in provs]
            lines += [f"## Ticket {name}: {first['shape']}, {100 * first['density']:.1f}% of "
                      f"weights remaining ({first['nnz']} nonzeros), {dtype}, forward (no grad)",
                      ""]
            head = (["batch"] + [f"{p} ms" for p in provs] + (["floor ms"] if has_floor else [])
                    + [f"{a} vs {b}" for a, b in ratios]
                    + ([f"{p} / floor" for p in TICKET_FLOOR_COLUMNS if p in provs]
                       if has_floor else []))
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
            for b in dict.fromkeys(r["batch"] for r in mine):
                by = {r["provider"]: r for r in mine if r["batch"] == b}
                vals = [str(b)] + [_fmt_ms(by.get(p)) for p in provs]
                if has_floor:
                    vals.append(_fmt_ms(by.get(FLOOR)))
                vals += [_fmt_x(_ratio(by, a, c)) for a, c in ratios]
                if has_floor:
                    vals += [_fmt_x(_ratio(by, FLOOR, p)) for p in TICKET_FLOOR_COLUMNS
                             if p in provs]
                lines.append("| " + " | ".join(vals) + " |")
            lines.append("")
            acc = {r["provider"]: r["accuracy"] for r in mine if r.get("accuracy") is not None}
            if acc:
                lines += ["MNIST test accuracy: " + ", ".join(
                    f"{p} {100 * a:.2f}%" for p, a in acc.items()), ""]
            floors = [r for r in mine if r["provider"] == FLOOR]
            if floors:
                lines += [f"Floor: the machine's limit for this network ({floors[-1]['variant']} "
                          f"at batch {floors[-1]['batch']}: {floors[-1]['reason']}); "
                          "`X / floor` = how many times the floor a provider takes (below 1× "
                          "would mean the probes underestimate this machine).", ""]
    return lines


def _notes(rows: list[dict], descriptions: dict[str, str]) -> list[str]:
    lines = []
    notes: dict = {}
    for r in rows:
        if r["status"] != "ok":
            key = (r.get("ticket"), r["provider"], r["status"], r["reason"])
            notes[key] = notes.get(key, 0) + 1
    if notes:
        lines += ["## Failed and skipped", "", "| ticket | provider | status | cells | reason |",
                  "|---|---|---|---:|---|"]
        for (ticket, p, s, reason), n in notes.items():
            lines.append(f"| {ticket or ''} | {p} | {s} | {n} | "
                         f"{str(reason).replace('|', '/')} |")
        lines.append("")
    used = [p for p in dict.fromkeys(r["provider"] for r in rows) if p in descriptions]
    if used:
        lines += ["## Providers", ""] + [f"- **{p}**: {descriptions[p]}" for p in used] + [""]
    return lines


def to_markdown(meta: dict, rows: list[dict], targets: list[dict],
                descriptions: dict[str, str], ours: set[str]) -> str:
    """The human report: header, targets, one table per spmm shape/dtype, training step, one
    table per ticket/dtype, failed/skipped providers with reasons, provider descriptions."""
    lines = (_header(meta) + _targets_table(targets) + _spmm_tables(rows, ours)
             + _train_table(rows) + _ticket_tables(rows) + _notes(rows, descriptions))
    return "\n".join(lines)


def plot_speedups(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per spmm shape and dtype: speedup vs dense over sparsity, one panel per batch."""
    import matplotlib  # heavy (and only needed for plots): imported when plotting
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    spmm = [r for r in rows if r["kind"] == "spmm" and r["status"] == "ok"]
    for dtype in dict.fromkeys(r["dtype"] for r in spmm):
        for shape in dict.fromkeys(r["shape"] for r in spmm if r["dtype"] == dtype):
            part = [r for r in spmm if r["shape"] == shape and r["dtype"] == dtype
                    and r["speedup_vs_dense"] is not None and r["provider"] != "dense"]
            if not part:
                continue
            batches = sorted(dict.fromkeys(r["batch"] for r in part))
            fig, axes = plt.subplots(1, len(batches), figsize=(3.6 * len(batches), 3.4),
                                     squeeze=False, sharey=True)
            for ax, b in zip(axes[0], batches):
                for prov in dict.fromkeys(r["provider"] for r in part):
                    pts = sorted((r["sparsity"], r["speedup_vs_dense"]) for r in part
                                 if r["batch"] == b and r["provider"] == prov)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.set_yscale("log")
                ax.set_title(f"batch {b}")
                ax.set_xlabel("sparsity")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][0].set_ylabel("speedup vs dense masked (×)")
            axes[0][-1].legend(fontsize=7)
            fig.suptitle(f"Y = X Wᵀ + b, in×out = {shape}, {dtype}")
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            plt.close(fig)
            path = out_dir / f"speedup_{shape}_{dtype}.png"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    return paths


def write_outputs(out_dir: Path, meta: dict, rows: list[dict], targets: list[dict],
                  descriptions: dict[str, str], ours: set[str], plots: bool = True) -> list[Path]:
    """results.json / results.csv / results.md (+ PNGs) under out_dir; returns the paths."""
    out_dir = Path(out_dir)
    doc = json.dumps(dict(meta=meta, rows=rows, targets=targets), indent=1,
                     default=_json_default)
    files = [out_dir / "results.json", out_dir / "results.csv", out_dir / "results.md"]
    atomic_write_bytes(files[0], doc.encode())
    atomic_write_bytes(files[1], to_csv(rows).encode())
    atomic_write_bytes(files[2], to_markdown(meta, rows, targets, descriptions, ours).encode())
    if plots:
        files += plot_speedups(rows, out_dir)
    return files
