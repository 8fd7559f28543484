"""The C runtime (`lth-sparse-run`, csrc/runtime) as a ticket provider: found, checked, timed by
itself.

Protocol (the runtime's own CLI):
- correctness: `lth-sparse-run TICKET --input X.npy --output Y.npy --threads N`, X float32
  (batch, n_in), Y float32 (batch, n_out) logits; compared with the fp64 reference like every
  other provider before any timing is read;
- timing: `lth-sparse-run TICKET --bench --batch B --repeats R --threads N --input X.npy`
  prints one JSON object per line and batch, e.g.
  {"bench": "lth_ticket_forward", "batch": 1, "threads": 2, "repeats": 200, "median_us": 31.2,
   "min_us": ..., "p10_us": ..., "p90_us": ..., ...}; lines that are not such objects are
  ignored. The timing is the runtime's own (steady_clock around lth_ticket_forward), so it
  carries no Python overhead.
The binary is --runtime PATH, else $LTH_SPARSE_RUNTIME, else `lth-sparse-run` on PATH, else the
newest build/**/lth-sparse-run of the checkout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from lth_sparse.bench.machine import REPO_ROOT
from lth_sparse.errors import ConfigError

BINARY = "lth-sparse-run"
ENV_VAR = "LTH_SPARSE_RUNTIME"
BUILD_HINT = ("build it with `cmake -S . -B build -DLTH_SPARSE_RUNTIME=ON && cmake --build "
              "build` or pass --runtime PATH")
TIMEOUT_S = 600


class RuntimeFailed(RuntimeError):
    """lth-sparse-run exited non-zero or printed no usable result."""


def find_runtime(explicit: str | None = None, root: Path | None = None
                 ) -> tuple[Path | None, str]:
    """(path, how it was found) or (None, why none was found); root: the checkout whose
    build/ is searched (default: this package's)."""
    root = root or REPO_ROOT
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"--runtime {explicit}: no executable file there; {BUILD_HINT}")
        return path, "--runtime"
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if path.is_file() and os.access(path, os.X_OK):
            return path, f"${ENV_VAR}"
        return None, f"${ENV_VAR}={env} is not an executable file"
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path), "PATH"
    built = [p for p in (root / "build").glob(f"**/{BINARY}")
             if p.is_file() and os.access(p, os.X_OK)] if (root / "build").is_dir() else []
    if built:
        return max(built, key=lambda p: p.stat().st_mtime), "build/"
    return None, f"{BINARY} not found (not on PATH, not under {root / 'build'}); {BUILD_HINT}"


def parse_bench_output(text: str) -> dict[int, dict]:
    """{batch: {"median_us": ..., other numeric fields}} from the runtime's --bench stdout."""
    results = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        batch, median = doc.get("batch"), doc.get("median_us")
        if isinstance(batch, int) and isinstance(median, (int, float)) and median > 0:
            results[batch] = {k: v for k, v in doc.items() if isinstance(v, (int, float))}
    return results


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeFailed(f"{Path(cmd[0]).name} exited {proc.returncode}: {tail[0][:200]}")
    return proc.stdout


class CRuntime:
    """One ticket on the runtime binary at a thread count."""

    def __init__(self, binary: Path, ticket: str | os.PathLike, threads: int):
        self.binary, self.ticket, self.threads = Path(binary), str(ticket), threads
        self._tmp = tempfile.TemporaryDirectory(prefix="lth_sparse_crt_")

    def close(self) -> None:
        self._tmp.cleanup()

    def _input(self, x: torch.Tensor) -> Path:
        path = Path(self._tmp.name) / f"x_{x.shape[0]}.npy"
        np.save(path, np.ascontiguousarray(x.detach().cpu().float().numpy()))
        return path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The runtime's logits (batch, n_out) fp32 for x (batch, n_in)."""
        out = Path(self._tmp.name) / "y.npy"
        _run([str(self.binary), self.ticket, "--input", str(self._input(x)), "--output",
              str(out), "--threads", str(self.threads)])
        return torch.from_numpy(np.load(out))

    def bench(self, x: torch.Tensor, repeats: int) -> dict:
        """The runtime's own timing of x's batch: {"median_us", ...}."""
        batch = int(x.shape[0])
        text = _run([str(self.binary), self.ticket, "--bench", "--batch", str(batch),
                     "--repeats", str(repeats), "--threads", str(self.threads),
                     "--input", str(self._input(x))])
        found = parse_bench_output(text)
        if batch not in found:
            raise RuntimeFailed(f"{self.binary.name} --bench printed no median_us for batch "
                                f"{batch}")
        return found[batch]


def summary_from_runtime(result: dict) -> dict:
    """The runtime's --bench fields as a result row's timing columns (ms)."""
    ms = {k: result[k] / 1e3 for k in ("median_us", "min_us", "p10_us", "p90_us") if k in result}
    return dict(median_ms=ms["median_us"], min_ms=ms.get("min_us"),
                q25_ms=None, q75_ms=None, max_ms=None,
                repeats=int(result.get("repeats", 0)) or None,
                timer="lth-sparse-run --bench (steady_clock; p10-p90 "
                      f"{ms.get('p10_us', float('nan')):.4f}-{ms.get('p90_us', float('nan')):.4f}"
                      " ms)")
