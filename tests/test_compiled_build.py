"""The mypyc build (setup.py): what runs compiled is what setup.py lists, and a build older than
its sources is caught.

Rules: these tests hold for both installs. A compiled one must import every listed module from
its extension; a pure one (LBD_PURE_PYTHON=1) from its source. Stale detection is checked on a
throwaway package tree with real files: contents decide, not time stamps.
"""

from __future__ import annotations

import ast
import importlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from lbd.compiled import compiled_modules, stale_modules, write_manifest

REPO = Path(__file__).resolve().parent.parent
SUFFIX = EXTENSION_SUFFIXES[0]


def hot_modules() -> list[str]:
    """HOT_MODULES from setup.py, as dotted names."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HOT_MODULES":
            paths = ast.literal_eval(node.value)
            return sorted(p[: -len(".py")].replace("/", ".") for p in paths)
    raise AssertionError("setup.py has no HOT_MODULES")


def test_what_runs_compiled_is_exactly_what_setup_py_lists() -> None:
    hot = hot_modules()
    assert "lbd.proxy.client" in hot and "lbd.proxy.exchange" in hot
    compiled = compiled_modules()
    if not compiled:  # a pure install: every module comes from its source
        for name in hot:
            file = importlib.import_module(name).__file__
            assert file is not None and file.endswith(".py"), (name, file)
        return
    assert compiled == hot
    for name in hot:
        file = importlib.import_module(name).__file__
        assert file is not None and file.endswith(tuple(EXTENSION_SUFFIXES)), (name, file)


def _tree(tmp_path: Path) -> Path:
    """A package with one compiled module (a.b) and one plain one (c), as setup.py leaves it."""
    pkg = tmp_path / "lbd"
    (pkg / "a").mkdir(parents=True)
    for rel in ("a/b.py", "c.py", "a/b" + SUFFIX, "_compiled__mypyc" + SUFFIX):
        (pkg / rel).write_text("x = 1\n")
    write_manifest(pkg, {"lbd.a.b": b"x = 1\n"})
    return pkg


def test_a_source_edited_after_its_build_is_stale(tmp_path: Path) -> None:
    pkg = _tree(tmp_path)
    assert compiled_modules(pkg) == ["lbd.a.b"]
    assert stale_modules(pkg) == []
    (pkg / "c.py").write_text("x = 2\n")  # not compiled: its edits take effect anyway
    assert stale_modules(pkg) == []
    os.utime(pkg / "a" / "b.py", (4_000_000_000, 4_000_000_000))  # touched, same content
    assert stale_modules(pkg) == []
    (pkg / "a" / "b.py").write_text("x = 2\n")
    assert stale_modules(pkg) == ["lbd.a.b"]
    write_manifest(pkg, {"lbd.a.b": b"x = 2\n"})  # rebuilt since
    assert stale_modules(pkg) == []


def test_a_build_without_its_manifest_counts_as_stale(tmp_path: Path) -> None:
    pkg = _tree(tmp_path)
    (pkg / "_compiled_sources.txt").unlink()
    assert stale_modules(pkg) == ["lbd.a.b"]


def test_a_pure_tree_has_nothing_compiled_or_stale(tmp_path: Path) -> None:
    pkg = tmp_path / "lbd"
    pkg.mkdir()
    (pkg / "x.py").write_text("")
    assert compiled_modules(pkg) == [] and stale_modules(pkg) == []
