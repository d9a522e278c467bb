"""Access control end to end: frontend `allow`/`deny` source lists (closed at accept), rule
`src:` matchers (403), the stats listener's basic auth off loopback, the admin socket's mode
and owner. Other clients are played by other loopback addresses (127.0.0.2, …): the kernel
routes all of 127.0.0.0/8 to lo, so a socket bound to one really connects from it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml
from e2e_helpers import REPO, Harness, fixed, free_port, response, wait_until
from test_tls_kit import config, metric, raw_request, start_lbd, stats_glob

GET = b"GET / HTTP/1.1\r\nHost: ehr.test\r\nConnection: close\r\n\r\n"


async def test_frontend_deny_list_closes_at_accept(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    cfg = config(port, [backend.port], {"deny": ["127.0.0.2/32", "10.0.0.0/8"]}, stats_glob(stats))
    await start_lbd(harness, cfg, port)

    assert (await raw_request(port, GET, "127.0.0.1")).startswith(b"HTTP/1.1 200 ")
    assert await raw_request(port, GET, "127.0.0.2") == b""  # closed, not a byte answered
    assert (await raw_request(port, GET, "127.0.0.3")).startswith(b"HTTP/1.1 200 ")
    assert backend.accepted == 1  # the denied request never reached a server (pooled conn)
    assert len(backend.requests) == 2
    assert await metric(stats, "lbd_frontend_denied_connections_total", 'frontend="fe"') == 1


async def test_frontend_allow_list(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    # 127.0.0.0/30 allowed except 127.0.0.2 (deny wins); IPv6 entries are accepted too.
    fe = {"allow": ["127.0.0.0/30", "::1/128"], "deny": "127.0.0.2"}
    await start_lbd(harness, config(port, [backend.port], fe, stats_glob(stats)), port)
    assert (await raw_request(port, GET, "127.0.0.1")).startswith(b"HTTP/1.1 200 ")
    assert (await raw_request(port, GET, "127.0.0.3")).startswith(b"HTTP/1.1 200 ")
    assert await raw_request(port, GET, "127.0.0.2") == b""
    assert await raw_request(port, GET, "127.0.0.9") == b""
    assert await metric(stats, "lbd_frontend_denied_connections_total", 'frontend="fe"') == 2


async def test_rule_src_denies_with_403(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port = free_port()
    fe = {"rules": [{"when": {"src": "127.0.0.4/31", "path_prefix": "/admin"}, "deny": 403}]}
    await start_lbd(harness, config(port, [backend.port], fe), port)
    admin_get = GET.replace(b"GET / ", b"GET /admin/x ")
    assert (await raw_request(port, admin_get, "127.0.0.4")).startswith(b"HTTP/1.1 403 ")
    assert (await raw_request(port, admin_get, "127.0.0.5")).startswith(b"HTTP/1.1 403 ")
    assert (await raw_request(port, admin_get, "127.0.0.1")).startswith(b"HTTP/1.1 200 ")
    assert (await raw_request(port, GET, "127.0.0.4")).startswith(b"HTTP/1.1 200 ")


async def test_bad_cidrs_are_config_errors(tmp_path: Path) -> None:
    cfg = config(free_port(), [free_port()], {"allow": ["10.0.0.0/33"], "deny": [{"x": 1}]})
    path = tmp_path / "lbd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = _lbd("check", path)
    assert out.returncode == 1
    assert "frontends.fe.allow[0]: expected an address or CIDR network" in out.stdout
    assert "frontends.fe.deny[0]: expected a string" in out.stdout


def _lbd(command: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbd", command, "-c", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_stats_off_loopback_requires_auth_file(tmp_path: Path) -> None:
    cfg = config(free_port(), [free_port()], glob={"stats": {"bind": f"0.0.0.0:{free_port()}"}})
    path = tmp_path / "lbd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = await asyncio.to_thread(_lbd, "check", path)
    assert out.returncode == 1
    assert "global.stats.bind: 0.0.0.0:" in out.stdout
    assert "is not loopback: set auth_file" in out.stdout


async def test_stats_with_auth_file_asks_for_credentials(harness: Harness, tmp_path: Path) -> None:
    digest = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    (tmp_path / "stats.htpasswd").write_text(f"ops:{{SHA}}{digest}\n")
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    # Every address (0.0.0.0), reached here through loopback only.
    glob = {"stats": {"bind": f"0.0.0.0:{stats}", "auth_file": str(tmp_path / "stats.htpasswd")}}
    await start_lbd(harness, config(port, [backend.port], glob=glob), port)

    async def get(path: str, auth: str | None) -> bytes:
        extra = f"Authorization: Basic {auth}\r\n" if auth else ""
        req = f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode()
        return await raw_request(stats, req, "127.0.0.2")

    good = base64.b64encode(b"ops:s3cret").decode()
    bad = base64.b64encode(b"ops:guess").decode()
    for path in ("/stats", "/metrics", "/stats.json", "/stats.csv"):
        refused = await get(path, None)
        assert refused.startswith(b"HTTP/1.1 401 "), refused[:80]
        assert b'WWW-Authenticate: Basic realm="lbd stats"' in refused
        assert (await get(path, bad)).startswith(b"HTTP/1.1 401 ")
        assert (await get(path, good)).startswith(b"HTTP/1.1 200 ")


async def test_admin_socket_mode_and_group(harness: Harness, tmp_path: Path) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port = free_port()
    sock = tmp_path / "run" / "admin.sock"
    glob = {
        "admin_socket": str(sock),
        "admin_socket_mode": "0660",
        "admin_socket_group": str(os.getgid()),
        "admin_socket_owner": str(os.getuid()),
    }
    await start_lbd(harness, config(port, [backend.port], glob=glob), port)
    await wait_until(sock.exists, what="the admin socket")
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


async def test_admin_socket_default_mode_is_0600(harness: Harness, tmp_path: Path) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port = free_port()
    sock = tmp_path / "admin.sock"
    await start_lbd(harness, config(port, [backend.port], glob={"admin_socket": str(sock)}), port)
    await wait_until(sock.exists, what="the admin socket")
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


async def test_admin_socket_mode_for_others_refused(tmp_path: Path) -> None:
    glob = {"admin_socket": str(tmp_path / "a.sock"), "admin_socket_mode": "0666"}
    cfg = config(free_port(), [free_port()], glob=glob)
    cfg["global"]["admin_socket_owner"] = "no-such-user-lbd"
    path = tmp_path / "lbd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = await asyncio.to_thread(_lbd, "check", path)
    assert out.returncode == 1
    assert "global.admin_socket_mode: must not give others access" in out.stdout
    # An unknown owner is found at start (names resolve on the host that runs lbd): exit 3.
    cfg["global"]["admin_socket_mode"] = "0660"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert (await asyncio.to_thread(_lbd, "check", path)).returncode == 0
    run = await asyncio.to_thread(_lbd, "run", path)
    assert run.returncode == 3
    assert "no-such-user-lbd" in run.stderr
    assert not (tmp_path / "a.sock").exists()
