"""Balancing end to end: a real lbd process, real mock EHR backends (each answers with
`X-Server: NAME`), real aiohttp clients; who served what is read from that header.

Rules: every loop is bounded by a count and, where it runs on time, by a deadline; health
transitions are awaited through lbd's own log lines with a generous bound. Deterministic
algorithms (smooth WRR on one connection, hashes) are asserted exactly; load-aware ones
(leastconn, ewma, first under concurrency) only by a clear majority, never by a timing.
The pure algorithms have exact-sequence tests in test_balancing.py; here the question is
whether the proxy feeds them the right keys, events and load.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from e2e_helpers import HOST, Harness, LbdProcess, Wire, free_port, wait_until

from lbd.mock.app import RunningMock

CHECK = {"type": "http", "path": "/health", "interval": "200ms", "rise": 1, "fall": 1}
TRANSITION_BOUND = 5.0  # seconds for a health transition with interval 200ms, rise/fall 1


def srv(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "address": f"{HOST}:{port}", **extra}


async def mocks(h: Harness, n: int) -> list[RunningMock]:
    """n mock backends named app1…appN (lbd calls them s1…sN)."""
    return [await h.mock_backend(f"app{i + 1}") for i in range(n)]


def one_connection(h: Harness) -> aiohttp.ClientSession:
    """A session whose requests all go, in order, over one keep-alive connection."""
    return h.session(connector=aiohttp.TCPConnector(limit=1), cookie_jar=aiohttp.DummyCookieJar())


async def served_by(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str] | None = None,
) -> str:
    """GET `url`; it must answer 200; the name of the mock that answered."""
    async with session.get(url, headers=headers) as resp:
        body = await resp.read()
        assert resp.status == 200, (resp.status, body[:200])
        return resp.headers["X-Server"]


async def control(mock: RunningMock, what: str) -> None:
    """A `/_mock/...` control request straight to the mock (not through lbd)."""
    async with (
        aiohttp.ClientSession() as direct,
        direct.get(f"{mock.url}/_mock/{what}") as resp,
    ):
        assert resp.status == 200, await resp.text()


def log_count(lbd: LbdProcess, line: str) -> int:
    return lbd.stderr().count(line)


async def wait_log(lbd: LbdProcess, line: str, before: int) -> None:
    """Until `line` appears in lbd's stderr more often than `before` times (bounded)."""
    await wait_until(
        lambda: log_count(lbd, line) > before, TRANSITION_BOUND, f"{line!r} in lbd's log"
    )


# --- 1. roundrobin ------------------------------------------------------------------------------


async def test_roundrobin_weights_3_to_1_give_exactly_300_and_100_of_400(
    harness: Harness,
) -> None:
    a, b = await mocks(harness, 2)
    lbd = await harness.lbd(
        [],
        backend={"servers": [srv("s1", a.port, weight=3), srv("s2", b.port, weight=1)]},
    )
    session = one_connection(harness)
    url = f"http://{HOST}:{lbd.port}/accueil/patient"
    order = [await served_by(session, url) for _ in range(400)]
    assert Counter(order) == {"app1": 300, "app2": 100}
    # Smooth WRR spreads the heavy server out: `a a b a`, never four in a row, never `b b`.
    assert order[:4] == ["app1", "app1", "app2", "app1"]
    text = "".join("a" if s == "app1" else "b" for s in order)
    assert "aaaa" not in text and "bb" not in text


# --- 2. hash algorithms -------------------------------------------------------------------------


async def test_source_sends_every_connection_of_one_client_to_one_server(
    harness: Harness,
) -> None:
    await mocks(harness, 3)
    lbd = await harness.lbd([m.port for m in harness.mocks], backend={"balance": "source"})
    # A new connection (new source port) per request: only the address may decide.
    session = harness.session(connector=aiohttp.TCPConnector(force_close=True))
    url = f"http://{HOST}:{lbd.port}/accueil/patient"
    seen = Counter([await served_by(session, url) for _ in range(100)])
    assert len(seen) == 1 and sum(seen.values()) == 100, seen


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
async def test_uri_keeps_a_path_on_one_server_and_spreads_200_paths(
    harness: Harness, hash_type: str
) -> None:
    await mocks(harness, 3)
    lbd = await harness.lbd(
        [m.port for m in harness.mocks], backend={"balance": "uri", "hash_type": hash_type}
    )
    session = harness.session(connector=aiohttp.TCPConnector(limit=4))
    base = f"http://{HOST}:{lbd.port}"
    paths = [f"/accueil/patient/{1000 + i}" for i in range(200)]
    first = await asyncio.gather(*(served_by(session, base + p) for p in paths))
    # Second pass, other order, with a query string (not part of the key without uri_whole).
    again = await asyncio.gather(
        *(served_by(session, f"{base}{p}?visit=2") for p in reversed(paths))
    )
    assert list(reversed(again)) == first
    spread = Counter(first)
    assert set(spread) == {"app1", "app2", "app3"}
    assert min(spread.values()) >= 40, spread  # each at least 20% of the 200 paths


def _patient(value: str) -> dict[str, str]:
    return {"X-Patient": value}


def _session_cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"lang=fr; JSESSIONID={value}; theme=dark"}


KEYED = {
    "hdr(X-Patient)": (_patient, {}),
    "cookie(JSESSIONID)": (_session_cookie, {"Cookie": "lang=fr; theme=dark"}),
}


@pytest.mark.parametrize("hash_type", ["map-based", "consistent"])
@pytest.mark.parametrize("balance", list(KEYED))
async def test_header_and_cookie_hash_keep_a_value_on_one_server_and_spread_without_it(
    harness: Harness, balance: str, hash_type: str
) -> None:
    await mocks(harness, 3)
    lbd = await harness.lbd(
        [m.port for m in harness.mocks], backend={"balance": balance, "hash_type": hash_type}
    )
    with_key, without_key = KEYED[balance]
    session = one_connection(harness)
    url = f"http://{HOST}:{lbd.port}/dmu/dossier"
    values = [f"IPP-{4242 + 17 * i}" for i in range(30)]
    placed: dict[str, set[str]] = {v: set() for v in values}
    for _ in range(3):  # rounds interleave the values: a key never rides on the previous pick
        for v in values:
            placed[v].add(await served_by(session, url, with_key(v)))
    assert all(len(s) == 1 for s in placed.values()), placed
    assert {next(iter(s)) for s in placed.values()} == {"app1", "app2", "app3"}
    # No key (header absent / cookie absent from the Cookie header): round-robin.
    fallback = Counter([await served_by(session, url, without_key) for _ in range(30)])
    assert set(fallback) == {"app1", "app2", "app3"}
    assert min(fallback.values()) >= 5, fallback


async def test_consistent_hash_moves_only_the_keys_of_a_server_that_goes_down(
    harness: Harness,
) -> None:
    m1, m2, m3 = await mocks(harness, 3)
    lbd = await harness.lbd(
        [m1.port, m2.port, m3.port],
        backend={"balance": "hdr(X-Patient)", "hash_type": "consistent", "health_check": CHECK},
    )
    session = one_connection(harness)
    url = f"http://{HOST}:{lbd.port}/dmu/dossier"
    values = [f"IPP-{i}" for i in range(60)]

    async def mapping() -> dict[str, str]:
        return {v: await served_by(session, url, _patient(v)) for v in values}

    before = await mapping()
    assert set(before.values()) == {"app1", "app2", "app3"}
    down = log_count(lbd, "Server app/s3 is DOWN")
    await control(m3, "health?status=503")
    await wait_log(lbd, "Server app/s3 is DOWN", down)
    during = await mapping()
    for v in values:
        if before[v] == "app3":
            assert during[v] in ("app1", "app2"), v
        else:
            assert during[v] == before[v], f"{v} moved from {before[v]} to {during[v]}"
    up = log_count(lbd, "Server app/s3 is UP")
    await control(m3, "reset")
    await wait_log(lbd, "Server app/s3 is UP", up)
    assert await mapping() == before  # the keys it owned come back, the others never moved


# --- 3. leastconn -------------------------------------------------------------------------------


async def test_leastconn_sends_most_requests_to_the_server_that_is_not_slow(
    harness: Harness,
) -> None:
    a, b = await mocks(harness, 2)
    lbd = await harness.lbd([a.port, b.port], backend={"balance": "leastconn"})
    await control(a, "latency?ms=300")
    session = harness.session(connector=aiohttp.TCPConnector(limit=20))
    url = f"http://{HOST}:{lbd.port}/accueil/patient"
    served: Counter[str] = Counter()

    async def client() -> None:
        for _ in range(5):
            served[await served_by(session, url)] += 1

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(20))), 30)
    print(f"\nleastconn, A slow: {dict(served)}")
    assert sum(served.values()) == 100
    # A holds each of its requests 300 ms; B frees its slots at once and keeps being the least
    # loaded. Round-robin would give 50/50.
    assert served["app2"] > 2 * served["app1"], served


# --- 4. first -----------------------------------------------------------------------------------


async def test_first_fills_servers_in_order_up_to_their_maxconn(harness: Harness) -> None:
    m1, m2, m3 = await mocks(harness, 3)
    lbd = await harness.lbd(
        [],
        backend={
            "balance": "first",
            "servers": [srv(f"s{i + 1}", m.port, maxconn=2) for i, m in enumerate((m1, m2, m3))],
        },
    )
    session = harness.session(connector=aiohttp.TCPConnector(limit=10))
    url = f"http://{HOST}:{lbd.port}/slow?ms=500"
    got = await asyncio.wait_for(asyncio.gather(*(served_by(session, url) for _ in range(4))), 20)
    assert Counter(got) == {"app1": 2, "app2": 2}
    assert m3.state.counters.requests_total == 0
    # All idle again: the first server takes the next request.
    assert await served_by(session, f"http://{HOST}:{lbd.port}/accueil/patient") == "app1"


# --- 5. retries and redispatch ------------------------------------------------------------------


async def test_refused_server_with_retries_and_redispatch_fails_none_of_1000_gets(
    harness: Harness,
) -> None:
    live1, live2 = await mocks(harness, 2)
    dead = free_port()  # nobody listens there: every connect is refused
    lbd = await harness.lbd(
        [live1.port, dead, live2.port], backend={"retries": 3, "redispatch": True}
    )
    session = harness.session(connector=aiohttp.TCPConnector(limit=4))
    url = f"http://{HOST}:{lbd.port}/accueil/patient"
    served: Counter[str] = Counter()
    failures: list[str] = []

    async def client() -> None:
        for _ in range(250):
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures.append(f"status {resp.status}")
                    served[resp.headers.get("X-Server", "?")] += 1
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(4))), 45)
    assert failures == [], (len(failures), failures[:5])
    assert sum(served.values()) == 1000
    assert set(served) == {"app1", "app2"}
    assert live1.state.counters.requests_total + live2.state.counters.requests_total == 1000


@pytest.mark.parametrize("hangup", ["close", "reset"])
async def test_post_to_a_server_that_hangs_up_gets_502_and_is_not_resent(
    harness: Harness, hangup: str
) -> None:
    async def read_then_hang_up(wire: Wire) -> None:
        await wire.read_message()
        if hangup == "reset":
            wire.abort()
        # else: the harness closes the connection when the handler returns (FIN)

    raw = await harness.raw_backend(read_then_hang_up)
    other = await harness.mock_backend("app2")
    lbd = await harness.lbd(
        [raw.port, other.port],
        # Even with empty-response retries allowed, a POST that reached a server is not replayed.
        backend={"retries": 3, "redispatch": True, "retry_on": ["conn-failure", "empty-response"]},
    )
    body = b"compte-rendu " * 100
    session = harness.session()
    async with session.post(f"http://{HOST}:{lbd.port}/comptes-rendus/new", data=body) as resp:
        await resp.read()
        assert resp.status == 502
    assert raw.accepted == 1
    assert len(raw.requests) == 1
    assert raw.requests[0].method == "POST" and raw.requests[0].body == body
    assert other.state.counters.requests_total == 0


# --- 7. ewma ------------------------------------------------------------------------------------


async def _traffic(
    session: aiohttp.ClientSession, url: str, clients: int, count: int, seconds: float
) -> list[tuple[float, str]]:
    """`clients` loops of sequential GETs, `count` requests in all at most, for at most
    `seconds`; (time answered, server) per request."""
    out: list[tuple[float, str]] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        for _ in range(count):
            if len(out) >= count or time.monotonic() >= stop_at:
                return
            name = await served_by(session, url)
            out.append((time.monotonic(), name))

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), seconds + 15)
    return out


async def _ewma_with_a_slow(harness: Harness) -> tuple[RunningMock, str, aiohttp.ClientSession]:
    a, b = await mocks(harness, 2)
    lbd = await harness.lbd([a.port, b.port], backend={"balance": "ewma"})
    await control(a, "latency?ms=200")
    session = harness.session(connector=aiohttp.TCPConnector(limit=4))
    return a, f"http://{HOST}:{lbd.port}/accueil/patient", session


async def test_ewma_sends_clearly_less_to_a_slow_server(harness: Harness) -> None:
    _, url, session = await _ewma_with_a_slow(harness)
    served = Counter(name for _, name in await _traffic(session, url, 4, 200, 10.0))
    total = sum(served.values())
    print(f"\newma, A slow: {dict(served)}")
    assert total >= 50, served
    assert served["app1"] < 0.35 * total, served
    assert served["app2"] > served["app1"], served


async def test_ewma_gives_traffic_back_to_a_server_that_recovered(harness: Harness) -> None:
    a, url, session = await _ewma_with_a_slow(harness)
    slow = Counter(name for _, name in await _traffic(session, url, 4, 200, 10.0))
    assert slow["app1"] < 0.35 * sum(slow.values()), slow
    await control(a, "reset")
    after = await _traffic(session, url, 4, 50_000, 5.0)
    cut = after[-1][0] - 1.5  # the last 1.5 s: several decay constants (1 s) after the reset
    window = Counter(name for t, name in after if t >= cut)
    assert sum(window.values()) >= 20, window
    assert window["app1"] > 0.10 * sum(window.values()), (window, Counter(n for _, n in after))


# --- 8. backup ----------------------------------------------------------------------------------


async def test_backup_serves_only_when_the_active_server_is_down(harness: Harness) -> None:
    active, spare = await mocks(harness, 2)
    lbd = await harness.lbd(
        [],
        backend={
            "health_check": CHECK,
            "servers": [srv("s1", active.port), srv("s2", spare.port, backup=True)],
        },
    )
    session = one_connection(harness)
    url = f"http://{HOST}:{lbd.port}/accueil/patient"
    assert Counter([await served_by(session, url) for _ in range(50)]) == {"app1": 50}

    down = log_count(lbd, "Server app/s1 is DOWN")
    await control(active, "health?status=503")
    await wait_log(lbd, "Server app/s1 is DOWN", down)
    assert Counter([await served_by(session, url) for _ in range(50)]) == {"app2": 50}

    up = log_count(lbd, "Server app/s1 is UP")
    await control(active, "reset")
    await wait_log(lbd, "Server app/s1 is UP", up)
    assert Counter([await served_by(session, url) for _ in range(20)]) == {"app1": 20}


# --- 9. slowstart -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight",
    [
        pytest.param(1, id="default-weight-1"),
        pytest.param(100, id="weight-100"),
    ],
)
async def test_slowstart_ramps_up_a_server_that_comes_back(harness: Harness, weight: int) -> None:
    m1, m2 = await mocks(harness, 2)
    lbd = await harness.lbd(
        [],
        backend={
            "health_check": CHECK,
            "servers": [
                srv("s1", m1.port, weight=weight),
                srv("s2", m2.port, weight=weight, slowstart="2s"),
            ],
        },
    )
    session = one_connection(harness)
    url = f"http://{HOST}:{lbd.port}/accueil/patient"

    down = log_count(lbd, "Server app/s2 is DOWN")
    await control(m2, "health?status=503")
    await wait_log(lbd, "Server app/s2 is DOWN", down)
    up = log_count(lbd, "Server app/s2 is UP")
    await control(m2, "reset")
    await wait_log(lbd, "Server app/s2 is UP", up)
    back_at = time.monotonic()

    first_second: Counter[str] = Counter()
    for _ in range(5000):
        if time.monotonic() - back_at >= 1.0:
            break
        first_second[await served_by(session, url)] += 1
    await asyncio.sleep(max(0.0, back_at + 2.5 - time.monotonic()))  # the ramp is over
    settled = Counter([await served_by(session, url) for _ in range(200)])

    total = sum(first_second.values())
    print(f"\nslowstart, weight {weight}: first second {dict(first_second)}, then {dict(settled)}")
    assert total >= 20, first_second
    # Full share is 50%; a linear ramp over 2 s averages about 18% in its first second.
    assert first_second["app2"] < 0.35 * total, first_second
    assert first_second["app2"] > 0, first_second  # ramping, not left out
    assert 90 <= settled["app2"] <= 110, settled  # its full share again
