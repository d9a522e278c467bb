"""Shared fixtures. The end-to-end kit itself lives in e2e_helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e_helpers import Harness

from lbd.compiled import stale_modules


def pytest_sessionstart(session: pytest.Session) -> None:
    """Never test an old build: a compiled module runs instead of its edited source."""
    stale = stale_modules()
    if stale:
        pytest.exit(
            f"compiled before their last edit: {', '.join(stale)}; rebuild with `make` or "
            "`.venv/bin/pip install -e .` (LBD_PURE_PYTHON=1 installs without compiling)",
            returncode=2,
        )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """Backends, lbd processes and clients for one test, stopped in order at teardown: clients,
    then lbd (which must exit 0 on SIGTERM without logging a traceback), then backends."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.aclose()
