"""Which lbd modules run compiled by mypyc (see setup.py), and which of those builds are stale.

Rules: plain Python, never compiled itself; no I/O beyond a few stat calls. A compiled module
sits next to its source (`x.py` and `x.cpython-311-….so`) and Python imports the `.so` first,
so after an edit the old build keeps running until the package is rebuilt: `stale_modules`
names those, and the test suite refuses to run on them.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# The group's shared library (mypycify group_name="lbd._compiled"): rebuilt whenever any
# compiled module changed, so its time stamp is the build's.
_SHARED = "_compiled__mypyc"


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
    """Compiled modules whose source changed after the build (an editable install edited)."""
    builds = _builds(package)
    shared = builds.get("lbd." + _SHARED)
    if shared is None:
        return []
    built_at = shared.stat().st_mtime
    stale = []
    for name in compiled_modules(package):
        source = builds[name].with_name(name.rsplit(".", 1)[1] + ".py")
        if source.exists() and source.stat().st_mtime > built_at:
            stale.append(name)
    return stale
