"""pytest-benchmark suite (not part of the test run: the main suite's testpaths is tests/).

Run: .venv/bin/python -m pytest benchmarks/ --benchmark-only
Env: LTH_BENCH_DEVICE=cpu|cuda (default cpu), LTH_BENCH_SHAPE=INxOUT (default 4096x4096),
     LTH_BENCH_THREADS=N (default: torch's count).
"""
import os

import pytest
import torch

from lth_sparse.bench.machine import set_threads
from lth_sparse.bench.timing import sync

DEVICE = os.environ.get("LTH_BENCH_DEVICE", "cpu")


def pytest_configure(config):
    threads = int(os.environ.get("LTH_BENCH_THREADS", "0")) or torch.get_num_threads()
    set_threads(threads)
    if DEVICE == "cuda":
        torch.set_float32_matmul_precision("highest")


@pytest.fixture(scope="session")
def device():
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("LTH_BENCH_DEVICE=cuda but no CUDA GPU is visible")
    return DEVICE


def synced(fn, device):
    """fn followed by a CUDA synchronise, so the benchmark timer sees the kernel's end."""
    if device != "cuda":
        return fn

    def call():
        out = fn()
        sync(device)
        return out
    return call
