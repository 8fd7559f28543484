"""Fixtures of the bench tests: a tiny ticket file."""
from __future__ import annotations

import pytest

from lth_sparse.bench.grids import make_masked_mlp
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.sparse.ticket_file import save_ticket


@pytest.fixture
def tiny_ticket(tmp_path):
    """A 30-20-10 ticket at 80% sparsity, saved as a ticket file; returns its path."""
    model = sparse_mlp_from_mlp(make_masked_mlp([30, 20, 10], 0.8, seed=3), backend="reference")
    path = tmp_path / "tiny.safetensors"
    save_ticket(path, model.to_csr_layers())
    return path
