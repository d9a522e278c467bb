"""Run Python code in a subprocess that imports lbd from its .py sources, even when a compiled
build (mypyc, see setup.py) sits beside them: for the few tests that need what compiled classes
refuse, such as a Python subclass of ServerState that counts calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Installed before any lbd import: a finder that loads only source files for lbd and tests
# (Python would otherwise prefer the extension module next to each source).
_PRELUDE = """
import importlib.machinery as m, sys
_root = {root!r}
def _sources_only(path):
    if path not in (_root, _root + "/tests") and not path.startswith(_root + "/lbd"):
        raise ImportError(path)  # everything else (the venv may live in the repo) as usual
    return m.FileFinder(path, (m.SourceFileLoader, m.SOURCE_SUFFIXES))
sys.path_hooks.insert(0, _sources_only)
sys.path_importer_cache.clear()
sys.path[:0] = [_root, _root + "/tests"]
import lbd.state
assert lbd.state.__file__.endswith(".py"), lbd.state.__file__
"""


def run_json(code: str, timeout: float = 120.0) -> Any:
    """Run `code` (which prints one JSON document last) on the sources; its parsed output."""
    script = _PRELUDE.format(root=str(REPO)) + code
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
