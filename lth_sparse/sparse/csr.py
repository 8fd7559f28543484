"""CSRMatrix: one sparse weight matrix in compressed sparse row form, validated.

Names follow SciPy (`indptr`, `indices`, `values`, `shape`) and the layout is PyTorch's weight
layout: shape = (n_rows, n_cols) = (out_features, in_features), so a layer computes
y = x @ W.T + b. Row r holds the columns indices[indptr[r]:indptr[r+1]] (sorted, unique) with
the values values[indptr[r]:indptr[r+1]].

Storage dtypes:
  indptr   int32 (int64 only when nnz >= 2**31)
  indices  uint16 (only when n_cols <= 65536), int32, or int64
  values   float32, float16, bfloat16 or float64

A CSRMatrix is immutable by convention: never modify its tensors in place (the transpose
pattern is cached per matrix). Build new matrices with the constructors below.
"""
from __future__ import annotations

from typing import Any

import torch

from lth_sparse.errors import CSRError
from lth_sparse.sparse.ops import INDEX_DTYPES, INDPTR_DTYPES, VALUE_DTYPES

UINT16_MAX_COLS = 65536  # column ids 0..65535 fit in uint16
_INT32_LIMIT = 2**31
_INT64_MAX = 2**63 - 1

__all__ = ["CSRMatrix", "INDPTR_DTYPES", "INDEX_DTYPES", "VALUE_DTYPES", "choose_index_dtype"]


def choose_index_dtype(n_cols: int, index_dtype: Any = "auto") -> torch.dtype:
    """The column-index dtype for a matrix with `n_cols` columns.

    "auto" -> uint16 when n_cols <= 65536, else int32. An explicit torch.uint16 for more
    columns raises CSRError.
    """
    if isinstance(index_dtype, str):
        if index_dtype != "auto":
            raise CSRError(f"index_dtype must be 'auto', torch.uint16, torch.int32 or torch.int64, "
                           f"got {index_dtype!r}")
        return torch.uint16 if n_cols <= UINT16_MAX_COLS else torch.int32
    if index_dtype not in INDEX_DTYPES:
        raise CSRError(f"index_dtype must be 'auto', torch.uint16, torch.int32 or torch.int64, "
                       f"got {index_dtype}")
    if index_dtype == torch.uint16 and n_cols > UINT16_MAX_COLS:
        raise CSRError(f"uint16 column indices need n_cols <= {UINT16_MAX_COLS}, got {n_cols}; "
                       "use index_dtype=torch.int32")
    return index_dtype


def _indptr_dtype(nnz: int) -> torch.dtype:
    return torch.int64 if nnz >= _INT32_LIMIT else torch.int32


def _indptr_from_counts(counts: torch.Tensor, nnz: int) -> torch.Tensor:
    indptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=indptr[1:])
    return indptr.to(_indptr_dtype(nnz))


def _row_ids(indptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """Row of every stored entry, (nnz,) int64 (indptr must already be valid)."""
    counts = (indptr[1:] - indptr[:-1]).long()
    rows = torch.arange(counts.numel(), device=indptr.device)
    return torch.repeat_interleave(rows, counts, output_size=nnz)


def _row_of(indptr: torch.Tensor, j: int) -> int:
    """Row holding stored entry j (indptr int64, valid)."""
    return int(torch.searchsorted(indptr, torch.tensor([j], device=indptr.device), right=True)[0]) - 1


class CSRMatrix:
    """A (n_rows, n_cols) = (out_features, in_features) sparse matrix in CSR form.

    Attributes (all on one device):
      indptr  (n_rows + 1,) int32/int64
      indices (nnz,) uint16/int32/int64, sorted and unique within each row
      values  (nnz,) float32/float16/bfloat16/float64
      shape   (n_rows, n_cols) tuple of Python ints

    Construction does not validate (it is cheap and used by kernels' hot paths); call
    `.validate(name)` on anything that came from outside. All `from_*` constructors validate.
    Explicit zeros are legal: a kept weight may be exactly 0.
    """

    __slots__ = ("indptr", "indices", "values", "shape", "_transpose_cache")

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 shape: tuple[int, int]):
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "shape", tuple(shape))
        object.__setattr__(self, "_transpose_cache", None)

    def __setattr__(self, name, value):
        raise AttributeError("CSRMatrix is immutable; build a new one (e.g. with .to())")

    def __reduce__(self):
        # pickle / copy / torch.save rebuild through __init__ (the slots are write-protected)
        return (CSRMatrix, (self.indptr, self.indices, self.values, self.shape))

    # ------------------------------------------------------------------ properties

    @property
    def n_rows(self) -> int:
        return int(self.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.shape[1])

    @property
    def nnz(self) -> int:
        """Stored entries (explicit zeros included)."""
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """nnz / (n_rows * n_cols)."""
        return self.nnz / (self.n_rows * self.n_cols)

    @property
    def sparsity(self) -> float:
        """1 - density: the fraction of weights that are pruned away."""
        return 1.0 - self.density

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the values."""
        return self.values.dtype

    @property
    def index_dtype(self) -> torch.dtype:
        return self.indices.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by indptr + indices + values."""
        return sum(t.numel() * t.element_size() for t in (self.indptr, self.indices, self.values))

    def __repr__(self) -> str:
        return (f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.4f}, "
                f"values={self.dtype}, indices={self.index_dtype}, indptr={self.indptr.dtype}, "
                f"device={self.device})")

    # ------------------------------------------------------------------ conversions

    def to(self, device: torch.device | str | None = None, *, dtype: torch.dtype | None = None,
           index_dtype: Any = None) -> "CSRMatrix":
        """A copy on `device`, optionally with values cast to `dtype` and indices to `index_dtype`.

        The cached transpose pattern travels along when only the device changes.
        """
        device = torch.device(device) if device is not None else self.device
        idx_dtype = self.index_dtype if index_dtype is None else choose_index_dtype(self.n_cols, index_dtype)
        out = CSRMatrix(self.indptr.to(device), self.indices.to(device=device, dtype=idx_dtype),
                        self.values.to(device=device, dtype=dtype or self.dtype), self.shape)
        if self._transpose_cache is not None and idx_dtype == self.index_dtype:
            object.__setattr__(out, "_transpose_cache",
                               tuple(t.to(device) for t in self._transpose_cache))
        return out

    def cpu(self) -> "CSRMatrix":
        return self.to("cpu")

    def cuda(self, device: int | None = None) -> "CSRMatrix":
        return self.to("cuda" if device is None else torch.device("cuda", device))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None,
                   index_dtype: Any = "auto", value_dtype: torch.dtype | None = None,
                   name: str = "weight") -> "CSRMatrix":
        """CSR of a dense (n_rows, n_cols) weight, on the weight's device.

        mask: same shape (bool or 0/1 float, e.g. a torch prune `weight_mask`); the stored
            entries are exactly the mask's nonzero positions, so a kept weight that happens to
            be 0 is kept as an explicit zero. Without a mask, the stored entries are weight != 0.
        index_dtype: "auto" (uint16 when n_cols <= 65536, else int32), torch.uint16, torch.int32
            or torch.int64.
        value_dtype: dtype of the stored values (default: the weight's dtype).
        Raises CSRError (naming `name`) for a non-2-D weight, a mask of another shape, or
        non-finite kept values.
        """
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise CSRError(f"layer {name!r}: from_dense needs a 2-D weight (out, in), got {got}")
        if not weight.is_floating_point():
            raise CSRError(f"layer {name!r}: weight must be floating point, got {weight.dtype}")
        weight = weight.detach()
        if mask is not None:
            if tuple(mask.shape) != tuple(weight.shape):
                raise CSRError(f"layer {name!r}: mask shape {tuple(mask.shape)} differs from "
                               f"weight shape {tuple(weight.shape)}")
            keep = mask.detach().to(weight.device) != 0
        else:
            keep = weight != 0
        n_rows, n_cols = (int(s) for s in weight.shape)
        idx_dtype = choose_index_dtype(n_cols, index_dtype)
        rows, cols = keep.nonzero(as_tuple=True)  # row-major order: sorted within each row
        nnz = int(rows.numel())
        values = weight[rows, cols].to(value_dtype or weight.dtype)
        indptr = _indptr_from_counts(torch.bincount(rows, minlength=n_rows), nnz)
        return cls(indptr, cols.to(idx_dtype), values.contiguous(), (n_rows, n_cols)).validate(name)

    @classmethod
    def from_scipy(cls, matrix: Any, index_dtype: Any = "auto",
                   value_dtype: torch.dtype | None = None, name: str = "weight") -> "CSRMatrix":
        """CSR of any scipy.sparse matrix/array (converted with .tocsr()).

        A non-canonical SciPy matrix (unsorted or duplicate column indices) is canonicalised on
        a copy with SciPy's own semantics (duplicates are summed). Explicit zeros are kept.
        """
        import numpy as np
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise CSRError(f"layer {name!r}: from_scipy needs a scipy.sparse matrix, "
                           f"got {type(matrix).__name__}")
        m = matrix.tocsr()
        if not m.has_canonical_format:
            m = m.copy()
            m.sum_duplicates()  # also sorts indices
        n_rows, n_cols = (int(s) for s in m.shape)
        idx_dtype = choose_index_dtype(n_cols, index_dtype)
        data = np.ascontiguousarray(m.data)
        if data.dtype not in (np.float16, np.float32, np.float64):
            raise CSRError(f"layer {name!r}: SciPy matrix values must be float16/32/64, got {data.dtype}")
        values = torch.from_numpy(data.copy())
        if value_dtype is not None:
            values = values.to(value_dtype)
        indices = torch.from_numpy(np.asarray(m.indices, dtype=np.int64)).to(idx_dtype)
        indptr = torch.from_numpy(np.asarray(m.indptr, dtype=np.int64)).to(_indptr_dtype(int(m.nnz)))
        return cls(indptr, indices, values, (n_rows, n_cols)).validate(name)

    @classmethod
    def from_torch_sparse(cls, tensor: torch.Tensor, index_dtype: Any = "auto",
                          value_dtype: torch.dtype | None = None,
                          name: str = "weight") -> "CSRMatrix":
        """CSR of a 2-D torch sparse tensor (sparse_csr layout, or sparse_coo which is coalesced)."""
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
            raise CSRError(f"layer {name!r}: from_torch_sparse needs a 2-D sparse tensor")
        if tensor.layout == torch.sparse_coo:
            tensor = tensor.coalesce().to_sparse_csr()
        if tensor.layout != torch.sparse_csr:
            raise CSRError(f"layer {name!r}: from_torch_sparse needs layout sparse_csr or "
                           f"sparse_coo, got {tensor.layout}; for dense tensors use from_dense")
        n_rows, n_cols = (int(s) for s in tensor.shape)
        idx_dtype = choose_index_dtype(n_cols, index_dtype)
        values = tensor.values().detach().clone()
        if value_dtype is not None:
            values = values.to(value_dtype)
        nnz = int(values.numel())
        indptr = tensor.crow_indices().to(_indptr_dtype(nnz)).clone()
        indices = tensor.col_indices().to(idx_dtype).clone()
        return cls(indptr, indices, values, (n_rows, n_cols)).validate(name)

    # ------------------------------------------------------------------ exports

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense (n_rows, n_cols) tensor on this matrix's device (dtype: the values' by default)."""
        dense = torch.zeros(self.shape, dtype=dtype or self.dtype, device=self.device)
        rows = _row_ids(self.indptr, self.nnz)
        dense[rows, self.indices.long()] = self.values.to(dense.dtype)
        return dense

    def to_scipy(self):
        """scipy.sparse.csr_matrix with the same pattern and values (on the CPU).

        SciPy has no uint16 indices or bfloat16 data: indices become int32 (int64 if needed) and
        bfloat16 values become float32 (exact).
        """
        import numpy as np
        import scipy.sparse as sp

        idx_np = np.int64 if (self.indptr.dtype == torch.int64 or self.n_cols >= _INT32_LIMIT) else np.int32
        values = self.values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        m = sp.csr_matrix((values.numpy(), self.indices.cpu().long().numpy().astype(idx_np),
                           self.indptr.cpu().long().numpy().astype(idx_np)), shape=self.shape)
        m.has_sorted_indices = True
        return m

    def to_torch_sparse(self) -> torch.Tensor:
        """torch.sparse_csr_tensor of shape (n_rows, n_cols) on this device.

        PyTorch needs crow/col indices of one dtype in {int32, int64}: uint16 indices become
        int32, and both follow indptr's dtype.
        """
        import warnings

        idx = self.indptr.dtype
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            return torch.sparse_csr_tensor(self.indptr, self.indices.to(idx), self.values,
                                           size=self.shape, dtype=self.dtype, device=self.device,
                                           check_invariants=False)

    # ------------------------------------------------------------------ transpose

    def transpose_pattern(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t_indptr, t_indices, perm): W^T as CSR of shape (n_cols, n_rows) with values[perm].

        t_indptr (n_cols + 1,) has indptr's dtype; t_indices (nnz,) holds row ids (uint16 when
        the indices are uint16 and n_rows <= 65536, else int32, or int64 if the indices are);
        perm (nnz,) int64. Computed once per matrix and cached, so a backward pass that needs
        dx = dy @ W runs as a plain (atomic-free) CSR product over W^T.
        """
        cache = self._transpose_cache
        if cache is None:
            nnz = self.nnz
            rows = _row_ids(self.indptr, nnz)
            cols = self.indices.long()
            # Entries are row-major, so a stable sort by column gives (column, row) order.
            perm = torch.argsort(cols, stable=True)
            if self.index_dtype == torch.int64:
                t_idx_dtype = torch.int64
            elif self.index_dtype == torch.uint16 and self.n_rows <= UINT16_MAX_COLS:
                t_idx_dtype = torch.uint16
            else:
                t_idx_dtype = torch.int32
            t_indices = rows[perm].to(t_idx_dtype)
            t_indptr = _indptr_from_counts(torch.bincount(cols, minlength=self.n_cols), nnz)
            t_indptr = t_indptr.to(self.indptr.dtype)
            cache = (t_indptr, t_indices, perm)
            object.__setattr__(self, "_transpose_cache", cache)
        return cache

    def transpose(self) -> "CSRMatrix":
        """CSRMatrix of W^T, shape (n_cols, n_rows)."""
        t_indptr, t_indices, perm = self.transpose_pattern()
        return CSRMatrix(t_indptr, t_indices, self.values[perm], (self.n_cols, self.n_rows))

    @property
    def T(self) -> "CSRMatrix":
        return self.transpose()

    # ------------------------------------------------------------------ validation

    def validate(self, name: str = "layer") -> "CSRMatrix":
        """Check every CSR invariant; return self, or raise CSRError naming layer `name`.

        Checks (vectorised, no loop over rows): shape is two positive ints with n_rows * n_cols
        within int64; tensors are 1-D, on one device, of allowed dtypes (uint16 indices only when
        n_cols <= 65536; int32 indptr only when nnz < 2**31); len(indptr) == n_rows + 1;
        len(indices) == len(values); indptr[0] == 0; indptr non-decreasing; indptr[-1] == nnz;
        0 <= indices < n_cols; indices strictly increasing within each row (sorted, unique);
        values finite.
        """
        where = f"layer {name!r}"
        shape = self.shape
        if (len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
            raise CSRError(f"{where}: shape must be two ints (n_rows, n_cols), got {shape!r}")
        n_rows, n_cols = shape
        if n_rows <= 0 or n_cols <= 0:
            raise CSRError(f"{where}: shape entries must be positive, got {shape}")
        if n_rows * n_cols > _INT64_MAX:
            raise CSRError(f"{where}: n_rows * n_cols = {n_rows * n_cols} does not fit in int64")
        for part in ("indptr", "indices", "values"):
            t = getattr(self, part)
            if not isinstance(t, torch.Tensor):
                raise CSRError(f"{where}: {part} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1:
                raise CSRError(f"{where}: {part} must be 1-D, got shape {tuple(t.shape)}")
            if t.layout != torch.strided:
                raise CSRError(f"{where}: {part} must be a dense (strided) tensor, got {t.layout}")
        indptr, indices, values = self.indptr, self.indices, self.values
        devices = {indptr.device, indices.device, values.device}
        if len(devices) != 1:
            raise CSRError(f"{where}: indptr, indices and values must be on one device, got "
                           f"{indptr.device}, {indices.device}, {values.device}")
        if indptr.dtype not in INDPTR_DTYPES:
            raise CSRError(f"{where}: indptr dtype must be int32 or int64, got {indptr.dtype}")
        if indices.dtype not in INDEX_DTYPES:
            raise CSRError(f"{where}: indices dtype must be uint16, int32 or int64, got {indices.dtype}")
        if values.dtype not in VALUE_DTYPES:
            raise CSRError(f"{where}: values dtype must be float32, float16, bfloat16 or float64, "
                           f"got {values.dtype}")
        if indices.dtype == torch.uint16 and n_cols > UINT16_MAX_COLS:
            raise CSRError(f"{where}: uint16 indices need n_cols <= {UINT16_MAX_COLS}, got "
                           f"n_cols={n_cols}; store indices as int32")
        if indptr.numel() != n_rows + 1:
            raise CSRError(f"{where}: len(indptr) must be n_rows + 1 = {n_rows + 1}, got {indptr.numel()}")
        nnz = values.numel()
        if indices.numel() != nnz:
            raise CSRError(f"{where}: len(indices) = {indices.numel()} must equal len(values) = {nnz}")
        if indptr.dtype == torch.int32 and nnz >= _INT32_LIMIT:
            raise CSRError(f"{where}: nnz = {nnz} needs int64 indptr, got int32")

        ip = indptr.long()
        first = int(ip[0])
        if first != 0:
            raise CSRError(f"{where}: indptr[0] must be 0, got {first}")
        steps = ip[1:] - ip[:-1]
        bad = (steps < 0).nonzero()
        if bad.numel():
            r = int(bad[0, 0])
            raise CSRError(f"{where}: indptr must be non-decreasing (row {r} has "
                           f"indptr[{r + 1}]={int(ip[r + 1])} < indptr[{r}]={int(ip[r])})")
        last = int(ip[-1])
        if last != nnz:
            raise CSRError(f"{where}: indptr[-1] must equal nnz = {nnz}, got indptr[{n_rows}]={last}")
        if nnz == 0:
            return self

        idx = indices.long()
        bad = ((idx < 0) | (idx >= n_cols)).nonzero()
        if bad.numel():
            j = int(bad[0, 0])
            r = _row_of(ip, j)
            raise CSRError(f"{where}: column index out of range: indices[{j}]={int(idx[j])} in row "
                           f"{r} is outside [0, {n_cols}) ({bad.numel()} such entries)")
        if nnz > 1:
            # Consecutive entries j, j+1 lie in one row unless j+1 starts a row.
            starts = torch.zeros(nnz, dtype=torch.bool, device=idx.device)
            row_starts = ip[1:-1]
            starts[row_starts[row_starts < nnz]] = True
            same_row = ~starts[1:]
            diff = idx[1:] - idx[:-1]
            dup = ((diff == 0) & same_row).nonzero()
            unsorted = ((diff < 0) & same_row).nonzero()
            if unsorted.numel():
                j = int(unsorted[0, 0])
                r = _row_of(ip, j)
                raise CSRError(f"{where}: column indices must be sorted within each row (row {r} "
                               f"has indices[{j}]={int(idx[j])} > indices[{j + 1}]={int(idx[j + 1])}); "
                               "sort each row's (index, value) pairs")
            if dup.numel():
                j = int(dup[0, 0])
                r = _row_of(ip, j)
                raise CSRError(f"{where}: duplicate column index {int(idx[j])} in row {r} "
                               f"(indices[{j}] == indices[{j + 1}]); each (row, column) may be "
                               "stored once")
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = (~finite).nonzero()
            j = int(bad[0, 0])
            r = _row_of(ip, j)
            raise CSRError(f"{where}: values must be finite; {bad.numel()} are not (first: "
                           f"values[{j}]={float(values[j])} at row {r}, column {int(idx[j])})")
        return self
