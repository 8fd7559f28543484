"""One benchmark run: what a BenchConfig asks for, measured, evaluated and written out."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from lth_sparse.bench.config import COLD_CACHE_BYTES, BenchConfig
from lth_sparse.bench.floor import measure_limits
from lth_sparse.bench.grids import run_spmm_grid, run_train_grid
from lth_sparse.bench.machine import (
    check_clean_for_results,
    git_state,
    load_average,
    machine_info,
    machine_tag,
    results_root,
    set_threads,
)
from lth_sparse.bench.providers import Provider, default_providers, select_providers
from lth_sparse.bench.report import write_outputs
from lth_sparse.bench.rows import add_speedups, clean_value
from lth_sparse.bench.targets import TICKET_LAYER_TARGETS, evaluate_targets, evaluate_ticket_targets
from lth_sparse.bench.ticket import DESCRIPTIONS, run_tickets
from lth_sparse.errors import ConfigError

# the spmm cell a ticket run adds for its layer-level target (CPU, not --quick)
LAYER_CHECK_PROVIDERS = ("torch-csr", "ours-cpu", "ours-cpu-u16")


def default_out_dir(cfg: BenchConfig) -> Path:
    """benchmarks/results/<machine-tag>/<mode-dtypes | quick | ticket-NAME[+NAME...]>."""
    if cfg.quick:
        label = "quick"
    elif cfg.tickets:
        label = "ticket-" + "+".join(Path(t).stem for t in cfg.tickets)
    else:
        label = f"{cfg.mode}-{'-'.join(cfg.dtypes)}"
    return results_root() / machine_tag(cfg.device) / label[:120]


def _progress(total: int):
    quiet = os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not sys.stderr.isatty()
    return tqdm(total=total, disable=quiet, desc="bench", unit="cell", leave=False)


def _layer_check_config(cfg: BenchConfig) -> BenchConfig:
    """The one spmm cell of the layer-level ticket target (4096x4096 at 90%, batch 1)."""
    t = TICKET_LAYER_TARGETS[0]
    shape = tuple(int(s) for s in t.shape.split("x"))
    return dataclasses.replace(cfg, shapes=[shape], sparsities=[t.sparsity],
                               batches=list(t.batches), dtypes=[t.dtype])


def _timing_note(cfg: BenchConfig) -> str:
    if cfg.device == "cpu":
        note = ("CPU: time.perf_counter after warm-up; samples fit a per-cell budget of "
                f"{cfg.budget_s}s (>= 5), fast calls timed in >= 0.1 ms blocks; cache policy "
                f"{cfg.cache} (auto: caches evicted before each call for weights > "
                f"{COLD_CACHE_BYTES >> 20} MiB)")
    else:
        note = ("CUDA: triton.testing.do_bench (CUDA events, L2 flushed before each run), "
                "median of all runs; ticket forwards at batch <= 256 as CUDA graphs")
    if cfg.repeats:
        note += f"; fixed {cfg.repeats} samples per cell"
    return note


def run_benchmarks(cfg: BenchConfig, providers: Sequence[Provider] | None = None,
                   evaluate=None, registry: dict[str, Provider] | None = None) -> dict:
    """Run what `cfg` asks for and write the outputs; returns {"meta", "rows", "targets", "files"}.

    providers: override the spmm provider list (e.g. tests adding a deliberately wrong one).
    evaluate: accuracy hook for tickets (see lth_sparse.bench.ticket.run_tickets).
    Raises ConfigError before measuring anything when the outputs would land in
    benchmarks/results/ from a dirty tree without cfg.allow_dirty.
    """
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    state = git_state()
    check_clean_for_results(out_dir, state, cfg.allow_dirty)
    registry = dict(registry or default_providers())
    for p in providers or ():
        registry.setdefault(p.name, p)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu")
    threads = cfg.threads or torch.get_num_threads()
    set_threads(threads)
    if cfg.device == "cuda":
        torch.set_float32_matmul_precision("highest")  # fp32 means fp32; TF32 is its own row
    provs = list(providers) if providers is not None else select_providers(cfg, registry)

    load_start = load_average()
    t_start = time.perf_counter()
    rows: list[dict] = []
    limits = None
    if cfg.tickets:
        if cfg.device == "cpu":
            limits = measure_limits(cfg.budget_s, cfg.seed, quick=cfg.quick)
        layer_cfg = None if cfg.quick or cfg.device != "cpu" else _layer_check_config(cfg)
        n_cells = len(cfg.tickets) * len(cfg.dtypes) * len(cfg.batches)
        with _progress(n_cells) as bar:
            rows += run_tickets(cfg, threads, limits, evaluate, bar)
        if layer_cfg is not None:
            layer_provs = [registry[n] for n in LAYER_CHECK_PROVIDERS if n in registry]
            rows += run_spmm_grid(layer_cfg, layer_provs)
    else:
        n_spmm = (len(cfg.dtypes) * len(cfg.shapes) * len(cfg.sparsities) * len(cfg.batches)
                  * len(provs)) if cfg.mode in ("inference", "all") else 0
        n_train = (len(cfg.dtypes) * len(cfg.train_models) * len(cfg.train_sparsities)
                   * len(cfg.train_batches)) if cfg.mode in ("train", "all") else 0
        with _progress(n_spmm + n_train) as bar:
            if n_spmm:
                rows += run_spmm_grid(cfg, provs, bar)
            if n_train:
                rows += run_train_grid(cfg, bar)
    add_speedups(rows)
    rows = [{k: clean_value(v) for k, v in r.items()} for r in rows]
    ours = {n for n, p in registry.items() if p.ours}
    if cfg.tickets:
        targets = evaluate_ticket_targets(rows, ours)
    else:
        targets = [] if cfg.quick else evaluate_targets(rows, cfg.device, ours)

    meta = dict(command=cfg.command, device=cfg.device, dtypes=cfg.dtypes, threads=threads,
                machine=machine_info(cfg.device, state), load_average_start=load_start,
                timing=_timing_note(cfg), quick=cfg.quick,
                limits=dataclasses.asdict(limits) if limits else None,
                config=dataclasses.asdict(cfg),
                elapsed_s=round(time.perf_counter() - t_start, 1))
    descriptions = {n: p.description for n, p in registry.items()} | DESCRIPTIONS
    files = write_outputs(out_dir, meta, rows, targets, descriptions, ours, plots=cfg.plots)
    return dict(meta=meta, rows=rows, targets=targets, files=files)
