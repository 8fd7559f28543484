"""Helpers shared by the bench tests: parsed flags for tiny runs."""
from __future__ import annotations

import argparse

from lth_sparse.bench.cli import add_bench_arguments


def parse_bench_args(*argv):
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(list(argv))


def quick_args(out_dir, *extra):
    """Flags of a tiny, fast run writing under out_dir (never benchmarks/results/)."""
    return parse_bench_args("--quick", "--threads", "1", "--out-dir", str(out_dir),
                            "--repeats", "3", *extra)
