"""Content routing end to end: every matcher and every rule action, first match wins, and
modules counted per request. Real lbd, real mock EHR backends (they answer with X-Server and
/echo shows the headers that reached them)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from e2e_helpers import HOST, TEST_TIMEOUTS, Harness, LbdProcess, free_port


async def _routing_lbd(harness: Harness, tmp_path: Path) -> tuple[LbdProcess, int]:
    app = await harness.mock_backend("app1")
    static = await harness.mock_backend("static1")
    reports = await harness.mock_backend("reports1")
    port = free_port()
    stats = free_port()
    config: dict[str, Any] = {
        "global": {"log": {"access": "off"}, "stats": {"bind": f"{HOST}:{stats}"}},
        "defaults": {"timeouts": TEST_TIMEOUTS},
        "frontends": {
            "fe": {
                "bind": [f"{HOST}:{port}"],
                "modules": [
                    {"name": "dmu", "path_prefix": "/dmu"},
                    {"name": "static", "path_regex": r"\.(css|js|png)$"},
                ],
                "rules": [
                    {"when": {"path_prefix": "/admin"}, "deny": 403},
                    {
                        "when": {"host": "old.example"},
                        "redirect": {"location": "https://new.example/", "code": 301},
                    },
                    {
                        "when": {"path": "/ping"},
                        "return": {"status": 200, "body": "pong", "content_type": "text/plain"},
                    },
                    {
                        "when": {"path_prefix": "/echo"},
                        "set_header": {"X-Routed-By": "lbd"},
                        "del_header": ["X-Secret"],
                    },
                    {"when": {"method": "DELETE"}, "deny": 405},
                    {
                        "when": {"header": {"name": "X-Report", "present": True}},
                        "use_backend": "reports",
                    },
                    {
                        "when": {"query": {"name": "view", "equals": "report"}},
                        "use_backend": "reports",
                    },
                    {"when": {"src": "10.0.0.0/8"}, "deny": 403},
                    {"when": {"path_prefix": "/static"}, "use_backend": "static"},
                ],
                "default_backend": "app",
            }
        },
        "backends": {
            "app": {"servers": [{"name": "app1", "address": f"{HOST}:{app.port}"}]},
            "static": {"servers": [{"name": "static1", "address": f"{HOST}:{static.port}"}]},
            "reports": {"servers": [{"name": "reports1", "address": f"{HOST}:{reports.port}"}]},
        },
    }
    proc = LbdProcess(config, tmp_path, port)
    harness.procs.append((proc, False))
    await proc.start()
    return proc, stats


async def test_every_action_and_matcher(harness: Harness, tmp_path: Path) -> None:
    lbd, stats_port = await _routing_lbd(harness, tmp_path)
    base = f"http://{HOST}:{lbd.port}"
    session = harness.session()

    async def get(path: str, **kw: Any) -> aiohttp.ClientResponse:
        resp = await session.request(
            kw.pop("method", "GET"), base + path, allow_redirects=False, **kw
        )
        await resp.read()
        return resp

    assert (await get("/admin/users")).status == 403
    r = await get("/", headers={"Host": "OLD.example:8080"})  # host: case-insensitive, no port
    assert (r.status, r.headers["Location"]) == (301, "https://new.example/")
    r = await get("/ping")
    assert (r.status, await r.text(), r.headers["Content-Type"]) == (200, "pong", "text/plain")
    assert "X-Server" not in r.headers  # answered by lbd itself
    r = await get("/echo", headers={"X-Secret": "patient-123", "X-Keep": "1"})
    seen = {n.lower(): v for n, v in json.loads(await r.text())["headers"]}
    assert seen["x-routed-by"] == "lbd" and "x-secret" not in seen and seen["x-keep"] == "1"
    assert r.headers["X-Server"] == "app1"  # header edits fall through to the default backend
    assert (await get("/accueil/1", method="DELETE")).status == 405
    assert (await get("/accueil/1", headers={"X-Report": "y"})).headers["X-Server"] == "reports1"
    assert (await get("/accueil/1?view=report")).headers["X-Server"] == "reports1"
    assert (await get("/accueil/1?view=other")).headers["X-Server"] == "app1"
    assert (await get("/static/app.css")).headers["X-Server"] == "static1"
    assert (await get("/dmu/urgences")).headers["X-Server"] == "app1"
    # (Dot-segment bypasses need a raw socket, aiohttp normalizes URLs: test_inspect_e2e.py.)

    async with session.get(f"http://{HOST}:{stats_port}/stats.json") as resp:
        snap = await resp.json()
    fe = next(f for f in snap["frontends"] if f["name"] == "fe")
    modules = {m["name"]: m["requests"] for m in fe["modules"]}
    assert modules["dmu"] == 1 and modules["static"] == 1  # /dmu/urgences, /static/app.css
    assert fe["denied"] == 2  # /admin (deny 403) and DELETE (deny 405)


async def test_allbackups_spreads_over_every_backup(harness: Harness) -> None:
    primary = await harness.mock_backend("primary")
    spares = [await harness.mock_backend(f"spare{i}") for i in (1, 2)]
    servers = [
        {"name": "primary", "address": f"{HOST}:{free_port()}"},  # refuses: never usable
        *({"name": m.state.name, "address": f"{HOST}:{m.port}", "backup": True} for m in spares),
    ]
    lbd = await harness.lbd(
        [primary.port],
        backend={
            "servers": servers,
            "allbackups": True,
            "health_check": {"type": "tcp", "interval": "200ms", "rise": 1, "fall": 1},
        },
    )
    session = harness.session()
    seen: dict[str, int] = {}
    for _ in range(100):  # wait (bounded) until the dead primary is marked down
        if "primary is DOWN" in lbd.stderr():
            break
        await asyncio.sleep(0.05)
    for _ in range(40):
        async with session.get(f"http://{HOST}:{lbd.port}/accueil/") as resp:
            assert resp.status == 200
            seen[resp.headers["X-Server"]] = seen.get(resp.headers["X-Server"], 0) + 1
    assert set(seen) == {"spare1", "spare2"} and min(seen.values()) >= 10, seen
