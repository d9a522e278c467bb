"""Build hook: compile lbd's request path with mypyc, unless LBD_PURE_PYTHON=1 at install time.

Rules:
- Only HOT_MODULES are compiled, into native extension modules next to their sources (one
  shared library, lbd/_compiled__mypyc*.so); everything else stays plain Python. The same
  sources run unmodified as plain Python: `LBD_PURE_PYTHON=1 pip install -e .` builds nothing.
- A module belongs here when it runs per request or per connection and compiles with no change
  in behaviour. Compiled code differs from Python in ways mypy does not flag: a compiled class
  admits no Python subclass (so lbd/health/ and lbd/errors.py, subclassed elsewhere, stay
  out; a test that needs a subclass of ServerState runs on the sources in a subprocess, see
  tests/source_only.py), keeps no `__slots__` (lbd/stats/aggregate.py reads attribute
  descriptors), cannot be weakly referenced (so lbd/logs/access.py stays out), ignores
  `Cls.__init__(obj)` on an existing object, and boxes a fixed-length tuple anew each time it
  is stored (compare tuples with ==, never `is`).
- Speed in compiled code: a module constant must be `Final` (otherwise every use is a dict
  lookup), a tuple constant indexed by a variable must be typed `tuple[X, ...]` (a fixed-length
  one is boxed anew at each use), and a method call on bytes (`lower`, `find`, `split`) or a
  regular-expression match costs hundreds to thousands of instructions where a loop over the
  bytes with a table costs a few per byte. Count with `bench/instructions.sh`.
- An editable install keeps the compiled modules in the source tree: after editing one of them,
  reinstall (`make` does it when a source changed) or its stale build keeps running.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from setuptools import setup

HOT_MODULES = [
    "lbd/runtime.py",
    "lbd/state.py",
    "lbd/proxy/client.py",
    "lbd/proxy/exchange.py",
    "lbd/proxy/upstream.py",
    "lbd/proxy/connpool.py",
    "lbd/proxy/timer.py",
    "lbd/http/head.py",
    "lbd/http/inspect.py",
    "lbd/http/response_head.py",
    "lbd/http/target.py",
    "lbd/http/wire.py",
    "lbd/stats/counters.py",
    "lbd/routing/matchers.py",
    "lbd/routing/router.py",
    "lbd/balancing/chash.py",
    "lbd/balancing/ewma.py",
    "lbd/balancing/first.py",
    "lbd/balancing/hashing.py",
    "lbd/balancing/keys.py",
    "lbd/balancing/leastconn.py",
    "lbd/balancing/maphash.py",
    "lbd/balancing/random_draws.py",
    "lbd/balancing/roundrobin.py",
    "lbd/balancing/staticrr.py",
    "lbd/balancing/weighted.py",
    "lbd/limits/access.py",
    "lbd/limits/gate.py",
    "lbd/limits/rate.py",
    "lbd/sticky/cookie.py",
    "lbd/sticky/policy.py",
    "lbd/sticky/table.py",
    "lbd/logs/formats.py",
]


def _drop_builds() -> None:
    """A pure install must not leave an earlier build in the tree: Python would import it."""
    Path("lbd/_compiled_sources.txt").unlink(missing_ok=True)
    names = [m[: -len(".py")] for m in HOT_MODULES] + ["lbd/_compiled__mypyc"]
    for suffix in EXTENSION_SUFFIXES:
        for name in names:
            Path(name + suffix).unlink(missing_ok=True)


def _write_manifest() -> None:
    """What is compiled, by content (lbd/compiled.py tells a stale build by it). Read with
    runpy: importing lbd here would need its dependencies in pip's build environment."""
    import runpy

    compiled = runpy.run_path("lbd/compiled.py")
    sources = {m[: -len(".py")].replace("/", "."): Path(m).read_bytes() for m in HOT_MODULES}
    compiled["write_manifest"](Path("lbd"), sources)


def _can_compile() -> str | None:
    """Why this machine cannot build C extensions, or None when it can."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (apt-get install gcc)"
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        return "no Python headers (apt-get install python3-dev)"
    return None


def _extensions() -> list[object]:
    if os.environ.get("LBD_PURE_PYTHON") == "1":
        _drop_builds()
        return []
    why = _can_compile()
    if why is not None:
        # Same code, slower: never fail an install for want of a compiler.
        print(f"lbd: building plain Python, not compiled: {why}", file=sys.stderr)
        _drop_builds()
        return []
    from mypyc.build import mypycify

    _write_manifest()

    # One group: calls between compiled modules stay native. Its shared library lives inside
    # the package (not a top-level module), so editable and regular installs both find it.
    return list(mypycify(HOT_MODULES, opt_level="3", group_name="lbd._compiled"))


setup(ext_modules=_extensions(), package_data={"lbd": ["_compiled_sources.txt"]})
