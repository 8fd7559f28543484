"""`lth-sparse` command line: find-ticket, find-supermask, sweep, report, show, export,
train-ticket, bench, demo, info.

Every experiment option comes from the config dataclasses (lth_sparse.lottery.config): defaults, then a
--config file (JSON or TOML), then flags. Errors a user can cause print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from lth_sparse.errors import LthSparseError
from lth_sparse.lottery.config import ExperimentConfig, load_config_file, set_field

EXIT_USER_ERROR = 2


# -------------------------------------------------------------------------- config options

def add_config_arguments(parser: argparse.ArgumentParser, config_cls=ExperimentConfig,
                         hidden: frozenset[str] = frozenset()) -> None:
    """One flag per config field (--iterations, --rate, ...), grouped by section; `hidden`
    sections or "section.field" names get no flag."""
    shown_sections = [s for s in config_cls.SECTIONS if s not in hidden]
    parser.add_argument("--config", help="JSON or TOML file with sections "
                                          f"{', '.join(f'[{s}]' for s in shown_sections)}; "
                                          "flags override it")
    defaults = config_cls()
    for section in shown_sections:
        group = parser.add_argument_group(section)
        obj = getattr(defaults, section)
        for f in fields(obj):
            if f"{section}.{f.name}" in hidden:
                continue
            default = getattr(obj, f.name)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            flag = f.metadata.get("flag", f.name.replace("_", "-"))
            group.add_argument(f"--{flag}", dest=f"cfg:{section}.{f.name}",
                               default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=f"{f.metadata['help']} (default: {shown})")


def experiment_config_from_args(args: argparse.Namespace,
                                config_cls=ExperimentConfig) -> ExperimentConfig:
    """Defaults < --config file < flags; validated."""
    cfg = config_cls.from_dict(load_config_file(args.config)) if args.config else config_cls()
    for key, value in vars(args).items():
        if key.startswith("cfg:"):
            section, name = key[4:].split(".")
            set_field(getattr(cfg, section), section, name, value)
    return cfg.validate()


def _add_runs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where run directories live (default: $LTH_SPARSE_RUNS or ./runs)")


# -------------------------------------------------------------------------- commands

def cmd_find_ticket(args) -> int:
    from lth_sparse.bridge.trainers import find_ticket
    from lth_sparse.lottery.report import round_table

    cfg = experiment_config_from_args(args)
    run = find_ticket(cfg, args.runs_dir)
    print(f"\nrun {run.run_id} at {run.path}\n")
    print(round_table(run.all_metrics()))
    return 0


def cmd_find_supermask(args) -> int:
    from lth_sparse.lottery.report import round_table
    from lth_sparse.lottery.supermask import SupermaskConfig, find_supermask

    cfg = experiment_config_from_args(args, SupermaskConfig)
    run = find_supermask(cfg, args.runs_dir)
    print(f"\nrun {run.run_id} at {run.path}\n")
    print(round_table(run.all_metrics()))
    return 0


def cmd_show(args) -> int:
    from lth_sparse.lottery.report import (
        plot_runs,
        round_table,
        runs_listing,
        seeds_table,
    )
    from lth_sparse.lottery.store import list_runs, open_run

    if not args.runs:
        print(runs_listing(list_runs(args.runs_dir)))
        return 0
    runs = [open_run(r, args.runs_dir) for r in args.runs]
    for run in runs:
        cfg = run.read_config()
        about = cfg.describe() if hasattr(cfg, "describe") else (
            f"{cfg.prune.method} pruning, {cfg.train.iterations} iterations/round, rewind to "
            f"iteration {cfg.lottery.rewind_iteration}, seed {cfg.train.seed}")
        print(f"run {run.run_id} ({run.path}): {about}")
        print(round_table(run.all_metrics()))
        print()
    if len(runs) > 1:
        print(f"mean +/- std over {len(runs)} runs")
        print(seeds_table([r.all_metrics() for r in runs]))
    if args.plot:
        plot_runs([r.all_metrics() for r in runs], args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"--mode must be octal permission bits like 644 or 600, "
                                         f"got {text!r}")
    return mode


def cmd_sweep(args) -> int:
    from lth_sparse.lottery import sweep

    grid = sweep.apply_overrides(sweep.load_grid(args.grid), args.set or [])
    if args.dry_run:
        plan = sweep.plan_sweep(sweep.expand_grid(grid))
        if args.ms_per_iteration is not None:
            ms_it, ms_eval, source = args.ms_per_iteration, args.ms_per_eval, "given"
        else:
            ms_it, ms_eval = sweep.measure_ms_per_iteration(plan.cells[0].config)
            source = "measured here on cell 0's model, one process; --ms-per-iteration overrides"
        print(sweep.format_plan(plan, ms_it, ms_eval, args.workers, source))
        return 0
    from lth_sparse.bridge.trainers import find_ticket  # each cell honours --train-backend

    result = sweep.run_sweep(grid, args.runs_dir, executor=args.executor, workers=args.workers,
                             address=args.address, num_gpus=args.gpus_per_cell,
                             max_retries=args.max_retries, find_ticket=find_ticket)
    return 1 if result.failed else 0


def cmd_report(args) -> int:
    from lth_sparse.lottery.sweep import read_manifest
    from lth_sparse.lottery.sweep_report import write_report

    out = args.output
    if out is None:
        manifest = read_manifest(args.refs[0], args.runs_dir) if len(args.refs) == 1 else None
        out = Path(manifest["path"]).parent / "report" if manifest else Path("report")
    files = write_report(args.refs, out, args.runs_dir)
    for path in files.values():
        print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from lth_sparse.bridge.export import export_run

    paths = export_run(args.run, args.output, round_=args.round, sparsity=args.sparsity,
                       weights=args.weights, fmt=args.format, runs_dir=args.runs_dir,
                       mode=args.mode)
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_train_ticket(args) -> int:
    from lth_sparse.bridge.retrain import train_ticket

    train_ticket(args.run, round_=args.round, backend=args.backend,
                 train_backend=args.train_backend, iterations=args.iterations,
                 compare_dense=not args.no_dense, runs_dir=args.runs_dir)
    return 0


def cmd_bench(args) -> int:
    from lth_sparse.bench.cli import run_bench_command
    return run_bench_command(args)


def cmd_demo(args) -> int:
    from lth_sparse.demo import run_demo
    return run_demo(runs_dir=args.runs_dir, data_dir=args.data_dir, iterations=args.iterations)


def cmd_info(args) -> int:
    import torch

    from lth_sparse import __version__, build_info
    from lth_sparse.sparse.ops import available_backends

    print(json.dumps({"lth_sparse": __version__, "torch": torch.__version__,
                      "extension": build_info(), "backends": available_backends(),
                      "cuda": torch.cuda.is_available()}, indent=2))
    return 0


# -------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from lth_sparse.lottery.supermask import SupermaskConfig

    parser = argparse.ArgumentParser(prog="lth-sparse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("find-ticket", help="train, prune, rewind, repeat (resumable)",
                       description="Iterative magnitude pruning with rewinding and controls. "
                                   "Re-running the same command resumes from the last round.")
    add_config_arguments(p)
    _add_runs_dir(p)
    p.set_defaults(func=cmd_find_ticket)

    p = sub.add_parser("find-supermask", help="edge-popup: learn a top-k mask over frozen "
                                              "random weights (resumable)",
                       description="Supermasks (Ramanujan et al. 2020): score every frozen random "
                                   "weight, keep the top-k |score| per layer, train the scores "
                                   "straight through the mask. Stored as a one-round run that "
                                   "show, export and train-ticket read like a ticket.")
    # prune/lottery do not apply; train.lr is the weight rate train-ticket uses, not the scores'
    add_config_arguments(p, SupermaskConfig, hidden=frozenset({"prune", "lottery", "train.lr"}))
    _add_runs_dir(p)
    p.set_defaults(func=cmd_find_supermask)


    p = sub.add_parser("sweep", help="run a grid of experiments (resumable, shared prefixes)",
                       description="Every cell of GRID.toml is an ordinary run in the store: "
                                   "finished cells are skipped, a killed sweep resumes, and "
                                   "cells that share their first rounds compute them once.")
    p.add_argument("grid", help="grid file: [base] config sections, [axes], optional [[zip]]")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local process pool (default) or Ray tasks (pip install ray)")
    p.add_argument("--workers", type=int, default=1,
                   help="cells trained at once; each local worker gets cores/N threads")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local one)")
    p.add_argument("--gpus-per-cell", type=float, default=0.0, help="Ray num_gpus per cell")
    p.add_argument("--max-retries", type=int, default=3,
                   help="Ray: times a cell is retried when its worker process dies")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a [base] field or replace an axis' values (JSON), e.g. "
                        "--set train.iterations=300 --set 'train.seed=[0,1]'; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="list cells, shared prefixes and an estimated time; train nothing")
    p.add_argument("--ms-per-iteration", type=float, default=None,
                   help="for --dry-run: training ms/iteration (default: measured here)")
    p.add_argument("--ms-per-eval", type=float, default=0.0,
                   help="for --dry-run with --ms-per-iteration: ms per validation+test evaluation")
    _add_runs_dir(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="markdown tables + PNG figures of a sweep or of runs")
    p.add_argument("refs", nargs="+", metavar="SWEEP|RUN",
                   help="a sweep name (or its folder), or run directories / ids")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output folder (default: <runs>/sweeps/<name>/report, or ./report)")
    _add_runs_dir(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help="per-round table of one or more runs (no run: list runs)")
    p.add_argument("runs", nargs="*", help="run directories or run ids (prefixes work)")
    p.add_argument("--plot", type=Path, help="also write accuracy vs %% remaining as a PNG here")
    _add_runs_dir(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="write a ticket as a validated, checksummed CSR file")
    p.add_argument("run", help="run directory or run id")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--round", type=int, help="pruning round to export (default: the last)")
    which.add_argument("--sparsity", type=float, help="export the round closest to this sparsity")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (.safetensors)")
    p.add_argument("--format", choices=("safetensors", "npz"), default="safetensors",
                   help="npz also writes a scipy-readable interop file beside the safetensors one")
    p.add_argument("--weights", choices=("early-stop", "final"), default="early-stop",
                   help="which trained weights: at the early-stop iteration (whose accuracy the "
                        "round reports) or at the end of training")
    p.add_argument("--mode", type=_octal_mode, default=0o666, metavar="OCTAL",
                   help="permission bits of the written files before the umask, in octal "
                        "(default 666, i.e. 644 under umask 022; 600 keeps them private)")
    _add_runs_dir(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train-ticket", help="retrain a ticket from its rewind point with the "
                                            "sparse kernels, side by side with dense masked training")
    p.add_argument("run", help="run directory or run id")
    p.add_argument("--round", type=int, default=None, help="round whose mask to use (default: last)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "cpu", "triton"),
                   help="kernel backend of SparseMLP when it trains through autograd")
    p.add_argument("--train-backend", default="auto", choices=("auto", "dense", "sparse"),
                   help="how the sparse model trains: sparse = the fused native trainer (CPU), "
                        "dense = autograd through SparseMLP's --backend kernels, auto = fused "
                        "where it can run (default: auto)")
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations (default: the run's)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense masked comparison")
    _add_runs_dir(p)
    p.set_defaults(func=cmd_train_ticket)

    p = sub.add_parser("bench", help="sparse vs dense speed (and accuracy) benchmarks")
    from lth_sparse.bench.cli import add_bench_arguments
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="a few-minute end-to-end run: ticket, export, sparse vs dense")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw "
                                                    "(default: $LTH_SPARSE_DATA or download)")
    p.add_argument("--iterations", type=int, default=1500, help="training iterations per round")
    _add_runs_dir(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="versions, compiled extension and available kernel backends")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LthSparseError as exc:
        print(f"lth-sparse {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted; completed rounds are saved: repeat the command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
