"""The two legs never disagree on where a message ends, and nothing a server sends beyond its
answer reaches another client: `Connection` cannot strip Content-Length or Host, routing rules
cannot add hop-by-hop or X-Forwarded-* lines, bytes after a HEAD answer or past a response's
end close that server connection, and empty lines before a response are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import (
    Harness,
    LbdProcess,
    Message,
    Wire,
    fixed,
    free_port,
    lbd_config,
    request,
    response,
    serve,
)

pytestmark = pytest.mark.timeout(30)


async def test_connection_cannot_strip_content_length_from_a_request(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    smuggled = b"GET /admin-smuggled HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
    await client.send(
        request(
            "POST",
            "/x",
            headers=[("Host", "ehr.test"), ("Connection", "content-length, host")],
            body=smuggled,
        )
    )
    assert (await client.read_response()).status == 200
    await client.send(request("GET", "/after"))
    assert (await client.read_response()).status == 200
    sent = backend.requests
    assert [m.target for m in sent] == ["/x", "/after"]  # no request lbd never saw
    assert sent[0].values("content-length") == [str(len(smuggled))]
    assert sent[0].values("host") == ["ehr.test"]
    assert sent[0].body == smuggled


async def test_connection_cannot_strip_content_length_from_a_response(harness: Harness) -> None:
    answer = response(
        200, b"ok", headers=[("Connection", "content-length, X-Drop"), ("X-Drop", "1")]
    )
    backend = await harness.raw_backend(fixed(answer))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    for _ in range(2):
        await client.send(request("GET", "/r"))
        resp = await client.read_response()
        assert (resp.status, resp.body, resp.headers) == (200, b"ok", [("Content-Length", "2")])
    assert backend.accepted == 1


async def test_a_rule_cannot_add_hop_by_hop_or_forwarded_lines(
    harness: Harness, tmp_path: Path
) -> None:
    backend = await harness.raw_backend(fixed(response(200, b"ok")))
    port = free_port()
    config = lbd_config(port, [backend.port])
    config["frontends"]["fe"]["rules"] = [
        {
            "when": {"path_prefix": "/"},
            "set_header": {
                "X-Forwarded-For": "10.9.9.9",
                "X-Forwarded-Proto": "https",
                "Keep-Alive": "timeout=1",
                "X-Routed-By": "lbd",
            },
        }
    ]
    lbd = LbdProcess(config, tmp_path, port)
    harness.procs.append((lbd, False))
    await lbd.start()
    client = await harness.connect(lbd.port)
    for headers in ([("Host", "ehr.test")], [("Host", "ehr.test"), ("Connection", "keep-alive")]):
        await client.send(request("GET", "/r", headers=headers))
        assert (await client.read_response()).status == 200
    for sent in backend.requests:
        assert sent.values("x-forwarded-for") == ["127.0.0.1"]
        assert sent.values("x-forwarded-proto") == ["http"]
        assert sent.values("keep-alive") == []
        assert sent.values("x-routed-by") == ["lbd"]


async def test_bytes_after_a_head_answer_never_reach_the_next_client(harness: Harness) -> None:
    stray = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=attacker\r\n"

    def answer(req: Message) -> bytes:
        if req.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + stray
        return response(200, b"ok")

    backend = await harness.raw_backend(serve(answer))
    lbd = await harness.lbd([backend.port])
    first = await harness.connect(lbd.port)
    await first.send(request("HEAD", "/h"))
    assert (await first.read_response(method="HEAD")).status == 200
    second = await harness.connect(lbd.port)
    await second.send(request("GET", "/g"))
    resp = await second.read_response()
    assert (resp.status, resp.body, resp.headers) == (200, b"ok", [("Content-Length", "2")])
    assert b"attacker" not in bytes(second.received)
    assert backend.accepted == 2  # the connection that said too much was not reused


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=attacker; x=",  # a head cut short
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=attacker\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["partial", "whole"],
)
async def test_bytes_past_a_response_close_that_server_connection(
    harness: Harness, extra: bytes
) -> None:
    answers = iter([response(200, b"ok") + extra])
    backend = await harness.raw_backend(serve(lambda _req: next(answers, response(200, b"ok"))))
    lbd = await harness.lbd([backend.port])
    clients: list[Wire] = [await harness.connect(lbd.port) for _ in range(2)]
    for client in clients:
        await client.send(request("GET", "/r"))
        resp = await client.read_response()
        assert (resp.status, resp.body, resp.headers) == (200, b"ok", [("Content-Length", "2")])
        assert b"attacker" not in bytes(client.received)
    assert backend.accepted == 2


@pytest.mark.parametrize("leading", [b"\r\n", b"\n\r\n", b"\r\r\n\n"])
async def test_empty_lines_before_a_response_are_skipped(harness: Harness, leading: bytes) -> None:
    backend = await harness.raw_backend(fixed(leading + response(200, b"ok", reason="Fine")))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    await client.send(request("GET", "/r"))
    resp = await client.read_response()
    assert (resp.status, resp.body, resp.headers) == (200, b"ok", [("Content-Length", "2")])
    assert bytes(client.received).count(b"HTTP/1.1") == 1
