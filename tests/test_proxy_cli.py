"""Proxy core, end to end: `lbd run` start-up failures and `lbd check` on the shipped files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e_helpers import HOST, REPO, free_port, lbd_config

pytestmark = pytest.mark.timeout(60)

CONF_FILES = sorted((REPO / "conf").glob("*.yaml"))


def lbd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbd", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_run_with_the_port_already_in_use_exits_3(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "busy.yaml"
        config.write_text(yaml.safe_dump(lbd_config(port, [free_port()])))

        done = lbd("run", "-c", str(config))

    assert done.returncode == 3, done.stderr
    assert f"{HOST}:{port}" in done.stderr
    assert "address already in use" in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_the_shipped_configuration_files_exist() -> None:
    assert {p.name for p in CONF_FILES} >= {"lbd.yaml", "demo.yaml", "minimal.yaml"}


@pytest.mark.parametrize("path", CONF_FILES, ids=[p.name for p in CONF_FILES])
def test_check_accepts_every_shipped_configuration(path: Path) -> None:
    done = lbd("check", "-c", str(path))

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "configuration valid"
