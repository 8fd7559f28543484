"""Facts recorded with every result: the machine, versions, threads, and the exact source
(git SHA and whether the tree was dirty), plus the rule that keeps dirty-tree numbers out of
benchmarks/results/.

What counts as dirty (`git_state`): any change to a tracked file, staged or not, except under
benchmarks/results/ (those files are this tool's outputs, rewritten by every run; counting them
would make the second run refuse), and any untracked file under the code that is built or
imported (lth_sparse/, csrc/, setup.py, CMakeLists.txt, pyproject.toml: CMake globs csrc/, so a
stray .cpp changes the build). Untracked files elsewhere (notes, runs/, scratch) cannot change
a measurement and are ignored; gitignored files (build outputs) are never listed by git.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from lth_sparse._ext import build_info, extension
from lth_sparse._version import __version__
from lth_sparse.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_SUBDIR = Path("benchmarks") / "results"
# untracked files here change what is built or imported, so they make the tree dirty
SOURCE_PATHS = ("lth_sparse/", "csrc/", "setup.py", "CMakeLists.txt", "pyproject.toml")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------- git

@dataclass
class GitState:
    """The source a run measured: sha None when `root` is not a git checkout."""
    sha: str | None
    dirty_paths: list[str] = field(default_factory=list)

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_paths)

    @property
    def label(self) -> str:
        """'<sha>', '<sha>-dirty' or 'unknown' (as recorded in results.md)."""
        if self.sha is None:
            return "unknown"
        return self.sha + ("-dirty" if self.dirty else "")


def dirty_paths_from_porcelain(porcelain_z: str) -> list[str]:
    """The paths of `git status --porcelain=v1 -z --untracked-files=all` output that make the
    tree dirty (see the module docstring): tracked changes outside benchmarks/results/ and
    untracked files under SOURCE_PATHS."""
    entries = porcelain_z.split("\0")
    dirty, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename/copy entry is followed by its source path
            i += 1
        if code == "??":
            if path.startswith(SOURCE_PATHS):
                dirty.append(path)
        elif not path.startswith(RESULTS_SUBDIR.as_posix() + "/"):
            dirty.append(path)
    return dirty


def git_state(root: Path = REPO_ROOT) -> GitState:
    """HEAD's SHA and the dirty paths of the checkout at `root` (sha None: not a checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return GitState(None)
        status = subprocess.run(["git", "status", "--porcelain=v1", "-z",
                                 "--untracked-files=all"], cwd=root, capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return GitState(None)
    return GitState(head.stdout.strip(), dirty_paths_from_porcelain(status.stdout))


def results_root(root: Path = REPO_ROOT) -> Path:
    """benchmarks/results/ of the checkout (or of the working directory when installed)."""
    base = root if (root / "benchmarks").is_dir() else Path.cwd()
    return base / RESULTS_SUBDIR


def check_clean_for_results(out_dir: Path, state: GitState, allow_dirty: bool,
                            results: Path | None = None) -> None:
    """Refuse (ConfigError) to write into benchmarks/results/ what a dirty or unknown tree
    measured: committed tables must be reproducible from the commit they name."""
    results = (results or results_root()).resolve()
    target = Path(out_dir).resolve()
    if allow_dirty or not (target == results or results in target.parents):
        return
    if state.sha is None:
        raise ConfigError(f"refusing to write into {results}: this is not a git checkout, so "
                          "the results could not name the source they measured; pass "
                          "--allow-dirty to write anyway, or --out-dir elsewhere")
    if state.dirty:
        shown = ", ".join(state.dirty_paths[:5]) + (" ..." if len(state.dirty_paths) > 5 else "")
        raise ConfigError(f"refusing to write into {results}: the git tree is dirty ({shown}), "
                          "so the results would not match the commit they name; commit or "
                          "stash the changes, pass --out-dir elsewhere, or pass --allow-dirty "
                          "(recorded as git_dirty in the results)")


# ---------------------------------------------------------------------------- machine

def machine_info(device: str, state: GitState | None = None) -> dict:
    """Machine, versions and build facts recorded with every result."""
    state = state or git_state()
    info = {
        "cpu": cpu_model(), "cores": available_cores(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "triton": package_version("triton"), "numpy": np.__version__,
        "scipy": package_version("scipy"), "onnxruntime": package_version("onnxruntime"),
        "lth_sparse": __version__, "extension": build_info(),
        "git_sha": state.label, "git_dirty": state.dirty if state.sha else None,
        "git_dirty_paths": state.dirty_paths[:20],
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        # threading knobs that change timings (OpenMP spin-waiting matters on a busy machine)
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                            "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                                            "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")
                if k in os.environ},
        "load_average": load_average(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_tag(device: str) -> str:
    """Folder name for a machine: 'cpu-amd-epyc-2c', 'cuda-nvidia-h100-80gb-hbm3'."""
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_model()}-{available_cores()}c"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"-(processor|cpu|with-radeon-graphics)\b", "", slug)
    return f"{device}-{slug[:48].strip('-')}"


def set_threads(threads: int) -> None:
    """One thread count for PyTorch (intra-op) and the C++ extension (OpenMP)."""
    torch.set_num_threads(threads)
    ext = extension()
    if ext is not None and hasattr(ext, "set_num_threads"):
        ext.set_num_threads(threads)
