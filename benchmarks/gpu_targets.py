"""The GPU issue's targets, evaluated from `lth-sparse bench` results; and the GPU check's report.

Pure Python (no torch) except `collect`'s optional merge through lth_sparse.bench. Used by
benchmarks/gpu_check.sh as

    python benchmarks/gpu_targets.py collect --work WORK --out OUT

which reads what the check's steps left in WORK (steps.tsv, logs/, parts/<step>/results.json,
copy_bandwidth.json), lays the results out as benchmarks/results/<gpu-tag>/<label>/ under
WORK/results, evaluates the targets and writes summary.md and gpu_check.json to WORK and OUT,
plus a selection of the results files to OUT (the device tool brings back 8 files at most).

Every target is evaluated from measured rows only: a number the bench did not produce is
"not measured", never estimated. Ratios are ratios of do_bench medians of one cell measured in
one process; a range of batches is met only if its worst batch meets it.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Sequence

BIG_SHAPE = "4096x4096"
TRAIN_MODEL = "784-4096-4096-10"
OURS_SPMM = ("triton",)                 # the bench's name for our CUDA spmm provider
ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
# The triton provider is timed with int32 CSR indices and indptr (bench's Problem.csr default).
INDEX_BYTES = 4
INDPTR_BYTES = 4

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"

# Files copied from WORK/results/<tag>/ to OUT/<tag>/ (with summary.md, gpu_check.json and the
# full tarball that makes 8, the device tool's limit on files brought back).
OUT_SELECTION = (
    ("inference-fp32-bf16", "results.json"),
    ("inference-fp32-bf16", "results.md"),
    ("inference-fp32-bf16", f"speedup_{BIG_SHAPE}_bf16.png"),
    ("ticket-*", "results.json"),
    ("train-bf16", "results.json"),
)


# ---------------------------------------------------------------------------- row lookups

def _ok(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("median_ms")]


def _same(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < 1e-9


def _cells(rows, kind: str, shape: str, sparsity: float, dtype: str, batch_ok) -> dict:
    """{batch: {provider: row}} of every row (any status) of one kind/shape/sparsity/dtype."""
    cells: dict = {}
    for r in rows:
        if (r.get("kind") == kind and r.get("shape") == shape and r.get("dtype") == dtype
                and _same(r.get("sparsity", -1), sparsity) and batch_ok(int(r["batch"]))):
            cells.setdefault(int(r["batch"]), {})[r["provider"]] = r
    return dict(sorted(cells.items()))


def _best_ours(by_provider: dict, names: Sequence[str]) -> dict | None:
    mine = [r for p, r in by_provider.items() if p in names and r.get("status") == "ok"]
    return min(mine, key=lambda r: r["median_ms"]) if mine else None


def _failed_note(by_batch: dict, names: Sequence[str]) -> str:
    bad = [f"batch {b}: {p} {r['status']} ({r.get('reason') or ''})".strip()
           for b, by in by_batch.items() for p, r in by.items()
           if p in names and r.get("status") != "ok"]
    return "; ".join(bad)


def _result(label, need, strict, per_batch, detail_empty, unit="x") -> dict:
    """per_batch: [(batch, value, text)] -> one target record (the worst batch decides)."""
    if not per_batch:
        return dict(target=label, required=need, strict=strict, measured=None, unit=unit,
                    status=NOT_MEASURED, detail=detail_empty, per_batch=[])
    worst = min(per_batch, key=lambda t: t[1])
    ok = worst[1] > need if strict else worst[1] >= need
    return dict(target=label, required=need, strict=strict, measured=round(worst[1], 4),
                unit=unit, status=MET if ok else MISSED,
                detail="; ".join(t[2] for t in per_batch) + f" (worst: batch {worst[0]})",
                per_batch=[dict(batch=b, value=round(v, 4)) for b, v, _ in per_batch])


# ---------------------------------------------------------------------------- targets

def spmm_min_bytes(row: dict, index_bytes: int = INDEX_BYTES,
                   indptr_bytes: int = INDPTR_BYTES) -> int:
    """Fewest bytes Y = X Wᵀ + b must move through device memory: the CSR arrays, X, the bias
    and Y, each once. Row fields: nnz, in_features, out_features, batch, dtype."""
    e = ELEMENT_BYTES[row["dtype"]]
    n_in, n_out, batch = int(row["in_features"]), int(row["out_features"]), int(row["batch"])
    return (int(row["nnz"]) * (e + index_bytes) + (n_out + 1) * indptr_bytes
            + batch * n_in * e + batch * n_out * e + n_out * e)


def spmm_ratio_target(rows, label, sparsity, batch_ok, baseline, need, dtype="bf16",
                      fallback_dtype: str | None = None) -> dict:
    """Baseline median / our best median per batch, at BIG_SHAPE. With `fallback_dtype`, a batch
    whose baseline has no successful `dtype` row uses the baseline's `fallback_dtype` row (its
    best effort: torch.sparse may not support bf16), and says so."""
    cells = _cells(rows, "spmm", BIG_SHAPE, sparsity, dtype, batch_ok)
    fallback = (_cells(rows, "spmm", BIG_SHAPE, sparsity, fallback_dtype, batch_ok)
                if fallback_dtype else {})
    per_batch = []
    for batch, by in cells.items():
        mine = _best_ours(by, OURS_SPMM)
        base = by.get(baseline)
        note = ""
        if (base is None or base.get("status") != "ok") and fallback_dtype:
            base = fallback.get(batch, {}).get(baseline)
            note = f", {baseline} in {fallback_dtype}: no {dtype} result"
        if mine is None or base is None or base.get("status") != "ok":
            continue
        ratio = base["median_ms"] / mine["median_ms"]
        per_batch.append((batch, ratio, f"batch {batch}: {ratio:.2f}x ({baseline} "
                                        f"{base['median_ms']:.4f} ms / {mine['provider']} "
                                        f"{mine['median_ms']:.4f} ms{note})"))
    failed = _failed_note(cells, OURS_SPMM)
    return _result(label, need, False, per_batch,
                   "no successful side-by-side measurement" + (f"; {failed}" if failed else ""))


def bandwidth_target(rows, label, copy_gbps: float | None, need=0.7, sparsity=0.9,
                     batch_ok=lambda b: 1 <= b <= 16, dtype="bf16") -> dict:
    """Our achieved bandwidth (spmm_min_bytes / median) over the measured copy bandwidth."""
    if not copy_gbps:
        return _result(label, need, False, [], "no copy bandwidth measured", unit="of copy")
    per_batch = []
    cells = _cells(rows, "spmm", BIG_SHAPE, sparsity, dtype, batch_ok)
    for batch, by in cells.items():
        mine = _best_ours(by, OURS_SPMM)
        if mine is None:
            continue
        gbps = spmm_min_bytes(mine) / (mine["median_ms"] * 1e-3) / 1e9
        frac = gbps / copy_gbps
        per_batch.append((batch, frac, f"batch {batch}: {gbps:.0f} GB/s = {100 * frac:.0f}% "
                                       f"of copy {copy_gbps:.0f} GB/s ({mine['provider']})"))
    failed = _failed_note(cells, OURS_SPMM)
    return _result(label, need, False, per_batch,
                   "no successful measurement" + (f"; {failed}" if failed else ""),
                   unit="of copy")


def ticket_target(rows, label, dtype="fp32", batch=1) -> dict:
    """Dense masked twin / sparse ticket forward at `batch` (both timed as CUDA graphs)."""
    cells = {}
    for r in rows:
        if r.get("kind") == "ticket" and int(r["batch"]) == batch:
            cells.setdefault(r["dtype"], {})[r["provider"]] = r
    per_batch = []
    others = []
    for d, by in cells.items():
        s, dm = by.get("sparse"), by.get("dense-masked")
        if not (s and dm and s.get("status") == "ok" and dm.get("status") == "ok"):
            continue
        ratio = dm["median_ms"] / s["median_ms"]
        graphs = "CUDA graphs both sides" if s.get("timer") == dm.get("timer") == "cuda-graph" \
            else f"timers: sparse {s.get('timer')}, dense {dm.get('timer')} (not both CUDA graphs)"
        text = (f"{d} batch {batch}: {ratio:.2f}x (dense masked {dm['median_ms']:.4f} ms / "
                f"sparse {s['median_ms']:.4f} ms; {graphs}; model {s['shape']} at sparsity "
                f"{s['sparsity']})")
        if d == dtype:
            per_batch.append((batch, ratio, text))
        else:
            others.append(text)
    res = _result(label, 1.0, True, per_batch, f"no successful {dtype} batch-{batch} pair")
    if others:
        res["detail"] += " | also " + "; ".join(others)
    return res


def train_target(rows, label, sparsity=0.95, batch=256, dtype="bf16") -> dict:
    """Dense masked training step / sparse training step (forward + backward + Adam)."""
    by = {r["provider"]: r for r in rows if r.get("kind") == "train"
          and r.get("shape") == TRAIN_MODEL and _same(r.get("sparsity", -1), sparsity)
          and int(r["batch"]) == batch and r.get("dtype") == dtype}
    dm = by.get("dense-masked")
    sparse = [r for p, r in by.items() if p.startswith("sparse-")]
    per_batch = []
    if dm and dm.get("status") == "ok":
        for s in sparse:
            if s.get("status") == "ok":
                ratio = dm["median_ms"] / s["median_ms"]
                per_batch.append((batch, ratio, f"{ratio:.2f}x (dense masked "
                                                f"{dm['median_ms']:.3f} ms / {s['provider']} "
                                                f"{s['median_ms']:.3f} ms)"))
    failed = "; ".join(f"{s['provider']} {s['status']} ({s.get('reason') or ''})"
                       for s in sparse if s.get("status") != "ok")
    return _result(label, 1.0, True, per_batch,
                   "no successful side-by-side measurement" + (f"; {failed}" if failed else ""))


def evaluate_targets(rows: Sequence[dict], copy_gbps: float | None) -> list[dict]:
    """The issue's GPU targets, in its order, from all result rows of the check."""
    small = lambda b: 1 <= b <= 16  # noqa: E731
    return [
        spmm_ratio_target(rows, f"{BIG_SHAPE} 90% bf16 batch 1-16 vs dense bf16 cuBLAS", 0.9,
                          small, "dense", 2.5),
        spmm_ratio_target(rows, f"{BIG_SHAPE} 90% bf16 batch 1-16 vs torch.sparse CSR", 0.9,
                          small, "torch-csr", 3.0, fallback_dtype="fp32"),
        bandwidth_target(rows, f"{BIG_SHAPE} 90% bf16 batch 1-16 achieved bandwidth vs copy "
                               "bandwidth", copy_gbps),
        spmm_ratio_target(rows, f"{BIG_SHAPE} 98% bf16 batch >= 1024 vs dense bf16", 0.98,
                          lambda b: b >= 1024, "dense", 1.5),
        ticket_target(rows, "LeNet ticket end to end, batch 1, vs dense masked (CUDA graphs) "
                            "faster"),
        train_target(rows, f"training step {TRAIN_MODEL} 95% bf16 batch 256 vs dense masked "
                           "faster"),
    ]


# ---------------------------------------------------------------------------- report

def format_required(t: dict) -> str:
    if t["unit"] == "of copy":
        return f"≥ {100 * t['required']:.0f}% of copy"
    return f"> {t['required']:g}×" if t["strict"] else f"≥ {t['required']:g}×"


def format_measured(t: dict) -> str:
    if t["measured"] is None:
        return NOT_MEASURED
    if t["unit"] == "of copy":
        return f"{100 * t['measured']:.0f}%"
    return f"{t['measured']:.2f}×"


def read_steps(path: Path) -> list[dict]:
    """steps.tsv lines: name, status, rc, seconds, budget, log (written by gpu_check.sh)."""
    steps = []
    if not path.exists():
        return steps
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 6 or parts[0] == "step":
            continue
        steps.append(dict(step=parts[0], status=parts[1], rc=parts[2], seconds=parts[3],
                          budget=parts[4], log=parts[5]))
    return steps


_AUTOTUNE = re.compile(r"finished after ([0-9.]+)s")


def autotune_seconds(log: Path) -> tuple[float, int]:
    """(seconds, runs) of Triton autotuning a log records (TRITON_PRINT_AUTOTUNING=1)."""
    try:
        found = [float(m) for m in _AUTOTUNE.findall(log.read_text(errors="replace"))]
    except OSError:
        return 0.0, 0
    return sum(found), len(found)


def junit_counts(path: Path) -> str | None:
    """'12 passed, 1 failed, 0 errors, 3 skipped' from a pytest --junitxml file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                           "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return (f"{passed} passed, {n['failures']} failed, {n['errors']} errors, "
            f"{n['skipped']} skipped")


def render_summary(steps: list[dict], targets: list[dict], info: dict) -> str:
    lines = ["# GPU check", ""]
    for key in ("gpu", "git_sha", "date", "torch", "triton", "copy_bandwidth", "results"):
        if info.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {info[key]}")
    lines += ["", "## Steps", "", "| step | status | rc | seconds | budget s | notes |",
              "|---|---|---:|---:|---:|---|"]
    for s in steps:
        lines.append(f"| {s['step']} | **{s['status']}** | {s['rc']} | {s['seconds']} | "
                     f"{s['budget']} | {s.get('notes', '')} |")
    lines += ["", "## Targets", "",
              "Ratios of do_bench medians measured side by side in one process; over a range of "
              "batches the worst batch decides. \"not measured\": the bench produced no such "
              "number in this check (nothing is estimated).", "",
              "| target | required | measured | status | per batch |", "|---|---:|---:|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {format_required(t)} | {format_measured(t)} | "
                     f"**{t['status']}** | {t['detail'].replace('|', '/')} |")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- collect

def _gpu_tag(name: str | None) -> str:
    # the folder rule of lth_sparse.bench.machine_tag for a CUDA device
    if not name:
        return "cuda-unknown"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"cuda-{slug[:48].strip('-')}"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def merge_grid(docs: list[dict], dest: Path) -> list[dict]:
    """One results folder (bench's layout) from several spmm-grid runs; returns the rows.

    A cell measured by two runs keeps the first run's rows (the parts overlap on purpose: the
    target cells run first, then the full grid). The files are written by lth_sparse.bench's own
    writer when it is importable, so the folder reads like any other bench output.
    """
    rows, seen = [], set()
    for doc in docs:
        for r in doc.get("rows", []):
            key = (r.get("kind"), r.get("shape"), r.get("sparsity"), r.get("batch"),
                   r.get("dtype"), r.get("provider"))
            if key not in seen:
                seen.add(key)
                rows.append(r)
    meta = dict(docs[0].get("meta", {}))
    dtypes = [d for d in ("fp32", "bf16", "fp16", "fp64")
              if any(d in doc.get("meta", {}).get("dtypes", []) for doc in docs)]
    meta.update(command=" ; ".join(doc.get("meta", {}).get("command", "?") for doc in docs),
                dtypes=dtypes or meta.get("dtypes", []),
                elapsed_s=round(sum(doc.get("meta", {}).get("elapsed_s", 0) for doc in docs), 1),
                parts=len(docs))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        from lth_sparse.bench.providers import default_providers
        from lth_sparse.bench.report import write_outputs
        from lth_sparse.bench.rows import add_speedups
        from lth_sparse.bench.ticket import DESCRIPTIONS
        from lth_sparse.bench.targets import evaluate_targets
        registry = default_providers()
        ours = {n for n, p in registry.items() if p.ours}
        add_speedups(rows)  # per cell; a cell's rows all come from one run
        targets = evaluate_targets(rows, "cuda", ours)
        descriptions = {n: p.description for n, p in registry.items()} | DESCRIPTIONS
        write_outputs(dest, meta, rows, targets, descriptions, ours, plots=True)
    except Exception as exc:  # bench moved or broke: keep the data, say so
        (dest / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows, targets=[]),
                                                      indent=1))
        (dest / "results.md").write_text(
            f"# merged GPU grid\n\nlth_sparse.bench's writer failed ({type(exc).__name__}: "
            f"{exc}); results.json holds the rows of {len(docs)} runs.\n")
    return rows


def collect(work: Path, out: Path) -> dict:
    """Lay out results, evaluate the targets, write summary.md + gpu_check.json (WORK and OUT)."""
    work, out = Path(work), Path(out)
    parts = work / "parts"
    steps = read_steps(work / "steps.tsv")
    bandwidth = _load(work / "copy_bandwidth.json")
    copy_gbps = bandwidth.get("gbps") if bandwidth else None

    grid_docs, other = [], {}
    for step in steps:
        doc = _load(parts / step["step"] / "results.json")
        if doc is None:
            continue
        if step["step"].startswith("grid"):
            grid_docs.append(doc)
        else:
            other[step["step"]] = (parts / step["step"], doc)
    all_docs = grid_docs + [d for _, d in other.values()]
    gpu = next((d["meta"]["machine"].get("gpu") for d in all_docs
                if d.get("meta", {}).get("machine", {}).get("gpu")), None)
    gpu = gpu or (bandwidth or {}).get("gpu")
    tag = _gpu_tag(gpu)
    results = work / "results" / tag

    rows: list[dict] = []
    if grid_docs:
        rows += merge_grid(grid_docs, results / "inference-fp32-bf16")
    for name, (src, doc) in other.items():
        label = {"train": "train-bf16"}.get(name)
        if name == "ticket":
            cfg_ticket = doc.get("meta", {}).get("config", {}).get("ticket") or "ticket"
            label = "ticket-" + Path(cfg_ticket).stem
        if label is None:
            continue
        shutil.copytree(src, results / label, dirs_exist_ok=True)
        rows += doc.get("rows", [])

    targets = evaluate_targets(rows, copy_gbps)
    for s in steps:
        notes = []
        log = Path(s["log"]) if s["log"] else None
        if log is not None and not log.is_absolute():
            log = work / log
        if log is not None:
            secs, runs = autotune_seconds(log)
            if runs:
                notes.append(f"Triton autotuning {secs:.0f} s in {runs} runs")
        if s["step"] == "cuda_tests":
            counts = junit_counts(work / "logs" / "cuda_tests.xml")
            if counts:
                notes.append(counts)
        s["notes"] = "; ".join(notes)

    machine = next((d["meta"]["machine"] for d in all_docs if d.get("meta", {}).get("machine")),
                   {})
    info = dict(gpu=gpu, git_sha=machine.get("git_sha"), date=machine.get("date"),
                torch=machine.get("torch"), triton=machine.get("triton"),
                copy_bandwidth=(f"{copy_gbps:.0f} GB/s (read + write, device-to-device copy of "
                                f"{bandwidth['buffer_bytes'] / 2**30:.1f} GiB, median)"
                                if copy_gbps else NOT_MEASURED),
                results=f"results/{tag}/ (benchmarks/results layout)")
    summary = render_summary(steps, targets, info)
    report = dict(info=info, tag=tag, steps=steps, targets=targets, copy_bandwidth=bandwidth)

    out.mkdir(parents=True, exist_ok=True)
    for folder in (work, out):
        (folder / "summary.md").write_text(summary)
        (folder / "gpu_check.json").write_text(json.dumps(report, indent=1))
    for label_glob, name in OUT_SELECTION:
        for src in sorted(results.glob(f"{label_glob}/{name}")):
            dest = out / tag / src.parent.name / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_targets.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("collect", help="lay out results, evaluate targets, write the summary")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report = collect(args.work, args.out)
    for t in report["targets"]:
        print(f"  [{t['status']:>12}] {t['target']}: {format_measured(t)} "
              f"(need {format_required(t)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
