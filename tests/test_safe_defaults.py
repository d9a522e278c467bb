"""Safe defaults: the shipped configurations bind loopback only, lbd's own pages show no
version, and lbd adds no `Server` header (a server's own passes through untouched).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from e2e_helpers import REPO, Harness, fixed, free_port, response
from test_tls_kit import config, raw_request, start_lbd, stats_glob

import lbd
from lbd.config.load import load_config


def _loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def test_shipped_configs_bind_loopback_only() -> None:
    files = sorted((REPO / "conf").glob("*.yaml"))
    assert files
    for path in files:
        cfg = load_config(str(path))
        for fe in cfg.frontends:
            for address in fe.bind:
                assert _loopback(address.host), f"{path.name}: frontend {fe.name} on {address}"
        if cfg.global_.stats is not None:
            assert _loopback(cfg.global_.stats.bind.host), path.name
        admin = cfg.global_.admin_socket
        if admin is not None:
            assert cfg.global_.admin_socket_mode & 0o007 == 0


async def test_no_server_header_no_version(harness: Harness, tmp_path: Path) -> None:
    with_server = await harness.raw_backend(fixed(response(200, b"ok", [("Server", "EHR/9")])))
    bare = await harness.raw_backend(fixed(response(200, b"ok")))
    port, stats = free_port(), free_port()
    cfg = config(port, [bare.port], glob=stats_glob(stats))
    cfg["backends"]["ehr"] = {
        "servers": [{"name": "e1", "address": f"127.0.0.1:{with_server.port}"}]
    }
    cfg["backends"]["down"] = {"servers": [{"name": "d1", "address": f"127.0.0.1:{free_port()}"}]}
    cfg["frontends"]["fe"]["rules"] = [
        {"when": {"path_prefix": "/ehr"}, "use_backend": "ehr"},
        {"when": {"path_prefix": "/down"}, "use_backend": "down"},
        {"when": {"path_prefix": "/forbidden"}, "deny": 403},
    ]
    cfg["defaults"]["retries"] = 0
    await start_lbd(harness, cfg, port)
    version = lbd.__version__.encode()

    def get(path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: ehr.test\r\nConnection: close\r\n\r\n".encode()

    proxied = await raw_request(port, get("/"))
    assert proxied.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nServer:" not in proxied.split(b"\r\n\r\n")[0]
    passed = await raw_request(port, get("/ehr"))
    assert passed.count(b"\r\nServer: ") == 1 and b"\r\nServer: EHR/9\r\n" in passed
    for path, status in (("/down", b"503"), ("/forbidden", b"403")):
        page = await raw_request(port, get(path))
        assert page.startswith(b"HTTP/1.1 " + status), page[:40]
        assert b"\r\nServer:" not in page
        assert b"lbd" not in page.lower() and version not in page
    bad = await raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ") and b"lbd" not in bad.lower()
    for path in ("/stats", "/stats.json", "/stats.csv", "/metrics"):
        page = await raw_request(stats, get(path))
        assert page.startswith(b"HTTP/1.1 200 "), page[:40]
        head, body = page.split(b"\r\n\r\n", 1)
        assert b"\r\nServer:" not in head, (path, head)
        if path in ("/stats", "/stats.csv"):
            # The pages a browser shows; /stats.json and /metrics carry the version for
            # monitoring, as HAProxy's exporter does (haproxy_process_build_info).
            assert version not in body, path
