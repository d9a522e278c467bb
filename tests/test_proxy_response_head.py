"""The server's response head, forwarded from its raw bytes (lbd/http/response_head.py and
lbd/proxy/upstream.py): hop-by-hop lines cut out in any case spelling and with their obs-fold
continuations, framing read, heads that arrive over several reads, interim responses in the
same read as the final one, and heads too large or not CRLF-delimited refused with 502.
"""

from __future__ import annotations

import asyncio

import pytest
from e2e_helpers import Handler, Harness, Wire, fixed, request, response

from lbd.http import wire
from lbd.http.response_head import NO_LENGTH, end_to_end, header_list, raw_head
from lbd.proxy.upstream import MAX_HEAD_BYTES

pytestmark = pytest.mark.timeout(30)

STATUS = b"HTTP/1.1 200 OK\r\n"


def head(*lines: bytes) -> bytes:
    return STATUS + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@pytest.mark.parametrize("name", sorted(wire.HOP_BY_HOP))
@pytest.mark.parametrize("spell", [bytes.lower, bytes.upper, bytes.title])
def test_every_hop_by_hop_name_is_dropped_in_any_case(name: bytes, spell: object) -> None:
    assert callable(spell)
    raw = head(b"X-Before: 1", spell(name) + b": v", b"X-After: 2")
    lines, length, _ = end_to_end(raw)
    assert lines == b"X-Before: 1\r\nX-After: 2\r\n"
    assert length == NO_LENGTH


def test_end_to_end_lines_keep_spelling_order_and_framing() -> None:
    raw = head(
        b"Server: nginx",
        b"content-LENGTH:  200 ",
        b"Connection: keep-alive",
        b"X-Trace: a:b:c",
        b"Set-Cookie: A=1",
        b"Set-Cookie: B=2",
    )
    lines, length, chunked = end_to_end(raw)
    assert lines == (
        b"Server: nginx\r\ncontent-LENGTH:  200 \r\nX-Trace: a:b:c\r\n"
        b"Set-Cookie: A=1\r\nSet-Cookie: B=2\r\n"
    )
    assert (length, chunked) == (200, False)


@pytest.mark.parametrize(
    ("value", "chunked"),
    [(b"chunked", True), (b"gzip, Chunked ", True), (b"gzip", False)],
)
def test_transfer_encoding_is_read_and_dropped(value: bytes, chunked: bool) -> None:
    lines, length, seen = end_to_end(head(b"Transfer-Encoding: " + value, b"X: 1"))
    assert (lines, length, seen) == (b"X: 1\r\n", NO_LENGTH, chunked)


def test_headers_named_by_connection_are_dropped_too() -> None:
    raw = head(
        b"Connection: keep-alive, X-Internal",
        b"connection: x-other",
        b"X-Internal: secret",
        b"x-other: 2",
        b"X-Public: 1",
    )
    assert end_to_end(raw)[0] == b"X-Public: 1\r\n"


def test_obs_fold_continuations_follow_their_line() -> None:
    raw = head(b"Keep-Alive: timeout=5,", b"  max=100", b"X-Long: a", b"\tb", b"X-End: 1")
    assert end_to_end(raw)[0] == b"X-Long: a\r\n\tb\r\nX-End: 1\r\n"


def test_a_head_without_headers() -> None:
    assert end_to_end(b"HTTP/1.1 204 No Content\r\n\r\n") == (b"", NO_LENGTH, False)


def test_header_list_round_trips_for_the_editing_paths() -> None:
    raw = head(b"Set-Cookie: A=1", b"X-Long: a", b" b", b"Content-Length: 0")
    pairs = header_list(raw)
    assert pairs == [(b"Set-Cookie", b"A=1"), (b"X-Long", b"a b"), (b"Content-Length", b"0")]
    assert raw_head(STATUS, pairs) == head(b"Set-Cookie: A=1", b"X-Long: a b", b"Content-Length: 0")


# --- end to end ---------------------------------------------------------------------------------


def dribble(answer: bytes, pieces: list[int]) -> Handler:
    """A keep-alive server that writes each answer in pieces of the given sizes, pausing between
    them so that lbd reads each piece on its own."""

    async def handler(w: Wire) -> None:
        for _ in range(100):
            req = await w.read_message()
            if req is None:
                return
            start = 0
            for size in pieces:
                await w.send(answer[start : start + size])
                start += size
                await asyncio.sleep(0.02)
            await w.send(answer[start:])

    return handler


async def test_a_head_split_over_many_reads_is_forwarded_whole(harness: Harness) -> None:
    answer = response(200, b"split", headers=[("X-App", "1"), ("Connection", "keep-alive")])
    crlfcrlf = answer.index(b"\r\n\r\n")
    # One byte at a time for the status line, then a cut inside the final CRLF CRLF.
    pieces = [1] * 12 + [crlfcrlf + 3 - 12]
    backend = await harness.raw_backend(dribble(answer, pieces))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    for _ in range(2):
        await client.send(request("GET", "/split"))
        resp = await client.read_response()
        assert (resp.status, resp.body) == (200, b"split")
        assert resp.headers == [("X-App", "1"), ("Content-Length", "5")]
    assert backend.accepted == 1


async def test_interim_and_final_response_in_one_read(harness: Harness) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x\r\n\r\n"
    final = response(200, b"ok", headers=[("Keep-Alive", "timeout=5")])
    backend = await harness.raw_backend(fixed(interim + final))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    await client.send(request("GET", "/hints"))
    early = await client.read_response()
    assert early.status == 103
    assert early.headers == [("Link", "</a.css>; rel=preload")]
    resp = await client.read_response()
    assert (resp.status, resp.body) == (200, b"ok")
    assert resp.headers == [("Content-Length", "2")]


async def test_a_head_over_the_limit_gets_502(harness: Harness) -> None:
    big = "v" * 8000
    headers = [(f"X-Big-{i}", big) for i in range(MAX_HEAD_BYTES // 8000 + 1)]
    backend = await harness.raw_backend(fixed(response(200, b"no", headers=headers)))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    await client.send(request("GET", "/big"))
    resp = await client.read_response()
    assert resp.status == 502


async def test_a_large_head_under_the_limit_passes(harness: Harness) -> None:
    big = "v" * 8000
    headers = [(f"X-Big-{i}", big) for i in range(MAX_HEAD_BYTES // 8000 - 1)]
    backend = await harness.raw_backend(fixed(response(200, b"yes", headers=headers)))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    await client.send(request("GET", "/large"))
    resp = await client.read_response()
    assert (resp.status, resp.body) == (200, b"yes")
    assert len(resp.headers) == len(headers) + 1


async def test_a_head_with_bare_lf_line_ends_gets_502(harness: Harness) -> None:
    backend = await harness.raw_backend(fixed(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"))
    lbd = await harness.lbd([backend.port])
    client = await harness.connect(lbd.port)
    await client.send(request("GET", "/lf"))
    resp = await client.read_response()
    assert resp.status == 502
