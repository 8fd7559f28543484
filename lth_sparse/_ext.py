"""Capability probe for the compiled extension `lth_sparse._C`.

Importing lth_sparse never fails because the extension is missing: the probe records why, and
the `cpu` backend reports that reason when asked for explicitly. Set LTH_SPARSE_DISABLE_EXT=1 to
force the fallback (pure-PyTorch reference kernels), e.g. to test it.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from types import ModuleType

log = logging.getLogger(__name__)

DISABLE_ENV = "LTH_SPARSE_DISABLE_EXT"


@lru_cache(maxsize=None)
def _probe() -> tuple[ModuleType | None, str]:
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0"):
        return None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    try:
        from lth_sparse import _C  # type: ignore[attr-defined]
    except ImportError as exc:  # not built, or built for another Python/CPU
        reason = (f"lth_sparse._C could not be imported ({exc}); rebuild it with "
                  "`pip install -e .` (needs cmake and a C++17 compiler)")
        log.info(reason)
        return None, reason
    return _C, "ok"


def extension() -> ModuleType | None:
    """The loaded `_C` module, or None when it is unavailable (see `unavailable_reason`)."""
    return _probe()[0]


def unavailable_reason() -> str:
    """Why the extension is unavailable ("ok" when it is loaded)."""
    return _probe()[1]


def build_info() -> dict:
    """Build facts of the extension: version, openmp, max_threads, simd, compiler; or why it is missing."""
    ext = extension()
    if ext is None:
        return {"available": False, "reason": unavailable_reason()}
    return {"available": True, **ext.build_info()}
