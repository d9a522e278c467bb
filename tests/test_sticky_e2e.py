"""Session persistence end to end: a real lbd, real mock EHR backends (or scripted raw ones),
real HTTP clients with and without a cookie jar, and the admin socket for DRAIN and reload.

Rules: every loop is bounded (a fixed number of requests); waits go through `wait_until` with a
generous deadline; assertions are about where requests landed and what headers crossed lbd,
never about speed.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from typing import Any

import aiohttp
import pytest
import yaml
from e2e_helpers import (
    HOST,
    Harness,
    LbdProcess,
    Message,
    free_port,
    lbd_config,
    response,
    serve,
    wait_until,
)

from lbd.sticky.cookie import opaque_value

ALGORITHMS = (
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "uri",
    "hdr(X-Key)",
    "cookie(JSESSIONID)",
    "random",
    "ewma",
)
INSERT = {"cookie": {"name": "SERVERID", "mode": "insert", "indirect": True, "nocache": True}}


async def start_lbd(
    h: Harness,
    ports: list[int],
    backend: dict[str, Any],
    *,
    admin: bool = False,
    stats: bool = False,
    access_log: str = "off",
) -> LbdProcess:
    """lbd with one backend `app` (servers s1, s2… on `ports`), optionally an admin socket and a
    stats listener (registered with the harness, so it is stopped and checked at teardown)."""
    port = free_port()
    cfg = lbd_config(port, ports, backend=backend, access_log=access_log)
    if admin:
        cfg["global"]["admin_socket"] = str(h.workdir / f"admin-{port}.sock")
    if stats:
        cfg["global"]["stats"] = {"bind": f"{HOST}:{free_port()}"}
    proc = LbdProcess(cfg, h.workdir, port)
    h.procs.append((proc, False))
    return await proc.start()


async def ctl(proc: LbdProcess, *words: str) -> str:
    """`lbd ctl -c FILE WORDS...` (or `lbd reload -c FILE`); the answer, asserting exit 0."""
    args = (
        ["reload", "-c", str(proc.path)]
        if words == ("reload",)
        else ["ctl", "-c", str(proc.path), *words]
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0, (out, err)
    return out.decode()


async def metrics(proc: LbdProcess) -> str:
    bind = proc.config["global"]["stats"]["bind"]
    async with aiohttp.ClientSession() as s, s.get(f"http://{bind}/metrics") as r:
        assert r.status == 200
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text`."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}}")


def opaque(server: str) -> str:
    """The persistence cookie value lbd gives a server of backend `app`."""
    return opaque_value("app", server).decode()


def jar_session(h: Harness) -> aiohttp.ClientSession:
    # Cookies from an IP-address host are refused by aiohttp's default jar (`unsafe` allows them).
    return h.session(cookie_jar=aiohttp.CookieJar(unsafe=True))


def plain_session(h: Harness) -> aiohttp.ClientSession:
    """No cookie jar: each request carries exactly the cookies it is given."""
    return h.session(cookie_jar=aiohttp.DummyCookieJar())


def set_cookies(r: aiohttp.ClientResponse, name: str = "SERVERID") -> list[str]:
    return [v for v in r.headers.getall("Set-Cookie", []) if v.startswith(name + "=")]


async def mocks(h: Harness, n: int) -> list[int]:
    return [(await h.mock_backend(f"s{i + 1}")).port for i in range(n)]


# --- cookie insert ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_cookie_jar_stays_on_one_server_under_every_algorithm(
    harness: Harness, algorithm: str
) -> None:
    ports = await mocks(harness, 3)
    proc = await start_lbd(harness, ports, {"balance": algorithm, "sticky": INSERT})
    url = f"http://{HOST}:{proc.port}"
    async with jar_session(harness) as s:
        landed: list[str] = []
        inserted: list[int] = []
        for i in range(100):
            # Vary everything a hash algorithm reads, so that only persistence can hold.
            headers = {"X-Key": f"k{i}", "Cookie": f"JSESSIONID=j{i}"}
            async with s.get(f"{url}/accueil/{i}", headers=headers) as r:
                assert r.status == 200
                await r.read()
                landed.append(r.headers["X-Server"])
                if set_cookies(r):
                    inserted.append(i)
    assert len(set(landed)) == 1, landed
    assert inserted == [0]  # the first response sets the cookie, later ones do not


async def test_without_cookies_the_same_requests_spread(harness: Harness) -> None:
    """The control for the test above: the backend does balance when no cookie comes back."""
    ports = await mocks(harness, 3)
    proc = await start_lbd(harness, ports, {"sticky": INSERT})
    async with plain_session(harness) as s:
        landed = set()
        for i in range(9):
            async with s.get(f"http://{HOST}:{proc.port}/accueil/{i}") as r:
                assert r.status == 200 and len(set_cookies(r)) == 1
                landed.add(r.headers["X-Server"])
    assert landed == {"s1", "s2", "s3"}


async def test_indirect_hides_the_cookie_and_nocache_marks_the_response(harness: Harness) -> None:
    seen: list[Message] = []

    def answer(req: Message) -> bytes:
        seen.append(req)
        cache = [("Cache-Control", "public, max-age=60")] if req.target == "/cached" else []
        return response(200, b"ok", cache)

    backend = await harness.raw_backend(serve(answer))
    sticky = {"cookie": {**INSERT["cookie"], "httponly": True, "samesite": "Lax"}}
    proc = await start_lbd(harness, [backend.port], {"sticky": sticky})
    value = opaque("s1")
    async with plain_session(harness) as s:
        async with s.get(f"http://{HOST}:{proc.port}/cached") as r:
            assert r.status == 200
            assert set_cookies(r) == [f"SERVERID={value}; path=/; HttpOnly; SameSite=Lax"]
            assert r.headers.getall("Cache-Control") == ["private, max-age=60"]
        async with s.get(f"http://{HOST}:{proc.port}/plain") as r:
            assert r.headers.getall("Cache-Control") == ["private"]
        cookie = {"Cookie": f"a=1; SERVERID={value}; b=2"}
        async with s.get(f"http://{HOST}:{proc.port}/again", headers=cookie) as r:
            assert r.status == 200 and set_cookies(r) == []
            assert "Cache-Control" not in r.headers  # nothing inserted: nothing to protect
        async with s.get(
            f"http://{HOST}:{proc.port}/only", headers={"Cookie": f"SERVERID={value}"}
        ) as r:
            assert r.status == 200
    assert [m.target for m in seen] == ["/cached", "/plain", "/again", "/only"]
    assert seen[2].values("cookie") == ["a=1; b=2"]
    assert seen[3].values("cookie") == []  # the only cookie was ours: no empty header left
    assert all("SERVERID" not in bytes(m.raw).decode() for m in seen)


# --- rewrite and prefix: the application's own cookie -------------------------------------------


def app_cookie_backend(name: str, cookie: str) -> Any:
    """A raw backend that sets `cookie` on /login and echoes the Cookie header it received."""

    def answer(req: Message) -> bytes:
        received = ";".join(req.values("cookie"))
        headers = [("X-Server", name)]
        if req.target == "/login":
            headers.append(("Set-Cookie", f"{cookie}={name}-session; Path=/; HttpOnly"))
        return response(200, received.encode(), headers)

    return serve(answer)


@pytest.mark.parametrize("mode", ["prefix", "rewrite"])
async def test_prefix_and_rewrite_round_trip(harness: Harness, mode: str) -> None:
    name = "JSESSIONID" if mode == "prefix" else "SRV"
    backends = [await harness.raw_backend(app_cookie_backend(f"s{i}", name)) for i in (1, 2)]
    proc = await start_lbd(
        harness, [b.port for b in backends], {"sticky": {"cookie": {"name": name, "mode": mode}}}
    )
    url = f"http://{HOST}:{proc.port}"
    async with jar_session(harness) as s:
        async with s.get(f"{url}/login") as r:
            server = r.headers["X-Server"]
            (line,) = set_cookies(r, name)
        value = opaque(server)
        if mode == "prefix":
            assert line == f"{name}={value}~{server}-session; Path=/; HttpOnly"
        else:
            assert line == f"{name}={value}; Path=/; HttpOnly"
        for i in range(20):
            async with s.get(f"{url}/accueil/{i}") as r:
                assert r.headers["X-Server"] == server
                body = (await r.read()).decode()
                # prefix: the server gets its own value back, without lbd's part
                expected = f"{name}={server}-session" if mode == "prefix" else f"{name}={value}"
                assert body == expected


# --- stick tables -------------------------------------------------------------------------------


async def test_learned_jsessionid_goes_back_to_the_server_that_set_it(harness: Harness) -> None:
    ports = await mocks(harness, 3)
    table = {"table": {"on": "cookie", "learn_cookie": "JSESSIONID"}}
    proc = await start_lbd(harness, ports, {"sticky": table})
    url = f"http://{HOST}:{proc.port}"
    async with plain_session(harness) as s:
        async with s.get(f"{url}/login") as r:
            owner = r.headers["X-Server"]
            session = r.cookies["JSESSIONID"].value
        landed = set()
        for i in range(30):
            async with s.get(
                f"{url}/accueil/{i}", headers={"Cookie": f"JSESSIONID={session}"}
            ) as r:
                assert r.status == 200
                landed.add(r.headers["X-Server"])
        assert landed == {owner}
        others = set()
        for i in range(6):  # an unknown session id is balanced normally
            async with s.get(f"{url}/accueil/{i}", headers={"Cookie": f"JSESSIONID=x{i}"}) as r:
                others.add(r.headers["X-Server"])
        assert len(others) == 3


async def _get_from(port: int, source: str, path: str) -> tuple[int, str]:
    """One HTTP/1.1 request on a fresh connection from `source` (an address in 127/8)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(HOST, port, local_addr=(source, 0)), 5
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: ehr\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    server = re.search(rb"\r\nX-Server: (\S+)\r\n", data)
    assert server is not None, data
    return status, server[1].decode()


async def test_source_stickiness_per_client_address(harness: Harness) -> None:
    ports = await mocks(harness, 3)
    proc = await start_lbd(harness, ports, {"sticky": {"table": {"on": "src"}}}, stats=True)
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    owners: dict[str, set[str]] = {src: set() for src in sources}
    for i in range(10):
        for src in sources:
            status, server = await _get_from(proc.port, src, f"/accueil/{i}")
            assert status == 200
            owners[src].add(server)
    assert all(len(v) == 1 for v in owners.values()), owners
    assert len({next(iter(v)) for v in owners.values()}) > 1  # addresses were balanced
    text = await metrics(proc)
    assert metric(text, "lbd_stick_table_entries", backend="app") == 4
    assert metric(text, "lbd_backend_persistence_total", backend="app", outcome="new") == 4
    assert metric(text, "lbd_backend_persistence_total", backend="app", outcome="valid") == 36


async def test_table_size_evicts_the_least_recent_and_expire_empties_it(harness: Harness) -> None:
    ports = await mocks(harness, 2)
    table = {"table": {"on": "src", "size": 2, "expire": "1s"}}
    proc = await start_lbd(harness, ports, {"sticky": table}, stats=True)
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        assert (await _get_from(proc.port, src, "/accueil/"))[0] == 200
    text = await metrics(proc)
    assert metric(text, "lbd_stick_table_entries", backend="app") == 2
    assert metric(text, "lbd_stick_table_evictions_total", backend="app") == 1
    # 127.0.0.2 was the least recently used: evicted, so its next request is a new one.
    await _get_from(proc.port, "127.0.0.2", "/accueil/")
    text = await metrics(proc)
    assert metric(text, "lbd_backend_persistence_total", backend="app", outcome="new") == 4

    async def emptied() -> bool:
        return metric(await metrics(proc), "lbd_stick_table_entries", backend="app") == 0

    # The sweeper empties the table without any request (expire 1s; generous bound).
    for _ in range(100):
        if await emptied():
            break
        await asyncio.sleep(0.1)
    text = await metrics(proc)
    assert metric(text, "lbd_stick_table_entries", backend="app") == 0
    assert metric(text, "lbd_stick_table_expirations_total", backend="app") == 2


# --- failover, drain, forged cookies ------------------------------------------------------------


async def test_killed_server_sends_the_session_elsewhere_with_a_new_cookie(
    harness: Harness,
) -> None:
    backends = [await harness.mock_backend(f"s{i}") for i in (1, 2, 3)]
    log_path = harness.workdir / "access.log"
    proc = await start_lbd(
        harness,
        [m.port for m in backends],
        {"sticky": INSERT},
        access_log=str(log_path),
        stats=True,
    )
    url = f"http://{HOST}:{proc.port}"
    async with jar_session(harness) as s:
        async with s.get(f"{url}/accueil/") as r:
            first = r.headers["X-Server"]
        victim = backends[int(first[1]) - 1]
        await victim.close()
        async with s.get(f"{url}/accueil/after") as r:
            assert r.status == 200
            second = r.headers["X-Server"]
            assert second != first
            assert set_cookies(r) == [f"SERVERID={opaque(second)}; path=/"]
        for i in range(10):  # and the session stays on its new server
            async with s.get(f"{url}/accueil/{i}") as r:
                assert r.status == 200 and r.headers["X-Server"] == second and not set_cookies(r)

    def logged() -> list[str]:
        return log_path.read_text().splitlines() if log_path.exists() else []

    await wait_until(lambda: len(logged()) >= 12, what="12 access log lines")
    flags = [line.split()[9] for line in logged()]
    assert flags[0] == "--NI" and flags[1] == "--DI" and set(flags[2:]) == {"--VN"}, flags
    text = await metrics(proc)
    outcomes = {
        o: metric(text, "lbd_backend_persistence_total", backend="app", outcome=o)
        for o in ("new", "valid", "redispatched", "invalid", "expired")
    }
    assert outcomes == {"new": 1, "valid": 10, "redispatched": 1, "invalid": 0, "expired": 0}


async def test_drain_keeps_existing_sessions_and_takes_no_new_ones(harness: Harness) -> None:
    ports = await mocks(harness, 3)
    proc = await start_lbd(harness, ports, {"sticky": INSERT}, admin=True)
    url = f"http://{HOST}:{proc.port}"
    async with jar_session(harness) as s:
        async with s.get(f"{url}/accueil/") as r:
            drained = r.headers["X-Server"]
        await ctl(proc, "set", "server", f"app/{drained}", "state", "drain")
        for i in range(20):
            async with s.get(f"{url}/accueil/{i}") as r:
                assert r.status == 200 and r.headers["X-Server"] == drained
    async with plain_session(harness) as fresh:
        for i in range(12):
            async with fresh.get(f"{url}/accueil/{i}") as r:
                assert r.status == 200 and r.headers["X-Server"] != drained
    await ctl(proc, "set", "server", f"app/{drained}", "state", "maint")
    async with plain_session(harness) as s:
        cookie = {"Cookie": f"SERVERID={opaque(drained)}"}
        async with s.get(f"{url}/accueil/", headers=cookie) as r:
            assert r.status == 200 and r.headers["X-Server"] != drained  # MAINT: redispatched
            assert set_cookies(r) == [f"SERVERID={opaque(r.headers['X-Server'])}; path=/"]


async def test_forged_or_garbage_cookie_is_balanced_normally_and_counted(harness: Harness) -> None:
    ports = await mocks(harness, 2)
    proc = await start_lbd(harness, ports, {"sticky": INSERT}, stats=True)
    garbage = ["deadbeefdeadbeef", "", "%00%01", "x" * 200, "s1", "'; DROP TABLE"]
    async with plain_session(harness) as s:
        landed = set()
        for value in garbage:
            async with s.get(
                f"http://{HOST}:{proc.port}/accueil/", headers={"Cookie": f"SERVERID={value}"}
            ) as r:
                assert r.status == 200
                landed.add(r.headers["X-Server"])
                assert len(set_cookies(r)) == 1  # a fresh, valid cookie replaces it
    assert landed == {"s1", "s2"}
    text = await metrics(proc)
    assert metric(text, "lbd_backend_persistence_total", backend="app", outcome="invalid") == 6
    assert metric(text, "lbd_backend_persistence_total", backend="app", outcome="valid") == 0


# --- reload ------------------------------------------------------------------------------------


async def test_stick_table_entries_survive_a_reload(harness: Harness) -> None:
    ports = await mocks(harness, 3)
    table = {"table": {"on": "cookie", "learn_cookie": "JSESSIONID"}}
    proc = await start_lbd(harness, ports[:2], {"sticky": table}, admin=True, stats=True)
    url = f"http://{HOST}:{proc.port}"
    sessions: dict[str, str] = {}
    async with plain_session(harness) as s:
        for _ in range(4):
            async with s.get(f"{url}/login") as r:
                sessions[r.cookies["JSESSIONID"].value] = r.headers["X-Server"]
        assert set(sessions.values()) == {"s1", "s2"}
        # Reload with a third server and a bigger table: same backend, same server names.
        cfg = proc.config
        cfg["backends"]["app"]["servers"].append({"name": "s3", "address": f"{HOST}:{ports[2]}"})
        cfg["backends"]["app"]["sticky"]["table"]["size"] = 5000
        proc.path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        answer = await ctl(proc, "reload")
        assert "server added: app/s3" in answer
        text = await metrics(proc)
        assert metric(text, "lbd_stick_table_entries", backend="app") == 4
        assert metric(text, "lbd_stick_table_size", backend="app") == 5000
        for i in range(3):
            for session, owner in sessions.items():
                cookie = {"Cookie": f"JSESSIONID={session}"}
                async with s.get(f"{url}/accueil/{i}", headers=cookie) as r:
                    assert r.status == 200 and r.headers["X-Server"] == owner
        stat = json.loads(await ctl(proc, "show", "stat", "json"))
        assert stat["backends"][0]["stick_table"]["entries"] == 4
    summary = await ctl(proc, "show", "table")
    assert "# table: app, on: cookie, size: 5000, used: 4" in summary
    entries = (await ctl(proc, "show", "table", "app")).splitlines()[1:]
    assert sorted(line.split()[1] for line in entries if line) == sorted(sessions.values())
    listing = "\n".join(entries)
    assert not any(session in listing for session in sessions)  # session ids are never shown
