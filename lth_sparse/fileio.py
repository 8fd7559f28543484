"""Atomic file writes: readers see the old file or the whole new one, never a half-written one.

Write to a temp file in the destination folder, flush + fsync, os.replace over the target, then
fsync the folder so the rename itself survives a crash. On any failure the temp file is removed
and an existing target is left untouched.

Permissions: the file gets `mode` (default 0o666) with the process umask applied, exactly as
open(2) / the shell would create it (umask 022 -> 0644), so a ticket exported for deployment is
readable by other users unless the caller restricts it (mode=0o600). The temp file is created
with that mode directly (O_CREAT | O_EXCL), so the kernel applies the umask: no racy
os.umask() read-and-restore, and os.replace keeps the mode.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

DEFAULT_MODE = 0o666


def _create_temp(folder: Path, name: str, mode: int) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {folder / name}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                 mode: int = DEFAULT_MODE) -> Path:
    """Create or replace `path` with what `write(fileobj)` writes; returns the path.

    mode: permission bits before the umask (like open(2)); 0o600 keeps the file private.
    """
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits in 0o000..0o777, got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = DEFAULT_MODE) -> Path:
    return atomic_write(path, lambda f: f.write(data), mode=mode)


def atomic_write_json(path: str | os.PathLike, obj, *, mode: int = DEFAULT_MODE) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(),
                              mode=mode)
