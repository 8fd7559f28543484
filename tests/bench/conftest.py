"""Helpers shared by the bench tests: parsed flags for tiny runs, and a tiny ticket file."""
from __future__ import annotations

import argparse

import pytest

from lth_sparse.bench.cli import add_bench_arguments
from lth_sparse.bench.grids import make_masked_mlp
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.sparse.ticket_file import save_ticket


def parse_bench_args(*argv):
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(list(argv))


def quick_args(out_dir, *extra):
    """Flags of a tiny, fast run writing under out_dir (never benchmarks/results/)."""
    return parse_bench_args("--quick", "--threads", "1", "--out-dir", str(out_dir),
                            "--repeats", "3", *extra)


@pytest.fixture
def tiny_ticket(tmp_path):
    """A 30-20-10 ticket at 80% sparsity, saved as a ticket file; returns its path."""
    model = sparse_mlp_from_mlp(make_masked_mlp([30, 20, 10], 0.8, seed=3), backend="reference")
    path = tmp_path / "tiny.safetensors"
    save_ticket(path, model.to_csr_layers())
    return path
