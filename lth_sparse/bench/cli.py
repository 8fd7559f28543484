"""The bench command line: `lth-sparse bench ...` (lth_sparse.cli registers these flags through
`add_bench_arguments` and runs `run_bench_command`) and `python -m lth_sparse.bench ...`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from lth_sparse.bench.config import (
    COLD_CACHE_BYTES,
    DEFAULT_BATCHES,
    DEFAULT_DTYPES,
    DEFAULT_SHAPES,
    DEFAULT_SPARSITIES,
    DEFAULT_TICKET_BATCHES,
    DEFAULT_TRAIN_BATCHES,
    DEFAULT_TRAIN_MODELS,
    DEFAULT_TRAIN_SPARSITIES,
    QUICK,
    BenchConfig,
    parse_dtype_name,
    parse_list,
    parse_model,
    parse_positive_int,
    parse_shape,
    parse_sparsity,
)
from lth_sparse.bench.providers import default_providers
from lth_sparse.bench.suite import run_benchmarks
from lth_sparse.bench.targets import format_targets
from lth_sparse.errors import ConfigError, LthSparseError


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the bench flags on `parser` (`lth-sparse bench` and `-m lth_sparse.bench`)."""
    a = parser.add_argument
    a("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    a("--providers", default=None,
      help="comma-separated spmm providers (default: all available for the device): "
           + ", ".join(default_providers()))
    a("--shapes", default=None,
      help=f"comma-separated in_features x out_features (default {DEFAULT_SHAPES})")
    a("--sparsities", default=None,
      help=f"fractions of zero weights (default {DEFAULT_SPARSITIES})")
    a("--batches", default=None,
      help=f"batch sizes (default cpu {DEFAULT_BATCHES['cpu']}; cuda {DEFAULT_BATCHES['cuda']}; "
           f"with --ticket {DEFAULT_TICKET_BATCHES})")
    a("--dtype", default=None,
      help="comma-separated dtypes among fp32, bf16, fp16, fp64 (default cpu fp32; cuda fp32,bf16)")
    a("--mode", choices=("inference", "train", "all"), default="all",
      help="spmm grid, training step, or both (default all)")
    a("--train-models", default=None,
      help=f"MLP layer sizes for the training step (default {DEFAULT_TRAIN_MODELS})")
    a("--train-sparsities", default=None,
      help=f"sparsities for the training step (default {DEFAULT_TRAIN_SPARSITIES['cpu']})")
    a("--train-batches", default=None,
      help=f"batch sizes for the training step (default {DEFAULT_TRAIN_BATCHES})")
    a("--ticket", nargs="+", default=None, metavar="PATH",
      help="compare exported ticket files end to end instead of the grids: torch dense (mask "
           "baked in), ONNX Runtime, torch.sparse chain, lth_sparse, the C runtime, and the "
           "machine's floor, per --batches, with MNIST test accuracy; several files in one run")
    a("--runtime", default=None, metavar="PATH",
      help="the lth-sparse-run binary for --ticket (default: $LTH_SPARSE_RUNTIME, PATH, then "
           "build/**/lth-sparse-run)")
    a("--data-dir", default=None,
      help="MNIST folder for --ticket accuracy (default $LTH_SPARSE_DATA)")
    a("--quick", action="store_true", help="a tiny grid (seconds): for tests and smoke runs")
    a("--repeats", type=int, default=None,
      help="timed samples per cell (default: as many as fit --budget)")
    a("--budget", type=float, default=None,
      help="seconds of timing per cell when --repeats is not given (default cpu 0.25, cuda 0.1, "
           "quick 0.02)")
    a("--threads", type=int, default=None, help="CPU threads (default: torch's current count)")
    a("--cache", choices=("auto", "hot", "cold"), default="auto",
      help="CPU: evict caches before each timed call (cold), never (hot), or for weights "
           f"> {COLD_CACHE_BYTES >> 20} MiB (auto, default)")
    a("--no-cuda-graphs", action="store_true", help="time ticket forwards without CUDA graphs")
    a("--no-plots", action="store_true", help="skip the PNG plots")
    a("--seed", type=int, default=0, help="seed of the random weights, masks and inputs")
    a("--out-dir", default=None,
      help="where to write results.{json,csv,md} and plots "
           "(default benchmarks/results/<machine-tag>/<mode-dtypes|quick|ticket-NAME>)")
    a("--allow-dirty", action="store_true",
      help="write into benchmarks/results/ even from a git tree with uncommitted changes "
           "(refused by default: committed numbers must match the commit they name)")


def bench_config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed bench flags into a BenchConfig (raises ConfigError on bad values)."""
    dev, quick = args.device, args.quick

    def pick(value, quick_default, default):
        return value if value is not None else (quick_default if quick else default)

    cfg = BenchConfig(device=dev, mode=args.mode, tickets=list(args.ticket or []),
                      runtime=args.runtime, data_dir=args.data_dir, quick=quick,
                      repeats=args.repeats, threads=args.threads, cache=args.cache,
                      cuda_graphs=not args.no_cuda_graphs, out_dir=args.out_dir,
                      allow_dirty=args.allow_dirty, seed=args.seed, plots=not args.no_plots)
    cfg.shapes = parse_list(pick(args.shapes, QUICK["shapes"], DEFAULT_SHAPES), parse_shape,
                            "shapes")
    cfg.sparsities = parse_list(pick(args.sparsities, QUICK["sparsities"], DEFAULT_SPARSITIES),
                                parse_sparsity, "sparsities")
    batches = ((QUICK["ticket_batches"], DEFAULT_TICKET_BATCHES) if cfg.tickets
               else (QUICK["batches"], DEFAULT_BATCHES[dev]))
    cfg.batches = parse_list(pick(args.batches, *batches), parse_positive_int, "batches")
    cfg.dtypes = parse_list(args.dtype or DEFAULT_DTYPES[dev], parse_dtype_name, "dtype")
    cfg.train_models = parse_list(pick(args.train_models, QUICK["train_models"],
                                       DEFAULT_TRAIN_MODELS), parse_model, "train-models")
    cfg.train_sparsities = parse_list(pick(args.train_sparsities, QUICK["train_sparsities"],
                                           DEFAULT_TRAIN_SPARSITIES[dev]), parse_sparsity,
                                      "train-sparsities")
    cfg.train_batches = parse_list(pick(args.train_batches, QUICK["train_batches"],
                                        DEFAULT_TRAIN_BATCHES), parse_positive_int,
                                   "train-batches")
    if args.providers:
        cfg.providers = parse_list(args.providers, str, "providers")
    # do_bench takes many samples in 0.1 s on a GPU; CPU cells need longer for a stable median
    cfg.budget_s = args.budget if args.budget is not None else (
        0.02 if quick else 0.1 if dev == "cuda" else 0.25)
    if cfg.repeats is not None and cfg.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {cfg.repeats}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
    for path in cfg.tickets:
        if not Path(path).is_file():
            raise ConfigError(f"ticket file {path} does not exist; export one with "
                              "`lth-sparse export` or pass the right --ticket PATH")
    cfg.command = getattr(args, "command_line", None) or " ".join(
        shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    return cfg


def run_bench_command(args: argparse.Namespace) -> int:
    """Entry point of `lth-sparse bench`: runs, writes the outputs, prints targets. Returns 0."""
    result = run_benchmarks(bench_config_from_args(args))
    out = result["files"][0].parent if result["files"] else None
    failed = sorted({r["provider"] for r in result["rows"] if r["status"] == "FAILED"})
    print(f"bench: {len(result['rows'])} rows in {result['meta']['elapsed_s']}s -> {out}")
    if result["meta"]["machine"].get("git_dirty"):
        print("bench: measured from a DIRTY git tree (recorded as git_dirty in the results)")
    if failed:
        print(f"bench: FAILED correctness (not timed): {', '.join(failed)}")
    skipped = sorted({(r["provider"], r["reason"]) for r in result["rows"]
                      if r["status"] == "SKIPPED" and r["kind"] == "ticket"})
    for provider, reason in skipped:
        print(f"bench: SKIPPED {provider}: {reason}")
    text = format_targets(result["targets"])
    if text:
        print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lth_sparse.bench ...` (same flags as `lth-sparse bench`)."""
    parser = argparse.ArgumentParser(prog="python -m lth_sparse.bench",
                                     description="Benchmark the sparse kernels against dense "
                                                 "masked PyTorch, torch.sparse, scipy and ONNX "
                                                 "Runtime.")
    add_bench_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(shlex.quote(a) for a in ["python", "-m", "lth_sparse.bench",
                                                          *argv])
    try:
        return run_bench_command(args)
    except LthSparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
