"""Head checks (lbd.http.inspect), masking (lbd.inspect.mask) and the capture store, as pure
functions: no socket here (tests/test_inspect_e2e.py sends the same shapes through a real lbd).

The first table pins what llhttp (strict, no leniency flag) refuses by itself: if an httptools
upgrade ever lets one of these through, this test fails before a smuggling test has to."""

from __future__ import annotations

import httptools
import pytest

from lbd.errors import BadRequest, NotImplementedMethod, VersionNotSupported
from lbd.http.head import (
    SPECIAL_HEADERS,
    SPECIAL_KEYS,
    RequestHead,
    request_line_version,
    special_key,
)
from lbd.http.inspect import (
    classify,
    inspect_target,
    is_http09,
    locate_parse_error,
    other_protocol,
    parser_error,
)
from lbd.inspect import mask
from lbd.inspect.store import LOGGED, REJECTED, CaptureStore, Sample
from lbd.proxy.exchange import DROP_REQUEST, request_head_bytes

GOOD = b"GET / HTTP/1.1\r\nHost: ehr.test\r\n"


class _Collect:
    def __init__(self) -> None:
        self.headers_complete = 0
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.headers_complete += 1


# raw bytes → (lbd reason, status): llhttp refuses them, parser_error names them.
LLHTTP_REFUSES = {
    "obs-fold": (GOOD + b"X-A: b\r\n c\r\n\r\n", "obs-fold", 400),
    "space-after-start-line": (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", "obs-fold", 400),
    "space-before-colon": (GOOD + b"X-A : b\r\n\r\n", "bad-header-name", 400),
    "host-space-before-colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "bad-header-name", 400),
    "bad-name-byte": (GOOD + b"X(A): b\r\n\r\n", "bad-header-name", 400),
    "no-colon": (GOOD + b"Foo\r\n\r\n", "bad-header-name", 400),
    "bare-cr-in-value": (GOOD + b"X-A: b\rc\r\n\r\n", "bare-cr", 400),
    "bare-cr-line-end": (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare-cr", 400),
    "bare-lf-header": (b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", "bare-lf", 400),
    "bare-lf-request-line": (b"GET / HTTP/1.1\nHost: a\n\n", "bad-line-ending", 400),
    "nul-in-value": (GOOD + b"X-A: b\x00c\r\n\r\n", "bad-header-value", 400),
    "ctl-in-value": (GOOD + b"X-A: b\x01c\r\n\r\n", "bad-header-value", 400),
    "del-in-value": (GOOD + b"X-A: b\x7fc\r\n\r\n", "bad-header-value", 400),
    "nul-in-target": (b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "ctl-in-target": (b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "tab-in-target": (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "del-in-target": (b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "non-ascii-target": (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "non-ascii-query": (b"GET /a?n=\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "target-bad-char", 400),
    "authority-form": (b"GET ehr.test:443 HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target-form", 400),
    "lower-case-version": (b"GET / http/1.1\r\nHost: a\r\n\r\n", "bad-request-line", 400),
    "http-1.2": (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "bad-version", 505),
    "http-3.0": (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", "bad-version", 505),
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "bad-version", 505),
    "ice": (b"GET / ICE/1.0\r\n\r\n", "bad-protocol", 505),
    "unknown-method": (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", "unknown-method", 501),
    "lower-case-method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", "unknown-method", 501),
    "rtsp-method": (b"SETUP / HTTP/1.1\r\nHost: a\r\n\r\n", "unknown-method", 501),
    "chunk-size-not-hex": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "bad-chunk",
        400,
    ),
    "chunk-size-space": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n",
        "bad-chunk",
        400,
    ),
    "chunk-size-0x": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n",
        "bad-chunk",
        400,
    ),
    "chunk-size-overflow": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff\r\n",
        "bad-chunk",
        400,
    ),
    "chunk-overrun": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n",
        "bad-chunk",
        400,
    ),
    "chunk-bare-lf": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n",
        "bad-chunk",
        400,
    ),
    "cl-plus": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        "bad-content-length",
        400,
    ),
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "cl-and-te",
        400,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LLHTTP_REFUSES))
def test_llhttp_strict_refuses_and_we_name_it(case: str) -> None:
    data, reason, status = LLHTTP_REFUSES[case]
    sink = _Collect()
    parser = httptools.HttpRequestParser(sink)
    with pytest.raises(httptools.HttpParserError) as info:
        parser.feed_data(data)
    assert not isinstance(info.value, httptools.HttpParserUpgrade)
    err = parser_error(str(info.value), data, sink.url)
    assert (err.reason, err.status) == (reason, status), str(info.value)
    if case.startswith("chunk"):
        return  # refused in the body: the head itself was fine
    assert sink.headers_complete == 0  # refused before any head reached lbd's checks
    offset = locate_parse_error(data)
    assert 0 <= offset < len(data)


def test_locate_parse_error_points_at_the_byte() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n"
    assert data[locate_parse_error(data)] == 0
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n"
    assert data[locate_parse_error(data)] == ord("(")
    assert locate_parse_error(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == -1


# What llhttp lets through, and classify refuses.
def _head(method: bytes, version: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(method, b"/", version, list(headers))


@pytest.mark.parametrize(
    ("head", "reason", "status"),
    [
        (_head(b"GET", b"1.1"), "missing-host", 400),
        (_head(b"GET", b"1.1", (b"Host", b"a"), (b"host", b"b")), "duplicate-host", 400),
        (_head(b"GET", b"1.0", (b"Host", b"a"), (b"Host", b"a")), "duplicate-host", 400),
        (_head(b"GET", b"1.1", (b"Host", b"user@ehr.test")), "host-userinfo", 400),
        (_head(b"GET", b"1.1", (b"Host", b"ehr test")), "bad-host", 400),
        (_head(b"GET", b"1.1", (b"Host", b"ehr.test:80x")), "bad-host", 400),
        (_head(b"GET", b"1.1", (b"Host", b"ehr.test/x")), "bad-host", 400),
        (_head(b"GET", b"0.9"), "http09", 505),
        (_head(b"GET", b"2.0", (b"Host", b"a")), "bad-version", 505),
        (_head(b"CONNECT", b"1.1", (b"Host", b"a")), "connect-method", 501),
        (_head(b"TRACE", b"1.1", (b"Host", b"a")), "method-not-allowed", 501),
        (_head(b"PROPFIND", b"1.1", (b"Host", b"a")), "method-not-allowed", 501),
    ],
)
def test_classify_refuses(head: RequestHead, reason: str, status: int) -> None:
    allowed = frozenset({b"GET", b"HEAD", b"POST"})
    with pytest.raises(BadRequest) as info:
        classify(head, allowed)
    assert (info.value.reason, info.value.status) == (reason, status)
    if status == 501:
        assert isinstance(info.value, NotImplementedMethod)
    if status == 505:
        assert isinstance(info.value, VersionNotSupported)


def test_classify_accepts() -> None:
    allowed = frozenset({b"GET", b"PROPFIND"})
    for head in (
        _head(b"GET", b"1.1", (b"Host", b"ehr.test:8443")),
        _head(b"GET", b"1.1", (b"Host", b"[::1]:8080")),
        _head(b"GET", b"1.1", (b"Host", b"")),  # empty authority: legal
        _head(b"GET", b"1.0"),  # HTTP/1.0 needs no Host
        _head(b"PROPFIND", b"1.1", (b"Host", b"a")),
    ):
        classify(head, allowed)


def test_h2c_upgrade_is_dropped() -> None:
    head = _head(b"GET", b"1.1", (b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"),
                 (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"))  # fmt: skip
    classify(head)
    assert head.upgrade is None
    assert b"http2-settings" in head.connection_tokens  # so the field is dropped as hop-by-hop


def test_inspect_target_fast_and_slow_paths() -> None:
    head = RequestHead(b"GET", b"/a/b?x=1", b"1.1", [(b"Host", b"ehr.test")])
    classify(head)
    assert inspect_target(head) is None
    assert (head.path, head.query, head.target) == (b"/a/b", b"x=1", b"/a/b?x=1")

    head = RequestHead(b"GET", b"http://ehr.test/static/../admin?x=1", b"1.1",
                       [(b"Host", b"ehr.test")])  # fmt: skip
    classify(head)
    report = inspect_target(head)
    assert report is not None
    assert (head.path, head.query, head.target) == (b"/admin", b"x=1", b"/static/../admin?x=1")
    assert report.normalized == b"/admin?x=1"


def test_http09_and_other_protocols() -> None:
    assert is_http09(b"GET /\r\n", b"/")
    assert is_http09(b"GET /a?b=1\n", b"/a?b=1")
    assert not is_http09(b"GET / HTTP/1.1\r\n", b"/")
    assert not is_http09(b"GET / HTTP/1.1\r\nHost: a\r\n", b"/")
    assert not is_http09(b"GET /x HTTP/1.1\r\nReferer: /x\r\n", b"/x")
    assert other_protocol(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", b"*") == b"RTSP"
    assert other_protocol(b"GET /s RTSP/1.0\r\n\r\n", b"/s") == b"RTSP"
    assert other_protocol(b"GET /s HTTP/1.0\r\nUser-Agent: RTSP/1.0\r\n\r\n", b"/s") is None


# --- masking -------------------------------------------------------------------------------------

PATIENT = "1234567890123"  # a NIR-like patient identifier


def test_excerpt_masks_query_values_cookies_and_credentials() -> None:
    data = (
        f"GET /dossier/open?ipp={PATIENT}&tab=labs&{PATIENT}#nir={PATIENT} HTTP/1.1\r\n"
        "Host: ehr.test\r\n"
        f"Cookie: JSESSIONID=s3cr3t; last={PATIENT}\r\n"
        "Authorization: Basic dXNlcjpwYXNz\r\n"
        f"Referer: https://ehr.test/search?nom=DUPONT&ipp={PATIENT}\r\n"
        f"X-Patient: {PATIENT}\r\n"
        f" {PATIENT}\r\n"  # folded continuation of X-Patient
        f"X-B: 1\rCookie: sid={PATIENT}\r\n"  # a bare CR must not hide a cookie line
        f"Host: {PATIENT}@ehr.test\r\n"
        f"Origin: http://{PATIENT}:pw@ehr.test\r\n"
        f"\r\nbody={PATIENT}"
    ).encode()
    text = mask.excerpt(data[:150]) + mask.excerpt(data[150:], starts_message=False)
    text += "".join(mask.excerpt(data, off) for off in range(0, len(data), 40))
    assert PATIENT not in text
    for secret in ("s3cr3t", "dXNlcjpwYXNz", "DUPONT", ":pw"):
        assert secret not in text
    full = mask.excerpt(data[:120])
    assert full.startswith("GET /dossier/open?ipp=***&tab=***&***#*** HTTP/1.1\\r\\n")
    host = data.index(b"Host")
    assert mask.excerpt(data[host - 3 : host + 40], starts_message=False).startswith(
        "***\\r\\nHost: ehr.test\\r\\nCookie: ***"
    )


def test_excerpt_never_shows_a_body() -> None:
    for head_end in (b"\r\n\r\n", b"\n\n", b"\r\n\n"):
        data = b"POST / HTTP/1.1\nHost: a" + head_end + b"Accept: " + PATIENT.encode()
        assert PATIENT not in mask.excerpt(data, 10)


def test_excerpt_escapes_and_bounds() -> None:
    data = b"GET /a\\b HTTP/1.1\r\nX-A: \x00\xff\r\n\r\n"
    assert mask.excerpt(data) == "GET /a\\\\b HTTP/1.1\\r\\nX-A: ***\\r\\n\\r\\n"
    long = b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\n\r\n"
    text = mask.excerpt(long, 600)
    assert text.startswith("...") and text.endswith("...")
    assert len(text) <= mask.EXCERPT_BYTES + 6


# --- the capture store ---------------------------------------------------------------------------


def _sample(t: float, action: str = REJECTED) -> Sample:
    return Sample(t, "127.0.0.1:1", "GET", action, 400 if action == REJECTED else 0, ("x",))


def test_store_counts_and_keeps_the_last_samples() -> None:
    store = CaptureStore(max_entries=2, samples_per_entry=3)
    for i in range(5):
        store.record("dot-segment", "dmu", _sample(100.0 + i, REJECTED if i % 2 else LOGGED))
    store.record("missing-host", "-", _sample(200.0))
    store.record("bad-host", "-", _sample(300.0))  # the table is full: only counted
    entry = store.get("dot-segment", "dmu")
    assert entry is not None
    assert (entry.count, entry.first_seen, entry.last_seen) == (5, 100.0, 104.0)
    assert entry.actions[REJECTED] == 2 and entry.actions[LOGGED] == 3
    assert [s.time for s in entry.samples] == [102.0, 103.0, 104.0]
    assert store.overflow == 1 and store.total == 7
    data = store.to_json()
    assert [e["reason"] for e in data] == ["missing-host", "dot-segment"]  # newest first
    assert [s["time"] for s in data[1]["samples"]] == [104.0, 103.0, 102.0]
    store.clear()
    assert store.to_json() == [] and store.total == 0


async def test_stats_page_escapes_captured_excerpts() -> None:
    import asyncio

    from lbd.config.load import load_config_text
    from lbd.runtime import build_runtime
    from lbd.stats.html import render
    from lbd.stats.snapshot import snapshot

    cfg = load_config_text(
        "frontends: {fe: {bind: 127.0.0.1:1, default_backend: app}}\n"
        "backends: {app: {servers: [{name: a, address: 127.0.0.1:2}]}}\n",
        "x.yaml",
    )
    runtime = build_runtime(cfg, None, asyncio.get_running_loop())
    hostile = mask.excerpt(b"GET /<script>alert(1)</script>?x=1 HTTP/1.1\r\n\r\n")
    assert "<script>" in hostile  # printable ASCII is kept by the excerpt itself
    runtime.frontends["fe"].captures.record(
        "target-bad-char", "other", Sample(1.0, "127.0.0.1:9", "GET", REJECTED, 400, ("x",), 5,
                                           "target", hostile)
    )  # fmt: skip
    page = render(snapshot(runtime, 0.0))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "127.0.0.1:9" not in page  # no client address on the wall screen


async def test_capture_store_is_kept_across_reloads_by_frontend_name() -> None:
    import asyncio

    from lbd.config.load import load_config_text
    from lbd.runtime import build_runtime

    text = (
        "frontends: {fe: {bind: 127.0.0.1:1, default_backend: app, url_policy: %s}}\n"
        "backends: {app: {servers: [{name: a, address: 127.0.0.1:2}]}}\n"
    )
    loop = asyncio.get_running_loop()
    old = build_runtime(load_config_text(text % "reject", "x.yaml"), None, loop)
    old.frontends["fe"].captures.record("dot-segment", "other", _sample(1.0))
    new = build_runtime(load_config_text(text % "log", "x.yaml"), old, loop)
    assert new.frontends["fe"].captures is old.frontends["fe"].captures
    assert new.frontends["fe"].url_policies.default == "log"


# The rebuilt head skips filtering when classify saw nothing to drop: the two lists must agree.
def test_a_plain_head_needs_no_filter_and_its_headers_pass_verbatim() -> None:
    head = _head(b"GET", b"1.1", (b"Host", b"a"), (b"Cookie", b"x=1"), (b"Content-Length", b"0"))
    classify(head)
    assert head.needs_filter is False
    sent = request_head_bytes(head, b"127.0.0.1", b"http", b"app")
    assert sent.startswith(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: x=1\r\nContent-Length: 0\r\n")


@pytest.mark.parametrize("name", sorted(DROP_REQUEST))
def test_every_dropped_request_header_marks_the_head(name: bytes) -> None:
    head = _head(
        b"GET",
        b"1.1",
        (b"Host", b"a"),
        (name.title(), b"chunked" if name == b"transfer-encoding" else b"x"),
    )
    classify(head)
    assert head.needs_filter is True
    sent = request_head_bytes(head, b"127.0.0.1", b"http", b"app")
    lines = [line.split(b":")[0].lower() for line in sent.split(b"\r\n")[1:]]
    # Gone, except the ones lbd writes itself (X-Forwarded-*, and the framing it re-adds).
    assert lines.count(name) == (
        1 if name.startswith(b"x-forwarded-") or name == b"transfer-encoding" else 0
    )


@pytest.mark.parametrize("name", sorted(SPECIAL_HEADERS))
def test_the_special_header_prefilter_lets_every_spelling_through(name: bytes) -> None:
    for spelling in (name, name.upper(), name.title()):
        assert SPECIAL_KEYS[special_key(spelling)] == 1, spelling
    head = _head(b"GET", b"1.1", (b"Host", b"a"), (b"X-Forwarded-Host".upper(), b"evil"))
    classify(head)
    assert head.needs_filter is True


def test_the_special_header_prefilter_skips_common_names() -> None:
    common = (b"User-Agent", b"Accept", b"Accept-Encoding", b"Cookie", b"Cache-Control")
    assert [SPECIAL_KEYS[special_key(n)] for n in common] == [0, 0, 0, 0, 0]
    assert special_key(b"x" * 300) == 0 and SPECIAL_KEYS[0] == 0


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", b"1.1"),
        (b"GET /a?b=1 HTTP/1.0\r\n\r\n", b"1.0"),
        (b"GET /a?b=1 HTTP/1.2\r\n\r\n", None),  # the parser decides
        (b"GET /a?b=1 HTTP/1.1\n\r\n", None),  # bare LF: the parser decides
        (b"GET /a?b=1 RTSP/1.0\r\n\r\n", None),
        (b"\r\nGET /a?b=1 HTTP/1.1\r\n\r\n", None),  # not at the start: the parser decides
        (b"GET /a?b=2 HTTP/1.1\r\n\r\n", None),  # another target
        (b"GET /a?b=1 HTTP/1.", None),  # cut short
    ],
)
def test_request_line_version(data: bytes, version: bytes | None) -> None:
    assert request_line_version(data, b"GET", b"/a?b=1") == version
