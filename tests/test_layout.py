"""The package's one direction of flow, checked on the source: the lottery wing never imports
the sparse wing, the sparse wing never imports the lottery wing or the bridge, and only
lth_sparse.bridge (plus the top-level interfaces) imports both."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import lth_sparse

PKG = Path(lth_sparse.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Every lth_sparse module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("lth_sparse")}


def _wing_files(wing: str) -> list[Path]:
    return sorted((PKG / wing).rglob("*.py"))


@pytest.mark.parametrize("wing, forbidden", [
    ("lottery", ("lth_sparse.sparse", "lth_sparse.bridge", "lth_sparse.bench")),
    ("sparse", ("lth_sparse.lottery", "lth_sparse.bridge", "lth_sparse.bench")),
])
def test_wings_do_not_import_each_other(wing, forbidden):
    files = _wing_files(wing)
    assert files, f"no modules found in lth_sparse/{wing}"
    offenders = {f"{p.relative_to(PKG)} imports {name}"
                 for p in files for name in _imports(p) if name.startswith(forbidden)}
    assert not offenders, sorted(offenders)


def test_only_the_bridge_imports_both_wings():
    both = []
    for path in PKG.rglob("*.py"):
        names = _imports(path)
        if (any(n.startswith("lth_sparse.lottery") for n in names)
                and any(n.startswith("lth_sparse.sparse") for n in names)):
            both.append(str(path.relative_to(PKG)))
    # the interfaces (CLI, demo, benchmarks) sit above both wings and may use either
    allowed_prefixes = ("bridge/", "bench", "cli.py", "demo.py")
    assert [p for p in both if not p.startswith(allowed_prefixes)] == []


def test_public_api_names_resolve():
    for name in lth_sparse.__all__:
        assert getattr(lth_sparse, name) is not None, name
    importlib.import_module("lth_sparse.bridge.convert")
