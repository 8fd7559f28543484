"""Training throughput: lth_sparse's in-memory loop vs a DataLoader loop with per-sample transforms.

The "seed walkthrough" style (torchvision MNIST + ToTensor/Normalize per sample + DataLoader,
batch 60) is what most LTH code does; lth_sparse indexes tensors that were loaded once. Each loop
trains a pruned LeNet-300-100 (torch.nn.utils.prune masks, Adam lr 1.2e-3, batch 60) and
evaluates on validation (5K) and test (10K) every --eval-every iterations; all are timed side by
side in one process, for each --rounds-pruned (20% per round, output layer 10%: 1 round = 80%
of the weights, 10 rounds = 10.7%). The in-memory loop runs twice: trained dense (torch Adam on
the masked model) and trained by the fused sparse step (lth_sparse.bridge.trainers), which is
what find-ticket's default `--train-backend auto` picks below the machine's break-even density.
Writes a markdown table (and JSON) under --out-dir.

    python benchmarks/training_throughput.py --data-dir ../shared/data --iterations 1000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lth_sparse.bench.machine import check_clean_for_results, cpu_model, git_state
from lth_sparse.bridge.trainers import trainer_factory
from lth_sparse.errors import ConfigError
from lth_sparse.fileio import atomic_write_bytes, atomic_write_json
from lth_sparse.lottery.config import TrainConfig
from lth_sparse.lottery.data import STATS, load_mnist, resolve_data_dir
from lth_sparse.lottery.models import MLP
from lth_sparse.lottery.pruning import get_params, prune_round
from lth_sparse.lottery.training import train

RATES = {"fc1": 0.2, "fc2": 0.2, "fc3": 0.1}


def pruned_lenet(rounds: int, seed=0) -> MLP:
    model = MLP(seed=seed)
    for _ in range(rounds):
        prune_round(model, "layerwise", RATES)
    return model


def dataloader_loop(data_dir: Path, iterations: int, eval_every: int, rounds: int) -> float:
    """Seconds for `iterations` steps of the DataLoader + per-sample-transform loop, evals included."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    mean, std = STATS["mnist"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    full = datasets.MNIST(str(data_dir), train=True, download=False, transform=tf)
    test = datasets.MNIST(str(data_dir), train=False, download=False, transform=tf)
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
    train_set, val_set = Subset(full, perm[5000:]), Subset(full, perm[:5000])
    loader = DataLoader(train_set, batch_size=60, shuffle=True, drop_last=True)
    model = pruned_lenet(rounds)
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)

    def evaluate(ds):
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(ds, batch_size=1000):
                correct += (model(x).argmax(1) == y).sum().item()
        model.train()
        return correct / len(ds)

    it = 0
    start = time.perf_counter()
    evaluate(val_set)  # lth_sparse's loop also evaluates at iteration 0
    evaluate(test)
    while it < iterations:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it % eval_every == 0:
                evaluate(val_set)
                evaluate(test)
            if it == iterations:
                break
    return time.perf_counter() - start


def in_memory_loop(data, iterations: int, eval_every: int, rounds: int, backend: str) -> float:
    """Seconds of lth_sparse.lottery.training.train's loop (steps + evaluations at 0 and every N; its
    closing train-set accuracy pass is outside the loop and not counted, as in the other loop).
    backend: "dense" (torch Adam on the masked model) or "sparse" (the fused sparse step)."""
    model = pruned_lenet(rounds)
    cfg = TrainConfig(iterations=iterations, eval_every=eval_every)
    factory = trainer_factory(backend, log=lambda msg: None)
    return train(model, data, cfg, data_seed=0, progress=False, snapshot=get_params,
                 trainer_factory=factory).wall_time_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
    ap.add_argument("--rounds-pruned", default="1,10",
                    help="comma-separated pruning rounds of the trained network (default 1,10)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into benchmarks/results/ from a git tree with uncommitted changes")
    args = ap.parse_args(argv)
    state = git_state()
    try:
        check_clean_for_results(args.out_dir, state, args.allow_dirty)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir)
    data = load_mnist(data_dir)
    rounds_list = [int(r) for r in args.rounds_pruned.split(",")]
    loops = ("dataloader", "dense", "sparse")
    times = {(r, name): [] for r in rounds_list for name in loops}
    for _ in range(args.repeats):  # alternate so drifting machine load hits every loop alike
        for r in rounds_list:
            times[(r, "dataloader")].append(dataloader_loop(data_dir, args.iterations,
                                                            args.eval_every, r))
            for backend in ("dense", "sparse"):
                times[(r, backend)].append(in_memory_loop(data, args.iterations, args.eval_every,
                                                          r, backend))
    ms = lambda xs: 1e3 * statistics.median(xs) / args.iterations
    spread = lambda xs: f"{1e3 * min(xs) / args.iterations:.2f}-{1e3 * max(xs) / args.iterations:.2f}"
    sha = state.label
    cpu = cpu_model()
    labels = {"dataloader": "DataLoader + per-sample transforms (seed style)",
              "dense": "lth_sparse in-memory tensors, dense masked training",
              "sparse": "lth_sparse in-memory tensors, fused sparse step"}
    lines = ["| % weights remaining | loop | ms/iteration (median) | min-max | speedup vs DataLoader |",
             "|---:|---|---:|---:|---:|"]
    speedups = {}
    for r in rounds_list:
        remaining = 100 * pruned_lenet(r).layers[0].weight_mask.mean().item()
        base = statistics.median(times[(r, "dataloader")])
        for name in loops:
            xs = times[(r, name)]
            speedups[f"{r}:{name}"] = base / statistics.median(xs)
            lines.append(f"| {remaining:.1f} | {labels[name]} | {ms(xs):.2f} | {spread(xs)} | "
                         f"{base / statistics.median(xs):.1f}x |")
    table = "\n".join(lines)
    header = (f"# Training throughput, pruned LeNet-300-100, batch 60, Adam\n\n"
              f"Command: `python {' '.join(['benchmarks/training_throughput.py', *sys.argv[1:]])}`  \n"
              f"Machine: {cpu}, {args.threads} threads; torch {torch.__version__}; git {sha}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}  \n"
              f"{args.iterations} iterations per run, evaluation (5K val + 10K test) at iteration 0 "
              f"and every {args.eval_every} iterations included, {args.repeats} alternating runs "
              f"of each loop. % remaining is fc1's (fc3 is pruned at half the rate).\n\n")
    atomic_write_bytes(args.out_dir / "training_throughput.md", (header + table + "\n").encode())
    atomic_write_json(args.out_dir / "training_throughput.json", (
        {"seconds": {f"{r}:{name}": xs for (r, name), xs in times.items()},
         "speedup_vs_dataloader": speedups, "iterations": args.iterations,
         "eval_every": args.eval_every, "threads": args.threads,
         "git": sha, "git_dirty": state.dirty, "torch": torch.__version__, "cpu": cpu}))
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
