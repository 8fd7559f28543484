"""Y = X W^T + b for one shape: provider x sparsity x batch, through pytest-benchmark.

Each provider's output is checked against the reference kernel before it is timed (a wrong
provider fails its test instead of producing a number). The full grid with machine facts,
speedup ratios and targets is `lth-sparse bench` (see README.md); this file is for quick
comparisons with pytest-benchmark's tooling (--benchmark-compare, --benchmark-histogram).
"""
import os
from functools import lru_cache

import pytest
from conftest import DEVICE, synced

from lth_sparse.bench.checks import rel_error
from lth_sparse.bench.config import DTYPES, parse_shape, shape_label
from lth_sparse.bench.problems import Problem
from lth_sparse.bench.providers import default_providers
from lth_sparse.sparse.tolerances import relative_error_bound

SHAPE = parse_shape(os.environ.get("LTH_BENCH_SHAPE", "4096x4096"))
DTYPE = os.environ.get("LTH_BENCH_DTYPE", "fp32")
REGISTRY = default_providers()
PROVIDERS = [name for name, p in REGISTRY.items()
             if p.in_default and DEVICE in (p.default_devices or p.devices)]


@lru_cache(maxsize=2)
def problem(sparsity):
    return Problem(SHAPE[0], SHAPE[1], sparsity, DEVICE)


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("sparsity", [0.9, 0.98])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_spmm(benchmark, device, provider, sparsity, batch):
    prov = REGISTRY[provider]
    ok, reason = prov.supports(device, DTYPE)
    if not ok:
        pytest.skip(reason)
    p = problem(sparsity)
    x = p.x(batch, DTYPES[DTYPE])
    try:
        fn = prov.build(p, x)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    err = rel_error(fn(), p.reference(x))
    tol = relative_error_bound(prov.precision(DTYPE))
    assert err <= tol, f"{provider} is wrong (relative error {err:.3g} > {tol:g}): not timed"
    benchmark.group = f"spmm {shape_label(SHAPE)} {DTYPE} sparsity {sparsity} batch {batch}"
    benchmark.extra_info.update(provider=provider, sparsity=sparsity, batch=batch, nnz=p.nnz,
                                variant=getattr(fn, "variant", None), rel_error=err)
    benchmark(synced(fn, device))
