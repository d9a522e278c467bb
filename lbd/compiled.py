"""Which lbd modules run compiled by mypyc (see setup.py), and which of those builds are stale.

Rules: plain Python, never compiled itself; reads only the compiled modules' sources (a few
hundred KB, once per test session). A compiled module
sits next to its source (`x.py` and `x.cpython-311-….so`) and Python imports the `.so` first,
so after an edit the old build keeps running until the package is rebuilt: `stale_modules`
names those, and the test suite refuses to run on them.
"""

from __future__ import annotations

import hashlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# The group's shared library (mypycify group_name="lbd._compiled"): rebuilt whenever any
# compiled module changed, so its time stamp is the build's.
_SHARED = "_compiled__mypyc"
# Written by setup.py next to the builds: the sha256 of every source it compiled.
MANIFEST = "_compiled_sources.txt"


def _builds(package: Path) -> dict[str, Path]:
    """Dotted module name → its compiled file, for every compiled lbd module."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for suffix in EXTENSION_SUFFIXES:  # the most specific first (".cpython-311-….so", ".so")
        for path in package.rglob("*" + suffix):
            if path in seen:
                continue
            seen.add(path)
            stem = path.name[: -len(suffix)]
            parts = path.parent.relative_to(package).parts
            found[".".join(("lbd", *parts, stem))] = path
    return found


def compiled_modules(package: Path = _PACKAGE) -> list[str]:
    """Dotted names of the lbd modules that run compiled, sorted; empty for a pure install."""
    return sorted(name for name in _builds(package) if not name.endswith(_SHARED))


def stale_modules(package: Path = _PACKAGE) -> list[str]:
    """Compiled modules whose source differs from the one that was compiled (an editable
    install edited since its build). Contents are compared, not times: a checkout or merge
    that rewrites a file unchanged is not an edit."""
    builds = _builds(package)
    if "lbd." + _SHARED not in builds:
        return []
    recorded = read_manifest(package)
    stale = []
    for name in compiled_modules(package):
        source = builds[name].with_name(name.rsplit(".", 1)[1] + ".py")
        if not source.exists():
            continue
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if recorded.get(name) != digest:
            stale.append(name)
    return stale


def read_manifest(package: Path = _PACKAGE) -> dict[str, str]:
    """Dotted module name → sha256 of the source it was compiled from (written by setup.py)."""
    path = package / MANIFEST
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition(" ")
        if digest and name:
            out[name] = digest
    return out


def write_manifest(package: Path, sources: dict[str, bytes]) -> None:
    """Record what is being compiled: one `SHA256 dotted.name` line per module."""
    lines = [f"{hashlib.sha256(data).hexdigest()} {name}" for name, data in sorted(sources.items())]
    (package / MANIFEST).write_text("\n".join(lines) + "\n")
