"""Flag parsing: every bad value is one ConfigError (exit 2 on the command line)."""
from __future__ import annotations

import pytest

from lth_sparse.bench.cli import bench_config_from_args, main
from lth_sparse.bench.config import (
    DEFAULT_TICKET_BATCHES,
    parse_dtype_name,
    parse_model,
    parse_shape,
)
from lth_sparse.bench.providers import default_providers, select_providers
from lth_sparse.errors import ConfigError
from tests.bench.helpers import parse_bench_args, quick_args


def test_parsers():
    assert parse_shape("784x300") == (784, 300)
    assert parse_model("784-300-100-10") == [784, 300, 100, 10]
    assert parse_dtype_name("float32") == "fp32"
    for bad in ("784by300", "0x3"):
        with pytest.raises(ValueError):
            parse_shape(bad)
    with pytest.raises(ValueError):
        parse_model("784-x-10")
    cfg = bench_config_from_args(parse_bench_args("--dtype", "float32,bf16"))
    assert cfg.dtypes == ["fp32", "bf16"] and cfg.shapes[-1] == (4096, 4096)


def test_ticket_flag_takes_several_files_and_its_own_batches(tiny_ticket):
    cfg = bench_config_from_args(parse_bench_args("--ticket", str(tiny_ticket), str(tiny_ticket),
                                                  "--runtime", "/some/lth-sparse-run"))
    assert cfg.tickets == [str(tiny_ticket)] * 2 and cfg.runtime == "/some/lth-sparse-run"
    assert cfg.batches == [int(b) for b in DEFAULT_TICKET_BATCHES.split(",")]
    assert not cfg.allow_dirty
    assert bench_config_from_args(parse_bench_args("--allow-dirty")).allow_dirty


@pytest.mark.parametrize("flag, value", [("--shapes", "784by300"), ("--sparsities", "1.5"),
                                         ("--batches", "0"), ("--dtype", "int8"),
                                         ("--providers", "nope"), ("--ticket", "/no/such/file"),
                                         ("--repeats", "0"), ("--threads", "0")])
def test_bad_flags_are_config_errors(tmp_path, flag, value):
    with pytest.raises(ConfigError):
        cfg = bench_config_from_args(quick_args(tmp_path, flag, value))
        select_providers(cfg, default_providers())
    assert main(["--quick", "--out-dir", str(tmp_path), flag, value]) == 2
