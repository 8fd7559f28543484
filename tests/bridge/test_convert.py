"""The bridge's conversions: pruned nn.Linear / MLP <-> CSRMatrix / SparseLinear / SparseMLP."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from lth_sparse.bridge.convert import (
    csr_from_linear,
    dense_mlp_from_sparse,
    sparse_mlp_from_mlp,
)
from lth_sparse.lottery.models import MLP
from tests.helpers import TOL
from tests.sparse.test_nn import _pruned_mlp


def test_from_pruned_linear():
    lin = nn.Linear(31, 17)
    prune.l1_unstructured(lin, "weight", amount=0.8)
    m = csr_from_linear(lin, name="fc1")
    mask = lin.weight_mask
    assert m.nnz == int(mask.sum())
    assert torch.equal(m.to_dense(), (lin.weight_orig * mask).detach())
    assert torch.equal(m.to_dense() != 0, mask.bool() & (lin.weight_orig != 0))
    x = torch.randn(5, 31)
    ref = lin(x).detach()
    assert torch.allclose(x @ m.to_dense().T + lin.bias.detach(), ref, **TOL[torch.float32])


def test_from_pruned_linear_keeps_masked_in_zero_weight():
    lin = nn.Linear(4, 3)
    prune.l1_unstructured(lin, "weight", amount=0.5)
    kept = lin.weight_mask.nonzero()[0]
    with torch.no_grad():
        lin.weight_orig[kept[0], kept[1]] = 0.0
    m = csr_from_linear(lin)
    assert m.nnz == int(lin.weight_mask.sum())  # the zero weight stays in the ticket's pattern


def test_from_unpruned_linear_stores_nonzeros():
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight[:, 2] = 0
    m = csr_from_linear(lin)
    assert m.nnz == 25
    assert torch.equal(m.to_dense(), lin.weight.detach())


def test_from_mlp_to_dense_mlp_round_trip():
    mlp = _pruned_mlp()
    sparse = sparse_mlp_from_mlp(mlp, backend="reference")
    assert sparse.layer_names == ["fc1", "fc2", "fc3"]
    assert [layer.relu for layer in sparse.layers.values()] == [True, True, False]
    for layer, lin in zip(sparse.layers.values(), mlp.layers):
        assert layer.nnz == int(lin.weight_mask.sum())  # explicit zero kept
        assert torch.equal(layer.to_dense_weight(), lin.weight)
    assert sparse.nnz == sum(int(lin.weight_mask.sum()) for lin in mlp.layers)

    x = torch.randn(8, 1, 4, 5)
    torch.testing.assert_close(sparse(x), mlp(x), **TOL[torch.float32])

    dense = dense_mlp_from_sparse(sparse)
    assert isinstance(dense, MLP)
    for a, b in zip(dense.layers, mlp.layers):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    masked = dense_mlp_from_sparse(sparse, masks=True)
    for a, b in zip(masked.layers, mlp.layers):
        assert torch.equal(a.weight_mask, b.weight_mask)
    # and back again
    again = sparse_mlp_from_mlp(masked, backend="reference")
    for a, b in zip(again.layers.values(), sparse.layers.values()):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)


def test_from_mlp_dense_and_dtypes():
    mlp = MLP(input_size=12, hidden=(8,), num_classes=3, seed=1)
    with torch.no_grad():
        mlp.layers[0].weight[mlp.layers[0].weight.abs() < 0.2] = 0.0
    sparse = sparse_mlp_from_mlp(mlp, backend="reference", index_dtype=torch.int32,
                                value_dtype=torch.bfloat16)
    fc1 = sparse.layers["fc1"]
    assert fc1.nnz == int((mlp.layers[0].weight != 0).sum())
    assert fc1.indices.dtype == torch.int32 and fc1.values.dtype == torch.bfloat16
    assert fc1.bias.dtype == torch.bfloat16
    x = torch.randn(5, 12)
    torch.testing.assert_close(sparse(x.bfloat16()).float(), mlp(x), **TOL[torch.bfloat16])
    assert dense_mlp_from_sparse(sparse).layers[0].weight.dtype == torch.bfloat16
