"""Training-step speed: dense masked (prune hooks + torch Adam) vs the fused sparse step.

Two modes, both timed side by side in one process (medians; these machines are shared):

  step  ms/iteration of LeNet-300-100 at batch 60 across the IMP densities (100, 51.3, 21.1,
        10.7, 3.6, 1.9% remaining: rounds 0, 3, 7, 10, 15, 18 of layerwise 20%/10% pruning).
        Dense and sparse blocks alternate so that load changes hit both alike; a correctness
        check (one step from the same state) runs before any timing.
  imp   a full IMP run (default 15 rounds, fixed --iterations per round, no controls) with
        --train-backend auto vs dense on MNIST: total wall time and per-round accuracies.

    python benchmarks/training_step.py step --out-dir /tmp/ts
    python benchmarks/training_step.py imp --iterations 1000 --data-dir ../shared/data --out-dir /tmp/ts

Writes <mode>.json and <mode>.md (machine, versions, git SHA with a -dirty flag) to --out-dir.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lth_sparse.bench.machine import check_clean_for_results, git_state, machine_info
from lth_sparse.bridge.trainers import DenseStepper, SparseStepper, find_ticket
from lth_sparse.errors import ConfigError
from lth_sparse.fileio import atomic_write_bytes, atomic_write_json
from lth_sparse.lottery.config import ExperimentConfig, TrainConfig
from lth_sparse.lottery.data import Dataset, Split
from lth_sparse.lottery.models import MLP
from lth_sparse.lottery.pruning import prune_round
from lth_sparse.lottery.report import markdown_table
from lth_sparse.sparse.tolerances import TRAINING_TOLERANCES

RATES = {"fc1": 0.2, "fc2": 0.2, "fc3": 0.1}  # the paper's LeNet schedule
ROUNDS = (0, 3, 7, 10, 15, 18)  # 100, 51.3, 21.1, 10.7, 3.6, 1.9 % remaining


def pruned_lenet(rounds: int, seed: int = 0) -> MLP:
    model = MLP(seed=seed)
    for _ in range(rounds):
        prune_round(model, "layerwise", RATES)
    return model


def density(model: MLP) -> float:
    kept = sum(int(getattr(l, "weight_mask", torch.ones_like(l.weight)).sum()) for l in model.layers)
    return kept / sum(l.weight.numel() for l in model.layers)


def random_data(n: int = 55_000, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    small = Split(x[:1000], y[:1000])
    return Dataset(Split(x, y), small, small, "random")


def _weight(layer) -> torch.Tensor:
    return (layer.weight_orig * layer.weight_mask if hasattr(layer, "weight_mask")
            else layer.weight).detach()


def check_same_step(model_rounds: int, data: Dataset, cfg: TrainConfig) -> tuple[float, float]:
    """One step dense vs sparse from the same state: (max |difference| of the surviving weights,
    worst layer's normwise ||dw_dense - dw_sparse|| / ||dw_dense|| of the update)."""
    a, b = pruned_lenet(model_rounds), pruned_lenet(model_rounds)
    before = [_weight(la).clone() for la in a.layers]
    dense = DenseStepper(a, data, cfg, snapshot=lambda m: {})
    sparse = SparseStepper(b, data, cfg, snapshot=lambda m: {})
    idx = torch.arange(cfg.batch_size)
    dense.step(idx)
    sparse.step(idx)
    sparse.finish()
    max_abs, normwise = 0.0, 0.0
    for la, lb, w0 in zip(a.layers, b.layers, before):
        wa, wb = _weight(la), _weight(lb)
        max_abs = max(max_abs, float((wa - wb).abs().max()))
        normwise = max(normwise, float((wa - wb).norm() / (wa - w0).norm().clamp_min(1e-30)))
    return max_abs, normwise


def time_steps(stepper, idx_list) -> list[float]:
    out = []
    for idx in idx_list:
        t0 = time.perf_counter()
        stepper.step(idx)
        out.append(time.perf_counter() - t0)
    return out


def mode_step(args) -> dict:
    torch.set_num_threads(args.threads)
    data = random_data()
    cfg = TrainConfig(batch_size=60, lr=1.2e-3)
    g = torch.Generator().manual_seed(1)
    rows = []
    for r in ROUNDS:
        err, rel = check_same_step(r, data, cfg)
        if rel > TRAINING_TOLERANCES["one_step_update"].rtol:
            raise SystemExit(f"round {r}: dense and sparse updates disagree after one step "
                             f"(normwise {rel:.2e}, max |diff| {err:.2e})")
        dense = DenseStepper(pruned_lenet(r), data, cfg, snapshot=lambda m: {})
        sparse = SparseStepper(pruned_lenet(r), data, cfg, snapshot=lambda m: {},
                               threads=args.threads)
        times = {"dense": [], "sparse": []}
        for _ in range(args.repeats):
            for name, st in (("dense", dense), ("sparse", sparse)):
                idx = [torch.randint(0, len(data.train), (60,), generator=g)
                       for _ in range(args.steps + args.warmup)]
                times[name] += time_steps(st, idx)[args.warmup:]
        d_ms, s_ms = (1000 * statistics.median(times[k]) for k in ("dense", "sparse"))
        spread = {k: [1000 * statistics.quantiles(v, n=4)[0], 1000 * statistics.quantiles(v, n=4)[2]]
                  for k, v in times.items()}
        rows.append({"round": r, "pct_remaining": 100 * density(dense.model), "dense_ms": d_ms,
                     "sparse_ms": s_ms, "speedup": d_ms / s_ms, "iqr_ms": spread,
                     "max_abs_diff_one_step": err, "normwise_update_diff_one_step": rel})
        print(f"{rows[-1]['pct_remaining']:6.1f}% remaining: dense {d_ms:.3f} ms, fused sparse "
              f"{s_ms:.3f} ms ({d_ms / s_ms:.1f}x)", flush=True)
    table = markdown_table(
        ["% remaining", "dense masked ms/it", "fused sparse ms/it", "speedup"],
        [[f"{x['pct_remaining']:.1f}", f"{x['dense_ms']:.3f}", f"{x['sparse_ms']:.3f}",
          f"{x['speedup']:.1f}x"] for x in rows])
    return {"rows": rows, "table": table,
            "setup": {"batch": 60, "threads": args.threads, "steps": args.steps,
                      "repeats": args.repeats, "warmup": args.warmup}}


def mode_imp(args) -> dict:
    from lth_sparse.lottery.data import load_data_for

    torch.set_num_threads(args.threads)
    cfg0 = ExperimentConfig()
    cfg0.data.data_dir = args.data_dir
    data = load_data_for(cfg0)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("dense", "auto"):
            cfg = ExperimentConfig()
            cfg.data.data_dir = args.data_dir
            cfg.train.iterations, cfg.train.eval_every = args.iterations, args.eval_every
            cfg.train.backend = backend
            cfg.lottery.rounds, cfg.lottery.controls = args.rounds, ()
            runs = Path(tmp) / backend
            if backend == "auto":  # calibrate outside the timed region, and report it
                from lth_sparse.bridge.trainers import _threads, calibration_for
                shapes = [(300, 784), (100, 300), (10, 100)]
                cal = calibration_for(shapes, 60, _threads(), runs, log=lambda s: None)
                out["calibration"] = cal
            t0 = time.perf_counter()
            run = find_ticket(cfg, runs, data=data, progress=False, log=lambda s: None)
            wall = time.perf_counter() - t0
            out[backend] = {"wall_s": wall,
                            "rounds": [{"round": m["round"], **{k: m["ticket"].get(k) for k in (
                                "pct_remaining", "backend", "ms_per_iteration",
                                "early_stop_iteration", "test_acc_at_early_stop",
                                "final_test_acc")}} for m in run.all_metrics()]}
            print(f"{backend}: {wall:.1f} s", flush=True)
    rows = []
    for d, a in zip(out["dense"]["rounds"], out["auto"]["rounds"]):
        rows.append([str(d["round"]), f"{d['pct_remaining']:.1f}",
                     f"{100 * d['test_acc_at_early_stop']:.2f} ({d['early_stop_iteration']})",
                     f"{100 * a['test_acc_at_early_stop']:.2f} ({a['early_stop_iteration']})",
                     f"{d['ms_per_iteration']:.3f}", f"{a['ms_per_iteration']:.3f} {a['backend']}"])
    table = markdown_table(["round", "% remaining", "dense acc @ES (it)", "auto acc @ES (it)",
                            "dense ms/it", "auto ms/it backend"], rows)
    speed = out["dense"]["wall_s"] / out["auto"]["wall_s"]
    table += (f"\n\nwall time: dense {out['dense']['wall_s']:.1f} s, auto "
              f"{out['auto']['wall_s']:.1f} s ({speed:.2f}x)")
    out.update(table=table, setup={"iterations": args.iterations, "rounds": args.rounds,
                                   "eval_every": args.eval_every, "threads": args.threads})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("step", help="ms/iteration across densities")
    s.add_argument("--steps", type=int, default=100, help="timed steps per block")
    s.add_argument("--repeats", type=int, default=5, help="alternating dense/sparse blocks")
    s.add_argument("--warmup", type=int, default=10)
    i = sub.add_parser("imp", help="full IMP wall time, auto vs dense")
    i.add_argument("--iterations", type=int, default=1000, help="iterations per round")
    i.add_argument("--rounds", type=int, default=15)
    i.add_argument("--eval-every", type=int, default=500)
    i.add_argument("--data-dir", default=None, help="folder holding MNIST/raw")
    for q in (s, i):
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/training_step"))
        q.add_argument("--allow-dirty", action="store_true",
                       help="write into benchmarks/results/ from a git tree with uncommitted changes")
    args = p.parse_args(argv)
    try:  # committed numbers must match the commit they name
        check_clean_for_results(args.out_dir, git_state(), args.allow_dirty)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = mode_step(args) if args.mode == "step" else mode_imp(args)
    result["machine"] = machine_info("cpu")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out_dir / f"{args.mode}.json", result)
    m = result["machine"]
    md = (f"# Training step: dense masked vs fused sparse ({args.mode})\n\n"
          f"{m['cpu']}, {m['cores']} cores, {args.threads} threads, torch {m['torch']}, "
          f"lth_sparse {m['lth_sparse']} @ {m['git_sha']}, {m['date']}, load {m['load_average']}"
          f"\n\n{result['table']}\n")
    atomic_write_bytes(args.out_dir / f"{args.mode}.md", md.encode())
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
