"""Errors a user can cause. The CLI prints their message and exits with code 2 (no traceback).

Every message names the problem and the fix.
"""


class LthSparseError(Exception):
    """Base class for user-facing errors (bad config, data, file, shapes, dtypes)."""


class ConfigError(LthSparseError, ValueError):
    """A configuration value is invalid."""


class DataError(LthSparseError):
    """Dataset files are missing or unreadable."""


class RunStoreError(LthSparseError):
    """A run directory is missing, incomplete, or from an incompatible version."""


class CSRError(LthSparseError, ValueError):
    """A CSR matrix violates an invariant (names the layer and the invariant)."""


class TicketFileError(LthSparseError):
    """A ticket file is unreadable, corrupt, or of an unknown format."""


class BackendUnavailableError(LthSparseError, RuntimeError):
    """A kernel backend was requested explicitly but cannot run here (says why)."""
