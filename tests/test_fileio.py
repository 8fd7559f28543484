"""Atomic writes create files with the permissions a user expects: 0o666 minus the umask
(0o644 under umask 022), or the caller's `mode`; still atomic (no temp left behind)."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from lth_sparse.errors import ConfigError
from lth_sparse.fileio import atomic_write, atomic_write_bytes, atomic_write_json
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.ticket_file import save_ticket


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_default_mode_is_666_minus_umask(tmp_path, mask, expected):
    with umask(mask):
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        atomic_write(tmp_path / "b.bin", lambda f: f.write(b"y"))
    for name in ("a.bin", "a.json", "b.bin"):
        assert _mode(tmp_path / name) == expected, name


def test_explicit_mode_is_honoured_and_replaces_the_old_mode(tmp_path):
    path = tmp_path / "t.bin"
    with umask(0o022):
        atomic_write_bytes(path, b"old")
        assert _mode(path) == 0o644
        atomic_write_bytes(path, b"new", mode=0o600)
    assert _mode(path) == 0o600 and path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]  # no temp file left


def test_bad_mode_is_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match="mode must be permission bits"):
        atomic_write_bytes(tmp_path / "t.bin", b"x", mode=0o1777)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_save_ticket_mode(tmp_path, fmt):
    csr = CSRMatrix.from_dense(torch.eye(3))
    with umask(0o022):
        save_ticket(tmp_path / "public", [("fc1", csr, None)], fmt=fmt)
        save_ticket(tmp_path / "private", [("fc1", csr, None)], fmt=fmt, mode=0o600)
        with pytest.raises(ConfigError, match="mode must be permission bits"):
            save_ticket(tmp_path / "bad", [("fc1", csr, None)], fmt=fmt, mode="600")
    assert _mode(tmp_path / "public") == 0o644
    assert _mode(tmp_path / "private") == 0o600
    assert not (tmp_path / "bad").exists()
