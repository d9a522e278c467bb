"""systemd/lbd.service must pass `systemd-analyze verify` with nothing on stderr.

`verify` rejects a unit whose ExecStart/ExecReload binary does not exist, and /usr/local/bin/lbd
exists only on an installed host. So the test copies the unit into a temporary directory and
points both commands at an executable that exists here: the virtualenv's `lbd` console script
when it is installed, else /bin/true. Nothing else in the unit is changed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "lbd.service"
INSTALLED_BINARY = "/usr/local/bin/lbd"

pytestmark = pytest.mark.needs_tools


def _local_lbd() -> str:
    """An existing executable to stand in for the installed `lbd`."""
    venv_script = Path(sys.executable).parent / "lbd"
    return str(venv_script) if venv_script.is_file() else "/bin/true"


def _unit_for_this_host(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} run -c /etc/lbd/lbd.yaml" in text
    assert f"ExecReload={INSTALLED_BINARY} reload -c /etc/lbd/lbd.yaml" in text
    copy = tmp_path / "lbd.service"
    copy.write_text(text.replace(f"={INSTALLED_BINARY} ", f"={_local_lbd()} "))
    return copy


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (make tools installs it)")
    unit = _unit_for_this_host(tmp_path)
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(
    "directive",
    [
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=65536",
        "RuntimeDirectory=lbd",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures=native",
    ],
)
def test_unit_keeps_hardening(directive: str) -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    assert directive in lines
