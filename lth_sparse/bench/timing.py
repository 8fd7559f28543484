"""The one timer: median and spread of a call's wall time on CPU or CUDA.

Used by the benchmark grids, the ticket comparison, the pytest-benchmark suite's helpers and
`lth-sparse demo`. Imports nothing of the rest of the package, so it is cheap to use alone.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["sync", "summarize", "flush_cpu_cache", "time_cpu", "time_cuda", "time_fn"]

_FLUSH_BUFFER: list[torch.Tensor] = []   # one buffer per process, allocated on first use


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so that a timer sees a kernel's end (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def flush_cpu_cache() -> None:
    """Evict the caches by writing a buffer twice the size of the last-level cache (>= 64 MiB)."""
    if not _FLUSH_BUFFER:
        size = 64 << 20
        try:
            text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
            size = max(size, 2 * int(text.rstrip("KM")) * mult)
        except (OSError, ValueError):
            pass
        _FLUSH_BUFFER.append(torch.empty(size // 4, dtype=torch.float32))
    _FLUSH_BUFFER[0].fill_(1.0)


def summarize(samples_ms: Sequence[float], timer: str) -> dict:
    """{median_ms, q25_ms, q75_ms, min_ms, max_ms, repeats, timer} of timed samples (ms)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return dict(median_ms=float(med), q25_ms=float(q25), q75_ms=float(q75),
                min_ms=float(a.min()), max_ms=float(a.max()), repeats=int(a.size), timer=timer)


def time_cpu(fn: Callable[[], object], *, budget_s: float = 0.25, repeats: int | None = None,
             cold: bool = False, min_repeats: int = 5, max_repeats: int = 1000) -> dict:
    """Median and spread of fn's wall time (ms) with time.perf_counter; see `summarize`.

    Warm-up first. With `repeats` None the number of samples fits `budget_s` (at least
    `min_repeats`). Fast calls are timed in blocks of >= ~0.1 ms to keep timer overhead out
    (short blocks, so that a block hit by a descheduling stall is one outlier among many);
    `cold` evicts the caches before every (single-call) sample.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first < 0.05:  # the first call may include one-off setup: estimate from a second one
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    est = max(first, 1e-7)
    inner = 1 if cold else max(1, int(1e-4 / est))
    flush_cost = 0.0
    if cold:
        t0 = time.perf_counter()
        flush_cpu_cache()
        flush_cost = time.perf_counter() - t0
    if repeats is None:
        repeats = int(budget_s / (est * inner + flush_cost))
        repeats = min(max(repeats, min_repeats), max_repeats)
    samples = []
    for _ in range(repeats):
        if cold:
            flush_cpu_cache()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return summarize(samples, "perf_counter" + ("+flush" if cold else ""))


def time_cuda(fn: Callable[[], object], *, budget_s: float = 0.25, repeats: int | None = None,
              graph: bool = False) -> dict:
    """Median and spread on CUDA: triton.testing.do_bench (CUDA events, L2 flushed before every
    run), or a CUDA graph of the call (do_bench_cudagraph) for launch-bound small batches.
    Falls back to CUDA events without L2 flushing when Triton is missing."""
    rep_ms = max(20, int(budget_s * 1e3))
    try:  # optional dependency: Triton is only installed where there is a GPU to use it
        from triton.testing import do_bench, do_bench_cudagraph
    except ImportError:
        do_bench = do_bench_cudagraph = None
    if graph and do_bench_cudagraph is not None:
        try:
            # each sample is the mean of one graph replay of many unrolled calls
            return summarize(do_bench_cudagraph(fn, rep=rep_ms, return_mode="all"),
                             "cuda-graph")
        except Exception:  # not capturable (e.g. a library call that syncs): time it plainly
            torch.cuda.synchronize()
    if do_bench is not None:
        samples = do_bench(fn, warmup=25, rep=rep_ms, return_mode="all")
        if repeats is not None:
            samples = samples[:max(1, repeats)]
        return summarize(samples, "do_bench")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(repeats or 50)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in events], "cuda-events")


def time_fn(fn: Callable[[], object], device: str, *, budget_s: float,
            repeats: int | None = None, cold: bool = False, graph: bool = False) -> dict:
    """time_cuda on a CUDA device, else time_cpu (cold: CPU only; graph: CUDA only)."""
    if torch.device(device).type == "cuda":
        return time_cuda(fn, budget_s=budget_s, repeats=repeats, graph=graph)
    return time_cpu(fn, budget_s=budget_s, repeats=repeats, cold=cold)
