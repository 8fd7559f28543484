"""CSRMatrix: construction, conversions, transpose, and every validation error on its own."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lth_sparse.errors import CSRError, LthSparseError
from lth_sparse.sparse.csr import CSRMatrix, choose_index_dtype
from tests.helpers import dense_of, fresh_seed, random_csr


def _awkward_dense(n_rows=37, n_cols=23, density=0.3, seed=None):
    """Random sparse dense matrix with some empty rows and columns (fresh data unless seeded)."""
    g = torch.Generator().manual_seed(seed if seed is not None else fresh_seed())
    w = torch.randn(n_rows, n_cols, generator=g)
    w[torch.rand(n_rows, n_cols, generator=g) > density] = 0
    w[torch.randperm(n_rows, generator=g)[:3]] = 0
    w[:, torch.randperm(n_cols, generator=g)[:2]] = 0
    return w


def _valid(n_rows=9, n_cols=11, density=0.4, **kw):
    indptr, indices, values = random_csr(n_rows, n_cols, density, empty_rows=2, empty_cols=2, **kw)
    return CSRMatrix(indptr, indices, values, (n_rows, n_cols)).validate("fixture")


# ------------------------------------------------------------------------- construction


@pytest.mark.parametrize("shape", [(37, 23), (1, 1), (5, 70000), (300, 784)])
def test_from_dense_to_dense_round_trip(shape):
    w = _awkward_dense(*shape, density=0.2)
    m = CSRMatrix.from_dense(w)
    assert m.shape == shape
    assert m.nnz == int((w != 0).sum())
    assert torch.equal(m.to_dense(), w)
    assert torch.equal(dense_of(m.indptr, m.indices, m.values, shape, torch.float32), w)
    assert m.indptr.dtype == torch.int32
    assert m.density == pytest.approx(m.nnz / (shape[0] * shape[1]))
    assert m.sparsity == pytest.approx(1 - m.density)


def test_all_zero_matrix_has_nnz_zero():
    m = CSRMatrix.from_dense(torch.zeros(4, 6))
    assert m.nnz == 0 and m.sparsity == 1.0
    assert torch.equal(m.indptr, torch.zeros(5, dtype=torch.int32))
    assert torch.equal(m.to_dense(), torch.zeros(4, 6))
    t_indptr, t_indices, perm = m.transpose_pattern()
    assert t_indptr.numel() == 7 and t_indices.numel() == 0 and perm.numel() == 0


def test_mask_keeps_explicit_zeros_and_drops_unmasked_values():
    w = torch.tensor([[0.0, 2.0, 3.0], [4.0, 0.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    m = CSRMatrix.from_dense(w, mask)
    assert m.nnz == 4  # the kept zeros at (0, 0) and (1, 1) are stored
    assert m.indptr.tolist() == [0, 2, 4]
    assert m.indices.long().tolist() == [0, 1, 1, 2]
    assert m.values.tolist() == [0.0, 2.0, 0.0, 6.0]
    assert torch.equal(m.to_dense(), w * mask)


def test_mask_shape_mismatch_and_non_2d_weight_raise():
    with pytest.raises(CSRError, match="layer 'fc9': mask shape"):
        CSRMatrix.from_dense(torch.ones(3, 4), torch.ones(4, 3), name="fc9")
    with pytest.raises(CSRError, match="2-D weight"):
        CSRMatrix.from_dense(torch.ones(3))


def test_index_dtype_auto_choice_and_explicit():
    assert choose_index_dtype(65536) == torch.uint16
    assert choose_index_dtype(65537) == torch.int32
    assert CSRMatrix.from_dense(torch.eye(3)).index_dtype == torch.uint16
    assert CSRMatrix.from_dense(torch.eye(3), index_dtype=torch.int32).index_dtype == torch.int32
    assert CSRMatrix.from_dense(torch.eye(3), index_dtype=torch.int64).index_dtype == torch.int64
    wide = torch.zeros(2, 65537)
    wide[0, 65536] = 1.0
    m = CSRMatrix.from_dense(wide)
    assert m.index_dtype == torch.int32 and torch.equal(m.to_dense(), wide)
    with pytest.raises(CSRError, match="uint16 column indices need n_cols <= 65536"):
        CSRMatrix.from_dense(wide, index_dtype=torch.uint16)
    with pytest.raises(CSRError, match="index_dtype must be"):
        CSRMatrix.from_dense(torch.eye(3), index_dtype="int8")


def test_value_dtype_and_to():
    w = _awkward_dense()
    m = CSRMatrix.from_dense(w, value_dtype=torch.bfloat16)
    assert m.dtype == torch.bfloat16
    assert torch.equal(m.to_dense(torch.float32), w.bfloat16().float())
    m64 = m.to(dtype=torch.float64, index_dtype=torch.int32)
    assert m64.dtype == torch.float64 and m64.index_dtype == torch.int32
    assert m64.device == torch.device("cpu")
    assert m.nbytes == m.indptr.numel() * 4 + m.nnz * 2 + m.nnz * 2


def test_immutable():
    m = CSRMatrix.from_dense(torch.eye(2))
    with pytest.raises(AttributeError):
        m.values = torch.zeros(2)


def test_pickle_copy_and_torch_save(tmp_path):
    import copy
    import pickle

    m = CSRMatrix.from_dense(_awkward_dense())
    m32 = m.to(index_dtype=torch.int32)
    # Plain pickle of a uint16 tensor fails inside torch 2.x itself (UntypedStorage has no dtype),
    # so pickle is checked with int32 indices; deepcopy and torch.save handle uint16.
    for other, ref in ((pickle.loads(pickle.dumps(m32)), m32), (copy.deepcopy(m), m)):
        assert torch.equal(other.to_dense(), ref.to_dense()) and other.shape == ref.shape
        assert other.index_dtype == ref.index_dtype
    torch.save({"fc1": m}, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)["fc1"]
    assert torch.equal(loaded.to_dense(), m.to_dense())


# ------------------------------------------------------------------------- transpose


@pytest.mark.parametrize("index_dtype", [torch.uint16, torch.int32, torch.int64])
def test_transpose_matches_dense_transpose(index_dtype):
    w = _awkward_dense(41, 29)
    m = CSRMatrix.from_dense(w, index_dtype=index_dtype)
    t_indptr, t_indices, perm = m.transpose_pattern()
    assert t_indptr.numel() == 29 + 1 and t_indptr.dtype == m.indptr.dtype
    assert t_indices.dtype == index_dtype
    assert perm.dtype == torch.int64
    t = CSRMatrix(t_indptr, t_indices, m.values[perm], (29, 41)).validate("transpose")
    assert torch.equal(t.to_dense(), w.T)
    assert torch.equal(m.transpose().to_dense(), w.T)
    assert torch.equal(m.T.T.to_dense(), w)


def test_transpose_pattern_is_cached():
    m = CSRMatrix.from_dense(_awkward_dense())
    first = m.transpose_pattern()
    second = m.transpose_pattern()
    assert all(a is b for a, b in zip(first, second))


def test_transpose_index_dtype_widens_for_tall_matrix():
    w = torch.zeros(65537, 3)
    w[65536, 1] = 2.0
    w[0, 0] = 1.0
    m = CSRMatrix.from_dense(w)  # 3 columns -> uint16 indices, but 65537 rows
    assert m.index_dtype == torch.uint16
    t_indptr, t_indices, perm = m.transpose_pattern()
    assert t_indices.dtype == torch.int32
    assert torch.equal(m.transpose().to_dense(), w.T)


# ------------------------------------------------------------------------- interop


def test_scipy_round_trip_both_ways():
    w = _awkward_dense()
    m = CSRMatrix.from_dense(w)
    s = m.to_scipy()
    assert isinstance(s, sp.csr_matrix) and s.shape == m.shape and s.nnz == m.nnz
    np.testing.assert_array_equal(s.toarray(), w.numpy())
    back = CSRMatrix.from_scipy(s)
    assert torch.equal(back.indptr, m.indptr) and torch.equal(back.indices, m.indices)
    assert torch.equal(back.values, m.values)


def test_from_scipy_keeps_explicit_zeros_and_canonicalises():
    s = sp.csr_matrix((np.array([0.0, 1.0, 2.0, 3.0]), np.array([2, 0, 2, 2]), np.array([0, 2, 4])),
                      shape=(2, 3))  # row 0 unsorted (explicit zero at col 2), row 1 duplicates
    m = CSRMatrix.from_scipy(s)
    assert m.indptr.tolist() == [0, 2, 3]
    assert m.indices.long().tolist() == [0, 2, 2]
    assert m.values.tolist() == [1.0, 0.0, 5.0]
    with pytest.raises(CSRError, match="scipy.sparse"):
        CSRMatrix.from_scipy(np.eye(2))


def test_scipy_export_of_bfloat16_and_uint16():
    m = CSRMatrix.from_dense(_awkward_dense(), value_dtype=torch.bfloat16)
    s = m.to_scipy()
    assert s.dtype == np.float32 and s.indices.dtype == np.int32
    np.testing.assert_array_equal(s.toarray(), m.to_dense(torch.float32).numpy())


def test_torch_sparse_round_trip_both_ways():
    w = _awkward_dense()
    m = CSRMatrix.from_dense(w)  # uint16 indices: converted for torch
    t = m.to_torch_sparse()
    assert t.layout == torch.sparse_csr and t.col_indices().dtype == torch.int32
    assert torch.equal(t.to_dense(), w)
    back = CSRMatrix.from_torch_sparse(t)
    assert back.index_dtype == torch.uint16
    assert torch.equal(back.indices, m.indices) and torch.equal(back.indptr, m.indptr)
    assert torch.equal(back.values, m.values)
    coo = CSRMatrix.from_torch_sparse(w.to_sparse())
    assert torch.equal(coo.to_dense(), w)
    with pytest.raises(CSRError, match="from_dense"):
        CSRMatrix.from_torch_sparse(w)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_round_trip_and_validation():
    w = _awkward_dense().cuda()
    m = CSRMatrix.from_dense(w)
    assert m.device.type == "cuda"
    assert torch.equal(m.to_dense(), w)
    assert torch.equal(m.transpose().to_dense(), w.T)
    assert torch.equal(m.cpu().to_dense(), w.cpu())
    bad = CSRMatrix(m.indptr, m.indices.flip(0), m.values, m.shape)
    with pytest.raises(CSRError, match="sorted"):
        bad.validate("gpu")


# ------------------------------------------------------------------------- validation errors


def _with(m: CSRMatrix, **parts) -> CSRMatrix:
    fields = dict(indptr=m.indptr, indices=m.indices, values=m.values, shape=m.shape)
    fields.update(parts)
    return CSRMatrix(fields["indptr"], fields["indices"], fields["values"], fields["shape"])


def _simple():
    # [[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 4]]
    return CSRMatrix(torch.tensor([0, 2, 2, 4], dtype=torch.int32),
                     torch.tensor([0, 2, 1, 3], dtype=torch.int32),
                     torch.tensor([1.0, 2.0, 3.0, 4.0]), (3, 4)).validate()


def test_valid_random_matrices_pass():
    for index_dtype in (torch.uint16, torch.int32, torch.int64):
        for value_dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            m = _valid(index_dtype=index_dtype, value_dtype=value_dtype)
            assert m.validate("x") is m


def test_errors_are_user_errors():
    assert issubclass(CSRError, LthSparseError) and issubclass(CSRError, ValueError)


BAD = {
    # case: (how to break the simple matrix, expected message fragment)
    "indptr_first": (dict(indptr=torch.tensor([1, 2, 2, 4], dtype=torch.int32)),
                     r"layer 'fc1': indptr\[0\] must be 0, got 1"),
    "indptr_decreasing": (dict(indptr=torch.tensor([0, 3, 2, 4], dtype=torch.int32)),
                          r"layer 'fc1': indptr must be non-decreasing \(row 1 has "
                          r"indptr\[2\]=2 < indptr\[1\]=3\)"),
    "indptr_last": (dict(indptr=torch.tensor([0, 2, 2, 3], dtype=torch.int32)),
                    r"layer 'fc1': indptr\[-1\] must equal nnz = 4, got indptr\[3\]=3"),
    "indptr_length": (dict(indptr=torch.tensor([0, 2, 4], dtype=torch.int32)),
                      r"layer 'fc1': len\(indptr\) must be n_rows \+ 1 = 4, got 3"),
    "index_negative": (dict(indices=torch.tensor([-1, 2, 1, 3], dtype=torch.int32)),
                       r"layer 'fc1': column index out of range: indices\[0\]=-1 in row 0 "
                       r"is outside \[0, 4\)"),
    "index_too_large": (dict(indices=torch.tensor([0, 2, 1, 4], dtype=torch.int32)),
                        r"layer 'fc1': column index out of range: indices\[3\]=4 in row 2"),
    "unsorted": (dict(indices=torch.tensor([2, 0, 1, 3], dtype=torch.int32)),
                 r"layer 'fc1': column indices must be sorted within each row \(row 0 has "
                 r"indices\[0\]=2 > indices\[1\]=0\)"),
    "duplicate": (dict(indices=torch.tensor([0, 2, 3, 3], dtype=torch.int32)),
                  r"layer 'fc1': duplicate column index 3 in row 2"),
    "nan": (dict(values=torch.tensor([1.0, 2.0, float("nan"), 4.0])),
            r"layer 'fc1': values must be finite; 1 are not \(first: values\[2\]=nan at row 2, "
            r"column 1\)"),
    "inf": (dict(values=torch.tensor([1.0, float("-inf"), 3.0, 4.0])),
            r"layer 'fc1': values must be finite"),
    "indptr_dtype": (dict(indptr=torch.tensor([0, 2, 2, 4], dtype=torch.int16)),
                     r"layer 'fc1': indptr dtype must be int32 or int64, got torch.int16"),
    "indices_dtype": (dict(indices=torch.tensor([0, 2, 1, 3], dtype=torch.int8)),
                      r"layer 'fc1': indices dtype must be uint16, int32 or int64"),
    "values_dtype": (dict(values=torch.tensor([1, 2, 3, 4], dtype=torch.int32)),
                     r"layer 'fc1': values dtype must be float32, float16, bfloat16 or float64"),
    "length_mismatch": (dict(values=torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])),
                        r"layer 'fc1': len\(indices\) = 4 must equal len\(values\) = 5"),
    "shape_negative": (dict(shape=(3, -4)), r"layer 'fc1': shape entries must be positive"),
    "shape_zero": (dict(shape=(0, 4)), r"layer 'fc1': shape entries must be positive"),
    "shape_float": (dict(shape=(3.0, 4)), r"layer 'fc1': shape must be two ints"),
    "shape_three": (dict(shape=(3, 4, 1)), r"layer 'fc1': shape must be two ints"),
    "shape_overflow": (dict(shape=(3, 2**62)), r"layer 'fc1': n_rows \* n_cols = .* does not "
                                               r"fit in int64"),
    "uint16_wide": (dict(indices=torch.tensor([0, 2, 1, 3], dtype=torch.uint16), shape=(3, 65537)),
                    r"layer 'fc1': uint16 indices need n_cols <= 65536, got n_cols=65537"),
    "not_1d": (dict(values=torch.ones(2, 2)), r"layer 'fc1': values must be 1-D"),
    "not_tensor": (dict(indices=[0, 2, 1, 3]), r"layer 'fc1': indices must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_validation_error(case):
    parts, message = BAD[case]
    bad = _with(_simple(), **parts)
    with pytest.raises(CSRError, match=message):
        bad.validate("fc1")


def test_unsorted_across_row_boundary_is_fine():
    # Row 0 ends at column 3, row 1 starts at column 0: not an ordering error.
    m = CSRMatrix(torch.tensor([0, 2, 4], dtype=torch.int32), torch.tensor([1, 3, 0, 2], dtype=torch.int32),
                  torch.ones(4), (2, 4))
    assert m.validate() is m


def test_duplicate_reported_with_empty_rows_before_it():
    m = CSRMatrix(torch.tensor([0, 0, 0, 3], dtype=torch.int32), torch.tensor([1, 1, 2], dtype=torch.int32),
                  torch.ones(3), (3, 4))
    with pytest.raises(CSRError, match=r"duplicate column index 1 in row 2 \(indices\[0\] == indices\[1\]\)"):
        m.validate("fc2")


def test_validation_on_random_corruptions_names_the_row():
    m = _valid(50, 40, density=0.5, index_dtype=torch.int32)
    ip = m.indptr.long()
    row = int(((ip[1:] - ip[:-1]) >= 2).nonzero()[-1, 0])  # a row with at least two entries
    j = int(ip[row])
    idx = m.indices.clone()
    idx[j], idx[j + 1] = idx[j + 1].clone(), idx[j].clone()
    with pytest.raises(CSRError, match=f"row {row} has indices"):
        _with(m, indices=idx).validate("fc3")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_devices_rejected():
    m = _simple()
    with pytest.raises(CSRError, match="one device"):
        _with(m, values=m.values.cuda()).validate("fc1")

