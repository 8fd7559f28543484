"""The dispatch layer: argument and pattern checks, backend choice, the extension fallback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lth_sparse.errors import BackendUnavailableError, CSRError
from lth_sparse.sparse import ops
from tests.helpers import TOL, fresh_seed


def _problem():
    indptr = torch.tensor([0, 2, 2, 3], dtype=torch.int32)
    indices = torch.tensor([0, 3, 1], dtype=torch.int32)
    values = torch.tensor([1.0, -2.0, 0.5])
    return torch.randn(2, 4), indptr, indices, values


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("bad,match", [
    (lambda ip, ix: (ip, torch.tensor([0, 4, 1], dtype=torch.int32)), r"in \[0, 4\)"),
    (lambda ip, ix: (ip, torch.tensor([0, -3, 1], dtype=torch.int32)), r"in \[0, 4\)"),
    (lambda ip, ix: (torch.tensor([0, 2, 1, 3], dtype=torch.int32), ix), "non-decreasing"),
    (lambda ip, ix: (torch.tensor([0, 2, 2, 2], dtype=torch.int32), ix), "end at nnz=3"),
])
def test_out_of_range_patterns_are_refused_before_any_kernel_runs(backend, bad, match):
    x, indptr, indices, values = _problem()
    indptr, indices = bad(indptr, indices)
    with pytest.raises(CSRError, match=match):
        ops.spmm(x, indptr, indices, values, 3, backend=backend)
    with pytest.raises(CSRError, match=match):
        ops.sddmm(torch.randn(2, 3), x, indptr, indices, backend=backend)


def test_auto_sends_float64_on_cuda_to_the_reference():
    cuda = torch.device("cuda")
    if ops.backend_status("triton")[0]:
        assert ops.resolve_backend("auto", cuda, torch.float32) == "triton"
    assert ops.resolve_backend("auto", cuda, torch.float64) == "reference"


def test_disabling_the_extension_falls_back_and_explains():
    code = (
        "import torch, lth_sparse\n"
        "from lth_sparse.sparse import ops\n"
        "from lth_sparse.errors import BackendUnavailableError\n"
        "assert not lth_sparse.build_info()['available']\n"
        "assert ops.resolve_backend('auto', torch.device('cpu')) == 'reference'\n"
        "try:\n"
        "    ops.spmm(torch.ones(1, 2), torch.tensor([0, 1], dtype=torch.int32),\n"
        "             torch.tensor([1], dtype=torch.int32), torch.ones(1), 1, backend='cpu')\n"
        "except BackendUnavailableError as e:\n"
        "    print('REFUSED', e)\n"
    )
    env = {**os.environ, "LTH_SPARSE_DISABLE_EXT": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "REFUSED backend 'cpu' is unavailable: disabled by LTH_SPARSE_DISABLE_EXT=1" in out.stdout


def test_unknown_backend_names_the_choices():
    x, indptr, indices, values = _problem()
    with pytest.raises(BackendUnavailableError, match="choose one of auto, reference, cpu, triton"):
        ops.spmm(x, indptr, indices, values, 3, backend="cuda")


def test_uint16_indices_are_range_checked_too():
    x, indptr, indices, values = _problem()
    ok = ops.spmm(x, indptr, indices.to(torch.uint16), values, 3, backend="reference")
    assert ok.shape == (2, 3)
    with pytest.raises(CSRError, match=r"in \[0, 4\)"):
        ops.spmm(x, indptr, torch.tensor([0, 40000, 1], dtype=torch.int32).to(torch.uint16),
                 values, 3, backend="reference")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype,expected", [(torch.float64, torch.float64),
                                            (torch.float32, torch.float32),
                                            (torch.float16, torch.float32),
                                            (torch.bfloat16, torch.float32)])
def test_sddmm_default_output_follows_the_accumulation_dtype(backend, dtype, expected):
    if not ops.backend_status(backend)[0]:
        pytest.skip(ops.backend_status(backend)[1])
    g = torch.Generator().manual_seed(fresh_seed())
    indptr = torch.tensor([0, 2, 2, 3], dtype=torch.int32)
    indices = torch.tensor([0, 3, 1], dtype=torch.int32)
    dy = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    out = ops.sddmm(dy.to(dtype), x.to(dtype), indptr, indices, backend=backend)
    assert out.dtype == expected
    # an fp64 gradient keeps fp64 precision (an fp32 result would be off by ~1e-8 here)
    full = dy.to(dtype).double().T @ x.to(dtype).double()
    want = full[[0, 0, 2], [0, 3, 1]]
    torch.testing.assert_close(out.double(), want, **TOL[expected])
