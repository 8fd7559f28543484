"""The project's speed targets, evaluated over a run's rows.

A target is a ratio baseline time / contender time measured side by side in one run (never an
absolute time). Over a list of batches every batch must meet it: the worst batch counts, and
every batch's ratio is shown beside it. Status: met, missed, or not measured (no successful
side-by-side pair in this run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

OURS_TRAIN = ("sparse-cpu", "sparse-triton")
# a ticket "at 3.6% remaining" is any ticket whose remaining fraction is within this of 3.6%
REMAINING_SLACK = 0.005


@dataclass(frozen=True)
class SpeedTarget:
    """baseline median / contender median >= need (or > need when strict) at every batch.

    kind: "spmm", "train" or "ticket". contender None: the fastest of this package's
    providers in the cell. batches: a tuple of batch sizes, or ("ge", n) for every batch >= n.
    shape/sparsity select spmm/train cells; remaining (fraction of weights kept) restricts a
    ticket target to tickets at that sparsity level; dtype: the dtype compared.
    """
    label: str
    kind: str
    baseline: str
    need: float
    batches: tuple
    shape: str | None = None
    sparsity: float | None = None
    contender: str | None = None
    remaining: float | None = None
    dtype: str = "fp32"
    strict: bool = False

    def takes_batch(self, batch: int) -> bool:
        if self.batches and self.batches[0] == "ge":
            return batch >= self.batches[1]
        return batch in self.batches


CPU_TARGETS = [
    SpeedTarget("4096x4096 90% batch 1 vs dense", "spmm", "dense", 3.5, (1,), "4096x4096", 0.9),
    SpeedTarget("4096x4096 90% batch 1 vs torch.sparse (fastest call form)", "spmm",
                "torch-csr", 2.0, (1,), "4096x4096", 0.9),
    SpeedTarget("4096x4096 90% batch 64 vs dense", "spmm", "dense", 3.0, (64,), "4096x4096",
                0.9),
    SpeedTarget("4096x4096 90% batch 64 vs torch.sparse", "spmm", "torch-csr", 1.5, (64,),
                "4096x4096", 0.9),
    SpeedTarget("4096x4096 90% batch 256 vs dense", "spmm", "dense", 2.5, (256,), "4096x4096",
                0.9),
    SpeedTarget("4096x4096 98% batch 1 vs dense", "spmm", "dense", 12.0, (1,), "4096x4096",
                0.98),
    SpeedTarget("train 784-4096-4096-10 90% batch 256 vs dense masked", "train", "dense-masked",
                2.0, (256,), "784-4096-4096-10", 0.9),
]
GPU_TARGETS = [
    SpeedTarget("4096x4096 90% bf16 batch 1-16 vs dense bf16", "spmm", "dense", 2.5,
                tuple(range(1, 17)), "4096x4096", 0.9, dtype="bf16"),
    SpeedTarget("4096x4096 90% bf16 batch 1-16 vs torch.sparse", "spmm", "torch-csr", 3.0,
                tuple(range(1, 17)), "4096x4096", 0.9, dtype="bf16"),
    SpeedTarget("4096x4096 98% bf16 batch >= 1024 vs dense bf16", "spmm", "dense", 1.5,
                ("ge", 1024), "4096x4096", 0.98, dtype="bf16"),
    SpeedTarget("train 784-4096-4096-10 95% bf16 batch 256 faster than dense masked", "train",
                "dense-masked", 1.0, (256,), "784-4096-4096-10", 0.95, dtype="bf16",
                strict=True),
]
# The whole-ticket comparison (CPU, fp32), per ticket; lth_sparse is the SparseMLP.
TICKET_TARGETS = [
    SpeedTarget("batch 1 vs ONNX Runtime", "ticket", "onnxruntime", 2.5, (1,),
                contender="lth_sparse"),
    SpeedTarget("batch 1 vs torch dense (mask baked in)", "ticket", "torch-dense", 6.0, (1,),
                contender="lth_sparse"),
    SpeedTarget("batch 16/64/256/1000 vs ONNX Runtime", "ticket", "onnxruntime", 2.0,
                (16, 64, 256, 1000), contender="lth_sparse"),
    SpeedTarget("batch 10000 vs ONNX Runtime", "ticket", "onnxruntime", 1.5, (10000,),
                contender="lth_sparse"),
    SpeedTarget("3.6% remaining, batch 1 vs ONNX Runtime", "ticket", "onnxruntime", 5.0, (1,),
                contender="lth_sparse", remaining=0.036),
    # "within 1.3x or faster": Python engine time / C runtime time >= 1 / 1.3
    SpeedTarget("C runtime vs Python engine, batch 1 (within 1.3x or faster)", "ticket",
                "lth_sparse", round(1 / 1.3, 3), (1,), contender="c-runtime"),
]
# The layer-level target a ticket run also measures (one spmm cell, see suite.py).
TICKET_LAYER_TARGETS = [CPU_TARGETS[1]]


def _ratios(target: SpeedTarget, rows: list[dict], ours: set[str]) -> list[tuple]:
    """[(ratio, batch, contender detail)] of each batch with a side-by-side pair."""
    cells = [r for r in rows if r["kind"] == target.kind and r["status"] == "ok"
             and target.takes_batch(r["batch"])
             and (target.shape is None or r["shape"] == target.shape)
             and (target.sparsity is None or abs(r["sparsity"] - target.sparsity) < 1e-9)]
    out = []
    for batch in sorted({r["batch"] for r in cells if r["dtype"] == target.dtype}):
        cell = [r for r in cells if r["batch"] == batch and r["dtype"] == target.dtype]
        bases = [r for r in cell if r["provider"] == target.baseline]
        note = ""
        if not bases and target.baseline == "torch-csr" and target.dtype != "fp32":
            # torch.sparse may not support bf16 here: its fp32 time is the best it can do
            bases = [r for r in cells if r["batch"] == batch and r["provider"] == "torch-csr"
                     and r["dtype"] == "fp32"]
            note = f" (torch-csr in fp32: no {target.dtype} support)"
        wanted = {target.contender} if target.contender else ours
        mine = [r for r in cell if r["provider"] in wanted]
        if not bases or not mine:
            continue
        best = min(mine, key=lambda r: r["median_ms"])
        out.append((bases[0]["median_ms"] / best["median_ms"], batch, best["provider"] + note))
    return out


def evaluate_target(target: SpeedTarget, rows: list[dict], ours: set[str]) -> dict:
    """{target, required, measured (worst ratio or None), status, detail} of one target."""
    ratios = _ratios(target, rows, ours)
    if not ratios:
        return dict(target=target.label, required=target.need, measured=None,
                    status="not measured",
                    detail="no successful side-by-side measurement in this run")
    worst = min(ratios)
    met = worst[0] > target.need if target.strict else worst[0] >= target.need
    detail = f"worst batch {worst[1]}, {worst[2]}"
    if len(ratios) > 1:
        detail += "; " + ", ".join(f"batch {b}: {r:.2f}x" for r, b, _ in ratios)
    return dict(target=target.label, required=target.need, measured=round(worst[0], 3),
                status="met" if met else "missed", detail=detail)


def evaluate_targets(rows: list[dict], device: str, ours: Iterable[str]) -> list[dict]:
    """The grid targets of `device` (CPU or GPU list) over spmm/train rows.

    ours: names of this package's spmm providers (the best of them is the contender).
    """
    targets = GPU_TARGETS if device == "cuda" else CPU_TARGETS
    mine = set(ours) | set(OURS_TRAIN)
    return [evaluate_target(t, rows, mine) for t in targets]


def evaluate_ticket_targets(rows: list[dict], ours: Iterable[str] = ()) -> list[dict]:
    """TICKET_TARGETS for each ticket in `rows` (labels prefixed with the ticket and its %
    remaining; the 3.6% target only for tickets at that level), plus TICKET_LAYER_TARGETS when
    the run measured that spmm cell."""
    out = []
    tickets = list(dict.fromkeys(r["ticket"] for r in rows if r["kind"] == "ticket"))
    for name in tickets:
        mine = [r for r in rows if r["kind"] == "ticket" and r["ticket"] == name]
        remaining = mine[0]["density"]
        for t in TICKET_TARGETS:
            if t.remaining is not None and abs(remaining - t.remaining) > REMAINING_SLACK:
                continue
            result = evaluate_target(t, mine, set())
            result["target"] = f"{name} ({100 * remaining:.1f}% remaining): {t.label}"
            out.append(result)
    for t in TICKET_TARGETS:
        if t.remaining is not None and tickets and not any(
                abs(r["density"] - t.remaining) <= REMAINING_SLACK
                for r in rows if r["kind"] == "ticket"):
            out.append(dict(target=t.label, required=t.need, measured=None,
                            status="not measured",
                            detail=f"no ticket at {100 * t.remaining:.1f}% remaining in this "
                                   "run (pass one to --ticket)"))
    if any(r["kind"] == "spmm" for r in rows):
        out += [evaluate_target(t, rows, set(ours)) for t in TICKET_LAYER_TARGETS]
    return out


def format_targets(targets: list[dict]) -> str:
    """The targets as printed lines ('' when there are none)."""
    if not targets:
        return ""
    lines = ["targets:"]
    for t in targets:
        meas = "n/a" if t["measured"] is None else f"{t['measured']:.2f}x"
        lines.append(f"  [{t['status']:>12}] {t['target']}: {meas} (need >= {t['required']}x; "
                     f"{t['detail']})")
    return "\n".join(lines)
