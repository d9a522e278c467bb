"""Hypothesis fuzzing of request lines, headers and framing against a real lbd.

Properties, per generated message (sent alone on a fresh connection):
- no hang: lbd answers or closes within a bound (its timeouts are 1 s here);
- never two requests at the backend from one client message, and never the request smuggled
  inside a body that a Content-Length covers (whatever Transfer-Encoding tricks surround it);
- whatever reaches the backend parses as one clean HTTP/1.1 request (the recording backend's
  parser raises otherwise, and the harness fails the test on it);
- no crash: lbd still answers a clean request afterwards and logs no traceback (harness).

Hypothesis runs in a worker thread with blocking sockets; the recording backend lives in the
test's event loop, which keeps running while the thread works.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from e2e_helpers import HOST, Harness, RawBackend, echo_target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_inspect_e2e import forwarded, raw_get, start_lbd

pytestmark = pytest.mark.timeout(300)

FUZZ_TIMEOUTS = {"http_request": "1s", "client": "1s", "keep_alive": "1s", "server": "2s"}
ANSWER_BOUND = 4.0  # seconds: lbd's own timeouts fire after 1 s
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: ehr.test\r\n\r\n"
FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ---------------------------------------------------------------------------------

methods = st.sampled_from(
    [b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE", b"CONNECT", b"PRI",
     b"FOO", b"get", b"G\x00T", b"", b"PROPFIND", b"SETUP"]
)  # fmt: skip
segments = st.sampled_from(
    [b"a", b"admin", b".", b"..", b"%2e", b"%2E%2e", b"%252e", b"%2f", b"%5c", b"\\", b"", b";x",
     b"%41", b"%zz", b"%00", b"%0d%0a", b"<", b"#f", b"?q=1", b"*", b"\x00", b" ", b"\xff",
     b"http:", b"@", b"%", b"\t"]
)  # fmt: skip
targets = st.one_of(
    st.lists(segments, max_size=6).map(lambda parts: b"/" + b"/".join(parts)),
    st.sampled_from([b"*", b"http://ehr.test/x", b"http://other.test/", b"ehr.test:443", b""]),
    st.binary(max_size=24),
)
versions = st.sampled_from(
    [b" HTTP/1.1", b" HTTP/1.0", b"", b" HTTP/0.9", b" HTTP/2.0", b" RTSP/1.0", b" http/1.1",
     b" HTTP/1.1 ", b" HTTP/1.12", b" ICE/1.0", b"  HTTP/1.1"]
)  # fmt: skip
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
names = st.one_of(
    st.sampled_from(
        [b"Host", b"host", b"HOST", b"X-A", b"Content-Length", b"Transfer-Encoding",
         b"Connection", b"Upgrade", b"Expect", b"Cookie", b"X-Forwarded-For", b"Host ",
         b" Host", b"X(A)", b"", b"Te"]
    ),
    st.binary(min_size=1, max_size=8),
)  # fmt: skip
separators = st.sampled_from([b": ", b":", b" : ", b":\t", b":  "])
values = st.one_of(
    st.sampled_from(
        [b"ehr.test", b"user@ehr.test", b"0", b"5", b"chunked", b"close", b"upgrade, h2c", b"h2c",
         b"100-continue", b"a\x00b", b"a\rb", b"", b" ", b"\xff\xfe", b"keep-alive, te"]
    ),
    st.binary(max_size=16).filter(lambda v: b"\n" not in v),
)  # fmt: skip
headers = st.lists(st.tuples(names, separators, values), max_size=6)


@st.composite
def wild_messages(draw: st.DrawFn) -> bytes:
    """A request head with fuzzed request line and fields (no body: one message at most)."""
    end = draw(line_ends)
    line = draw(methods) + b" " + draw(targets) + draw(versions) + end
    fields = draw(headers)
    if draw(st.booleans()):
        fields = [(b"Host", b": ", b"ehr.test"), *fields]
    head = b"".join(n + sep + v + end for n, sep, v in fields)
    return line + head + end


mild_values = st.text(alphabet='abcXYZ019 -_.,;=/:@?%*"\t', max_size=16).map(lambda v: v.encode())


@st.composite
def near_valid_messages(draw: st.DrawFn) -> bytes:
    """A plausible request with one or two fuzzed parts, so that many reach the backend."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"GET"]))
    target = draw(st.lists(segments, max_size=5).map(lambda p: b"/" + b"/".join(p)))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields = [(b"Host", b"ehr.test")]
    fields += draw(st.lists(st.tuples(st.sampled_from(
        [b"X-A", b"Accept", b"Cookie", b"Connection", b"Upgrade", b"Via", b"Te", b"Expect"]
    ), mild_values), max_size=4))  # fmt: skip
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    return head + b"\r\n"


messages = st.one_of(wild_messages(), near_valid_messages())


# Transfer-Encoding spellings a lax parser might take for chunked, or not.
te_values = st.sampled_from(
    [b"chunked", b" chunked", b"Chunked", b"chunked ", b"chunked, identity", b"identity, chunked",
     b"xchunked", b"chunked\x0b", b"\tchunked", b"chunk", b"gzip, chunked", b"chunked;x=1",
     b'"chunked"']
)  # fmt: skip
te_names = st.sampled_from(
    [b"Transfer-Encoding", b"transfer-encoding", b"Transfer-encoding", b"Transfer_Encoding",
     b"X-Transfer-Encoding"]
)  # fmt: skip


@st.composite
def smuggles(draw: st.DrawFn) -> bytes:
    """A message whose Content-Length covers a body that hides a second request behind a
    chunked terminator: read by Content-Length it is one request; by a Transfer-Encoding
    reading, two. A correct proxy refuses the ambiguity or forwards exactly one request."""
    body = b"0\r\n\r\n" + SMUGGLED
    length = str(len(body)).encode()
    cl = draw(st.sampled_from([length, b"0" + length, length + b" ", b" " + length]))
    fields = [(b"Host", b"ehr.test"), (b"Content-Length", cl)]
    for _ in range(draw(st.integers(1, 2))):
        fields.append((draw(te_names), draw(te_values)))
    fields = draw(st.permutations(fields))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    head = b"POST /upload " + version + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    return head + b"\r\n" + body


# --- the client side, blocking (runs in a worker thread) ----------------------------------------


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` alone; return what came back until the first response is complete, EOF or
    ANSWER_BOUND (then the test fails: lbd hung)."""
    deadline = time.monotonic() + ANSWER_BOUND
    with socket.create_connection((HOST, port), timeout=ANSWER_BOUND) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b""  # lbd already answered and closed (a refusal mid-send)
        got = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer within {ANSWER_BOUND}s to {data!r}: {got!r}")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    raise AssertionError(f"lbd hung on {data!r}: got {got!r}") from None
                return got
            if not chunk:
                return got
            got += chunk
            if _complete(got):
                return got


def _complete(data: bytes) -> bool:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(data) >= end + 4 + int(line.split(b":", 1)[1])
    return True


def check(port: int, backend: RawBackend, data: bytes) -> None:
    before = len(backend.requests)
    answer = exchange(port, data)
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer
    time.sleep(0.02)  # a second forwarded request would be on its way by now
    new = backend.requests[before:]
    assert len(new) <= 1, (data, [r.start_line for r in new])
    assert all(r.target != "/smuggled" for r in new), (data, new)


async def fuzz(harness: Harness, strategy: st.SearchStrategy[bytes]) -> None:
    backend = await harness.raw_backend(echo_target())
    lbd = await start_lbd(harness, [backend.port], timeouts=FUZZ_TIMEOUTS)

    @FUZZ_SETTINGS
    @given(strategy)
    def run(data: bytes) -> None:
        check(lbd.port, backend, data)

    await asyncio.to_thread(run)
    # Still alive and well: a clean request is answered, and exactly forwarded.
    before = backend.received()
    answer = await asyncio.to_thread(exchange, lbd.port, raw_get(b"/after-fuzz"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert backend.received().endswith(forwarded("GET", "/after-fuzz")), before[-200:]


async def test_fuzz_request_lines_and_headers(harness: Harness) -> None:
    await fuzz(harness, messages)


async def test_fuzz_framing_never_smuggles(harness: Harness) -> None:
    await fuzz(harness, smuggles())
