"""Progress bars behave in logs: no carriage-return redraws when the stream is not a terminal."""
from __future__ import annotations

import io

import pytest

from lth_sparse.lottery.training import progress_bar


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(stream, progress=None, n=50) -> str:
    bar = progress_bar(n, "round 0 dense", progress, file=stream)
    for _ in range(n):
        bar.update(1)
    bar.close()
    return stream.getvalue()


def test_non_tty_stream_gets_no_bar(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert _drive(io.StringIO()) == ""


def test_terminal_gets_the_bar(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    out = _drive(FakeTTY())
    assert "\r" in out and "round 0 dense" in out


@pytest.mark.parametrize("env", ["1", "True"])
def test_tqdm_disable_wins_on_a_terminal(monkeypatch, env):
    monkeypatch.setenv("TQDM_DISABLE", env)
    assert _drive(FakeTTY()) == ""


def test_explicit_progress_overrides_detection(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert "round 0 dense" in _drive(io.StringIO(), progress=True)
    assert _drive(FakeTTY(), progress=False) == ""
