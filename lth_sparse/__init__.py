"""lth_sparse: find lottery tickets, export them as CSR, run them with sparse kernels.

Heavy pieces (Triton, the data pipeline) load lazily; `import lth_sparse` stays cheap and never
fails because the compiled extension is missing (see `lth_sparse.build_info()`).
"""
from importlib import import_module

from lth_sparse._ext import build_info
from lth_sparse._version import __version__
from lth_sparse.errors import LthSparseError

# public name -> module that defines it (imported on first access)
_LAZY = {
    "spmm": "lth_sparse.sparse.ops",
    "spmm_t": "lth_sparse.sparse.ops",
    "sddmm": "lth_sparse.sparse.ops",
    "available_backends": "lth_sparse.sparse.ops",
    "CSRMatrix": "lth_sparse.sparse.csr",
    "SparseLinear": "lth_sparse.sparse.nn",
    "sparse_mlp_from_mlp": "lth_sparse.bridge.convert",
    "dense_mlp_from_sparse": "lth_sparse.bridge.convert",
    "SparseMLP": "lth_sparse.sparse.nn",
    "FusedTrainer": "lth_sparse.sparse.trainer",
    "save_ticket": "lth_sparse.sparse.ticket_file",
    "read_ticket": "lth_sparse.sparse.ticket_file",
    "load_ticket": "lth_sparse.sparse.ticket_file",
    "MLP": "lth_sparse.lottery.models",
    "ExperimentConfig": "lth_sparse.lottery.config",
    "find_ticket": "lth_sparse.bridge.trainers",
    "find_supermask": "lth_sparse.lottery.supermask",
    "SupermaskConfig": "lth_sparse.lottery.supermask",
    "export_run": "lth_sparse.bridge.export",
    "train_ticket": "lth_sparse.bridge.retrain",
    "load_dataset": "lth_sparse.lottery.data",
}

__all__ = ["__version__", "build_info", "LthSparseError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lth_sparse' has no attribute {name!r}")
