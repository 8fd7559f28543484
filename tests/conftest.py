"""Test-session setup shared by every test file.

- Without CUDA, Triton kernels run through Triton's interpreter: TRITON_INTERPRET must be set
  before any @triton.jit function is created, so it is set here, first.
- Tests marked `cuda` are skipped without a GPU (CI has none; they run where one is lent).
- Tests marked `mnist` need the MNIST files: they skip when the data is missing, except when
  LTH_SPARSE_REQUIRE_DATA=1 (CI), where missing data is a failure.
- LTH_SPARSE_REQUIRE_BACKENDS=1 (CI) stops the session at once if the C++ extension or the
  Triton backend cannot run, instead of letting their tests skip.
- Property-based tests (hypothesis) run the "default" profile: few examples, a few seconds in
  all, fit for CI. LTH_SPARSE_HYPOTHESIS_PROFILE=thorough runs many more (minutes).
  Per-example deadlines are hang guards (generous: this machine is shared), not speed targets.
"""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]

try:
    from datetime import timedelta

    from hypothesis import HealthCheck, settings

    _common = dict(deadline=timedelta(seconds=20), print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("default", max_examples=20, derandomize=False, **_common)
    settings.register_profile("thorough", max_examples=400, **_common)
    settings.load_profile(os.environ.get("LTH_SPARSE_HYPOTHESIS_PROFILE", "default"))
except ImportError:  # hypothesis is a dev dependency (make setup installs it); other tests still run
    pass


def _mnist_root() -> Path:
    env = os.environ.get("LTH_SPARSE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def pytest_sessionstart(session):
    if os.environ.get("LTH_SPARSE_REQUIRE_BACKENDS") != "1":
        return
    from lth_sparse.sparse.ops import backend_status

    for name in ("cpu", "triton"):
        ok, reason = backend_status(name)
        if not ok:
            raise pytest.UsageError(f"LTH_SPARSE_REQUIRE_BACKENDS=1 but backend {name!r} cannot "
                                    f"run: {reason}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Folder holding MNIST/raw/*-ubyte (torchvision layout)."""
    root = _mnist_root()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        msg = f"MNIST not found under {root}/MNIST/raw; set LTH_SPARSE_DATA to the folder holding MNIST/"
        if os.environ.get("LTH_SPARSE_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root
