"""C++ CPU kernels: through lth_sparse.sparse.ops (backend="cpu") against the reference, and the
binding boundary of lth_sparse._C (exact dtypes, shapes, layouts; clear errors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lth_sparse import _ext
from lth_sparse.sparse import ops
from lth_sparse.sparse.kernels import cpu as cpu_backend
from tests.helpers import TOL, dense_of, random_csr

_C = _ext.extension()
pytestmark = [
    pytest.mark.skipif(not cpu_backend.available()[0],
                       reason=f"cpu backend unavailable: {cpu_backend.available()[1]}"),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
]

SMALL = getattr(_C, "SMALL_BATCH", 2)
# Around both switches: gather/batched (SMALL, SMALL + 1), the vector length (8 fp32 / 4 fp64),
# the 8- and 32-wide batch tiles and their remainders.
BATCHES = sorted({1, SMALL, SMALL + 1, 3, 8, 9, 17, 33, 70})
# (N, K, density, empty_rows, empty_cols): 1x1, non-powers of two, empty rows and columns.
SHAPES = [(1, 1, 1.0, 0, 0), (37, 53, 0.3, 5, 4), (130, 70, 0.15, 9, 6), (64, 300, 0.5, 3, 20)]
INDEX_DTYPES = [torch.int32, torch.uint16, torch.int64]
DTYPES = [torch.float32, torch.float64]


def _nan(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def _csr(N, K, dens, er, ec, idt, dt):
    return random_csr(N, K, dens, empty_rows=min(er, max(N - 1, 0)),
                      empty_cols=min(ec, max(K - 1, 0)), index_dtype=idt, value_dtype=dt)


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """Same values as t, not contiguous (a column slice of a wider buffer)."""
    wide = torch.empty(t.shape[0], t.shape[1] * 2, dtype=t.dtype)
    wide[:, ::2] = t
    view = wide[:, ::2]
    assert not view.is_contiguous()
    return view


# ------------------------------------------------------------------------- through ops

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_spmm_matches_reference(shape, idt, dtype):
    N, K, dens, er, ec = shape
    ip, ix, v = _csr(N, K, dens, er, ec, idt, dtype)
    bias = torch.randn(N, dtype=dtype)
    combos = ((None, False), (bias, True), (bias, False), (None, True))
    for i, B in enumerate(BATCHES):
        x = torch.randn(B, K, dtype=dtype)
        # Every bias/ReLU combination at the first and last batch size, one in turn between.
        for b, relu in combos if i in (0, len(BATCHES) - 1) else combos[i % 4:i % 4 + 1]:
            got = ops.spmm(x, ip, ix, v, N, b, relu, backend="cpu", out=_nan((B, N), dtype))
            want = ops.spmm(x, ip, ix, v, N, b, relu, backend="reference")
            torch.testing.assert_close(got, want, **TOL[dtype], msg=f"B={B} relu={relu}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_spmm_t_and_sddmm_match_reference(shape, idt, dtype):
    N, K, dens, er, ec = shape
    ip, ix, v = _csr(N, K, dens, er, ec, idt, dtype)
    # W^T as CSR (K, N), built independently of the package (dense round trip).
    w = dense_of(ip, ix, v, (N, K), dtype)
    wt = w.T.contiguous().to_sparse_csr()
    t_ip, t_ix, t_v = (wt.crow_indices().to(torch.int32), wt.col_indices().to(idt),
                       wt.values().contiguous())
    for B in BATCHES:
        dy, x = torch.randn(B, N, dtype=dtype), torch.randn(B, K, dtype=dtype)
        got = ops.spmm_t(dy, t_ip, t_ix, t_v, K, backend="cpu", out=_nan((B, K), dtype))
        want = dy @ w
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"spmm_t B={B}")
        got = ops.sddmm(dy, x, ip, ix, backend="cpu", out=_nan((ix.numel(),), dtype),
                        out_dtype=dtype)
        want = ops.sddmm(dy, x, ip, ix, backend="reference", out_dtype=dtype)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"sddmm B={B}")


def test_nnz_zero_writes_bias_or_zero():
    N, K = 7, 5
    ip, ix, v = torch.zeros(N + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0)
    bias = torch.randn(N)
    for B in (1, SMALL + 1, 40):
        x = torch.randn(B, K)
        y = ops.spmm(x, ip, ix, v, N, bias, False, backend="cpu", out=_nan((B, N), torch.float32))
        torch.testing.assert_close(y, bias.expand(B, N))
        y = ops.spmm(x, ip, ix, v, N, None, True, backend="cpu", out=_nan((B, N), torch.float32))
        assert torch.equal(y, torch.zeros(B, N))
        g = ops.sddmm(torch.randn(B, N), x, ip, ix, backend="cpu")
        assert g.shape == (0,)


def test_noncontiguous_inputs():
    N, K = 45, 61
    ip, ix, v = _csr(N, K, 0.3, 4, 4, torch.int32, torch.float32)
    for B in (1, 12):
        x, dy = _noncontig(torch.randn(B, K)), _noncontig(torch.randn(B, N))
        want = ops.spmm(x.contiguous(), ip, ix, v, N, None, False, backend="reference")
        torch.testing.assert_close(ops.spmm(x, ip, ix, v, N, backend="cpu"), want, **TOL[torch.float32])
        # Strided CSR arrays too (every other element of a longer buffer).
        ix2 = torch.stack([ix, ix], 1).reshape(-1)[::2]
        v2 = torch.stack([v, v], 1).reshape(-1)[::2]
        assert not v2.is_contiguous() or v2.numel() <= 1
        torch.testing.assert_close(ops.spmm(x, ip, ix2, v2, N, backend="cpu"), want, **TOL[torch.float32])
        want = ops.sddmm(dy.contiguous(), x.contiguous(), ip, ix, backend="reference")
        torch.testing.assert_close(ops.sddmm(dy, x, ip, ix, backend="cpu"), want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_upcast(dtype):
    N, K, B = 33, 47, 11
    ip, ix, v = _csr(N, K, 0.3, 3, 3, torch.uint16, dtype)
    x, dy, bias = torch.randn(B, K, dtype=dtype), torch.randn(B, N, dtype=dtype), torch.randn(N, dtype=dtype)
    got = ops.spmm(x, ip, ix, v, N, bias, True, backend="cpu")
    assert got.dtype == dtype
    torch.testing.assert_close(got, ops.spmm(x, ip, ix, v, N, bias, True, backend="reference"), **TOL[dtype])
    got = ops.sddmm(dy, x, ip, ix, backend="cpu")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ops.sddmm(dy, x, ip, ix, backend="reference"), **TOL[dtype])


def test_mixed_value_dtype_and_out_dtype():
    N, K, B = 20, 30, 10
    ip, ix, v = _csr(N, K, 0.4, 2, 2, torch.int32, torch.float64)  # fp64 values, fp32 x
    x = torch.randn(B, K)
    torch.testing.assert_close(ops.spmm(x, ip, ix, v, N, backend="cpu"),
                               ops.spmm(x, ip, ix, v, N, backend="reference"), **TOL[torch.float32])
    dy = torch.randn(B, N)
    got = ops.sddmm(dy, x, ip, ix, backend="cpu", out_dtype=torch.float64)
    torch.testing.assert_close(got, ops.sddmm(dy, x, ip, ix, backend="reference", out_dtype=torch.float64),
                               **TOL[torch.float32])


def test_relu_passes_nan_like_torch():
    ip, ix = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 0], dtype=torch.int32)
    v = torch.tensor([1.0, -1.0])
    x = torch.tensor([[float("nan")], [2.0]])
    y = ops.spmm(x, ip, ix, v, 2, None, True, backend="cpu")
    assert torch.isnan(y[0]).all() and torch.equal(y[1], torch.tensor([2.0, 0.0]))


# ------------------------------------------------------------------------- direct _C calls

def _np_case(B, N=6, K=5, dt=np.float32, it=np.int32):
    ip, ix, v = random_csr(N, K, 0.5, value_dtype=torch.float64)
    return dict(x=np.random.randn(B, K).astype(dt), indptr=ip.numpy(), indices=ix.numpy().astype(it),
                values=v.numpy().astype(dt), bias=None, relu=False, out=np.empty((B, N), dt))


@pytest.mark.parametrize("path", ["gather", "batched"])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_direct_paths_agree(path, dt):
    N, K = 29, 41
    for B in (1, 5, 8, 9, 40):
        a = _np_case(B, N, K, dt)
        a["bias"] = np.random.randn(N).astype(dt)
        ws = np.empty(_C.workspace_size("spmm", B, N, K, dt, path), dt)
        _C.spmm(**a, workspace=ws, path=path)
        w = dense_of(torch.from_numpy(a["indptr"]), torch.from_numpy(a["indices"]),
                     torch.from_numpy(a["values"]), (N, K)).numpy()
        np.testing.assert_allclose(a["out"], a["x"] @ w.T + a["bias"], **TOL[torch.from_numpy(a["x"]).dtype])
        dy = np.random.randn(B, N).astype(dt)
        g = np.full(len(a["values"]), np.nan, dt)
        ws = np.empty(_C.workspace_size("sddmm", B, N, K, dt, path), dt)
        _C.sddmm(dy, a["x"], a["indptr"], a["indices"], g, workspace=ws, path=path)
        rows = np.repeat(np.arange(N), np.diff(a["indptr"]))
        np.testing.assert_allclose(g, (dy.T @ a["x"])[rows, a["indices"]], **TOL[torch.from_numpy(dy).dtype])


def test_workspace_sizes():
    assert _C.workspace_size("spmm", 1, 10, 20, np.float32) == 0
    assert _C.workspace_size("spmm", 9, 10, 20, np.float32) == 20 * 16
    assert _C.workspace_size("spmm_t", 9, 10, 20, np.float32) == 10 * 16
    assert _C.workspace_size("sddmm", 9, 10, 20, np.float64) == 30 * 12
    assert _C.workspace_size("spmm", 1, 10, 20, np.float32, "batched") == 20 * 8
    with pytest.raises(ValueError, match="op must be"):
        _C.workspace_size("nope", 9, 10, 20, np.float32)


@pytest.mark.parametrize("field, bad, exc, match", [
    ("x", lambda a: a["x"].astype(np.float64), TypeError, "x must have dtype float32"),
    ("values", lambda a: a["values"].astype(np.float16), TypeError, "values must have dtype float32 or float64"),
    ("indices", lambda a: a["indices"].astype(np.int64), TypeError, "indices must have dtype int32 or uint16"),
    ("indptr", lambda a: a["indptr"].astype(np.int64), TypeError, "indptr must have dtype int32"),
    ("out", lambda a: a["out"].astype(np.float64), TypeError, "out must have dtype float32"),
    ("bias", lambda a: np.zeros(6, np.float64), TypeError, "bias must have dtype float32"),
    ("x", lambda a: torch.from_numpy(a["x"]), TypeError, "x must be a numpy array"),
    ("x", lambda a: a["x"][0].copy(), ValueError, r"x must have shape \(\*, \*\)"),
    ("out", lambda a: np.empty((SMALL + 5, 6), np.float32), ValueError, r"out must have shape \(\d+, \*\)"),
    ("values", lambda a: a["values"][:-1].copy(), ValueError, "values must have shape"),
    ("indptr", lambda a: a["indptr"][:-1].copy(), ValueError, "indptr must have shape"),
    ("bias", lambda a: np.zeros(5, np.float32), ValueError, r"bias must have shape \(6,\)"),
    ("x", lambda a: np.asfortranarray(a["x"]), ValueError, "x must be C-contiguous"),
    ("out", lambda a: np.empty((SMALL, 12), np.float32)[:, ::2], ValueError, "out must be C-contiguous"),
])
def test_binding_rejects_bad_arguments(field, bad, exc, match):
    a = _np_case(B=SMALL)
    a[field] = bad(a)
    with pytest.raises(exc, match=match):
        _C.spmm(**a)


def test_binding_rejects_bad_csr_and_workspace():
    a = _np_case(B=12)
    ws_n = _C.workspace_size("spmm", 12, 6, 5, np.float32)
    with pytest.raises(ValueError, match="needs a workspace"):
        _C.spmm(**a)
    with pytest.raises(ValueError, match="workspace holds"):
        _C.spmm(**a, workspace=np.empty(ws_n - 1, np.float32))
    with pytest.raises(TypeError, match="workspace must have dtype float32"):
        _C.spmm(**a, workspace=np.empty(ws_n, np.float64))
    ro = np.empty((12, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _C.spmm(**{**a, "out": ro}, workspace=np.empty(ws_n, np.float32))
    bad = a["indptr"].copy()
    bad[-1] += 1
    with pytest.raises(ValueError, match="indptr must start at 0"):
        _C.spmm(**{**a, "indptr": bad}, workspace=np.empty(ws_n, np.float32))
    with pytest.raises(ValueError, match="path must be"):
        _C.spmm(**a, path="fast")
    g = np.empty(len(a["values"]), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \(12, \*\)"):
        _C.sddmm(np.zeros((12, 6), np.float32), np.zeros((11, 5), np.float32), a["indptr"],
                 a["indices"], g)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        _C.sddmm(np.zeros((12, 6), np.float32), np.zeros((12, 5), np.float64), a["indptr"],
                 a["indices"], g)
    with pytest.raises(ValueError, match=r"out must have shape"):
        _C.sddmm(np.zeros((12, 6), np.float32), np.zeros((12, 5), np.float32), a["indptr"],
                 a["indices"], g[:-1].copy())


def test_out_written_in_place_and_returned():
    N, K, B = 16, 24, 20
    ip, ix, v = _csr(N, K, 0.3, 0, 0, torch.int32, torch.float32)
    out = _nan((B, N), torch.float32)
    ptr = out.data_ptr()
    res = cpu_backend.spmm(torch.randn(B, K), ip, ix, v, None, False, out)
    assert res is out and out.data_ptr() == ptr and not torch.isnan(out).any()


def test_build_info_reports_threads():
    info = _ext.build_info()
    assert info["available"] and info["max_threads"] >= 1
