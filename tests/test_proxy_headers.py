"""Proxy core, end to end: the exact headers each side sees.

Requests: X-Forwarded-For is appended to, X-Forwarded-Proto and X-Forwarded-Host are set by lbd
(a client's own values are replaced, never trusted), hop-by-hop headers and the headers that
`Connection` names are removed. Responses: the same hop-by-hop removal on the way back.
"""

from __future__ import annotations

import pytest
from e2e_helpers import Harness, Message, fixed, request, response

pytestmark = pytest.mark.timeout(30)


def forwarded(msg: Message) -> dict[str, list[str]]:
    return {
        name: msg.values(name)
        for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
    }


def without_forwarded(msg: Message) -> list[tuple[str, str]]:
    return [(k, v) for k, v in msg.headers if not k.lower().startswith("x-forwarded-")]


@pytest.mark.parametrize(
    ("client_xff", "expected_xff"),
    [
        ([], "127.0.0.1"),
        (["203.0.113.7"], "203.0.113.7, 127.0.0.1"),
        (
            ["203.0.113.7, 10.0.0.1", "198.51.100.2"],
            "203.0.113.7, 10.0.0.1, 198.51.100.2, 127.0.0.1",
        ),
    ],
    ids=["none", "one", "two-lines"],
)
async def test_x_forwarded_headers(
    harness: Harness, client_xff: list[str], expected_xff: str
) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    headers = [("Host", "ehr.test:8080"), ("User-Agent", "e2e")]
    headers += [("X-Forwarded-For", v) for v in client_xff]
    # Spoofed by the client: lbd must replace them, not pass them on.
    headers += [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")]
    await client.send(request("GET", "/fwd?x=1", headers=headers))
    assert (await client.read_response()).body == b"ok"

    sent = backend.requests[0]
    assert sent.start_line == "GET /fwd?x=1 HTTP/1.1"
    assert forwarded(sent) == {
        "x-forwarded-for": [expected_xff],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": ["ehr.test:8080"],
    }
    assert without_forwarded(sent) == [("Host", "ehr.test:8080"), ("User-Agent", "e2e")]


async def test_hop_by_hop_request_headers_are_removed(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    await client.send(
        request(
            "GET",
            "/hop",
            headers=[
                ("Host", "ehr.test"),
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "named by Connection"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "websocket"),  # without `Connection: upgrade`: just a header
                ("X-Keep", "1"),
                ("Accept", "*/*"),
            ],
        )
    )
    assert (await client.read_response()).body == b"ok"

    sent = backend.requests[0]
    assert without_forwarded(sent) == [("Host", "ehr.test"), ("X-Keep", "1"), ("Accept", "*/*")]
    assert sorted(forwarded(sent)) == ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
    # The connection still works as a keep-alive one.
    await client.send(request("GET", "/again"))
    assert (await client.read_response()).body == b"ok"
    assert backend.accepted == 1


async def test_hop_by_hop_response_headers_are_removed(harness: Harness) -> None:
    answer = response(
        200,
        b"ok",
        headers=[
            ("X-App", "1"),
            ("Connection", "keep-alive, X-Internal"),
            ("X-Internal", "named by Connection"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-Checksum"),
            ("Cache-Control", "no-store"),
        ],
    )
    backend = await harness.raw_backend(fixed(answer))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)

    for _ in range(2):
        await client.send(request("GET", "/r"))
        resp = await client.read_response()
        assert resp.status == 200 and resp.body == b"ok"
        assert resp.headers == [
            ("X-App", "1"),
            ("Cache-Control", "no-store"),
            ("Content-Length", "2"),
        ]
    assert backend.accepted == 1


async def test_a_head_with_nothing_to_drop_goes_byte_for_byte(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    head = b"GET /p?x=1 HTTP/1.1\r\nHost: ehr.test\r\nX-A:\tb \r\nuser-agent: e2e\r\n"
    # Alone in its read (raw), then two pipelined in one read (the second is rebuilt).
    await client.send(head + b"\r\n")
    assert (await client.read_response()).body == b"ok"
    await client.send(head + b"\r\n" + head + b"\r\n")
    for _ in range(2):
        assert (await client.read_response()).body == b"ok"
    xff = b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
    lbd_lines = xff + b"X-Forwarded-Host: ehr.test\r\n\r\n"
    received = backend.received()
    assert received.startswith(head + lbd_lines)
    assert received.count(b"GET /p?x=1 HTTP/1.1\r\n") == 3
    rebuilt = backend.requests[1:]
    assert [m.values("x-a") for m in rebuilt] == [["b"], ["b"]]  # value the same, OWS aside
    assert all(m.values("x-forwarded-for") == ["127.0.0.1"] for m in backend.requests)
