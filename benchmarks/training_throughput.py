"""Training throughput: lth_sparse's in-memory loop vs a DataLoader loop with per-sample transforms.

The "seed walkthrough" style (torchvision MNIST + ToTensor/Normalize per sample + DataLoader,
batch 60) is what most LTH code does; lth_sparse indexes tensors that were loaded once. Both train
a pruned LeNet-300-100 (torch.nn.utils.prune masks, Adam lr 1.2e-3, batch 60) and evaluate on
validation (5K) and test (10K) every --eval-every iterations; both are timed side by side in one
process. Writes a markdown table (and JSON) under --out-dir.

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
from lth_sparse.errors import ConfigError
from lth_sparse.fileio import atomic_write_bytes, atomic_write_json
from lth_sparse.lottery.config import TrainConfig
from lth_sparse.lottery.data import STATS, load_mnist, resolve_data_dir
from lth_sparse.lottery.models import MLP
from lth_sparse.lottery.pruning import get_params, prune_round
from lth_sparse.lottery.training import train

RATES = {"fc1": 0.2, "fc2": 0.2, "fc3": 0.1}


def pruned_lenet(seed=0) -> MLP:
    model = MLP(seed=seed)
    prune_round(model, "layerwise", RATES)
    return model


def dataloader_loop(data_dir: Path, iterations: int, eval_every: int) -> float:
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
    model = pruned_lenet()
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


def in_memory_loop(data, iterations: int, eval_every: int) -> float:
    """Seconds of lth_sparse.lottery.training.train's loop (steps + evaluations at 0 and every N; its
    closing train-set accuracy pass is outside the loop and not counted, as in the other loop)."""
    model = pruned_lenet()
    cfg = TrainConfig(iterations=iterations, eval_every=eval_every)
    return train(model, data, cfg, data_seed=0, progress=False, snapshot=get_params).wall_time_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
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
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternate so drifting machine load hits both alike
        theirs.append(dataloader_loop(data_dir, args.iterations, args.eval_every))
        ours.append(in_memory_loop(data, args.iterations, args.eval_every))
    ms = lambda xs: 1e3 * statistics.median(xs) / args.iterations
    spread = lambda xs: f"{1e3 * min(xs) / args.iterations:.2f}-{1e3 * max(xs) / args.iterations:.2f}"
    sha = state.label
    cpu = cpu_model()
    ratio = statistics.median(theirs) / statistics.median(ours)
    table = "\n".join([
        "| loop | ms/iteration (median) | min-max | iterations/s |",
        "|---|---:|---:|---:|",
        f"| DataLoader + per-sample transforms (seed style) | {ms(theirs):.2f} | {spread(theirs)} | "
        f"{1e3 / ms(theirs):.0f} |",
        f"| lth_sparse in-memory tensors | {ms(ours):.2f} | {spread(ours)} | {1e3 / ms(ours):.0f} |",
        f"| **speedup** | **{ratio:.1f}x** | | |",
    ])
    header = (f"# Training throughput, LeNet-300-100 (pruned 1 round), batch 60, Adam\n\n"
              f"Command: `python {' '.join(['benchmarks/training_throughput.py', *sys.argv[1:]])}`  \n"
              f"Machine: {cpu}, {args.threads} threads; torch {torch.__version__}; git {sha}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}  \n"
              f"{args.iterations} iterations per run, evaluation (5K val + 10K test) at iteration 0 "
              f"and every {args.eval_every} iterations included, {args.repeats} alternating runs each.\n\n")
    atomic_write_bytes(args.out_dir / "training_throughput.md", (header + table + "\n").encode())
    atomic_write_json(args.out_dir / "training_throughput.json", (
        {"dataloader_s": theirs, "in_memory_s": ours, "iterations": args.iterations,
         "eval_every": args.eval_every, "threads": args.threads, "speedup": ratio,
         "git": sha, "git_dirty": state.dirty, "torch": torch.__version__, "cpu": cpu}))
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
