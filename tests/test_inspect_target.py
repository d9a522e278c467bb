"""Request-target checks and normalization (lbd.http.target), as pure functions.

Each rule has a table of (target → reasons, routing path, normalized target); `normalize` is
checked idempotent with hypothesis, and its output is checked clean (no violation left)."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lbd.http import target as t
from lbd.http.target import (
    PATH_CHARS,
    UNRESERVED,
    analyze,
    is_clean,
    normalize,
    same_authority,
    valid_host,
)

# target → (reasons, routing path, normalized target or None)
CASES: list[tuple[bytes, tuple[str, ...], bytes, bytes | None]] = [
    # clean and already normal
    (b"/", (), b"/", b"/"),
    (b"/a/b?x=1&y=2", (), b"/a/b", b"/a/b?x=1&y=2"),
    (b"/.well-known/acme", (), b"/.well-known/acme", b"/.well-known/acme"),
    (b"/a?", (), b"/a", b"/a?"),
    # legal but not normal: routing sees the normal form, no violation
    (b"/%61dmin", (), b"/admin", b"/admin"),
    (b"//admin", (), b"/admin", b"/admin"),
    (b"/a%2fb", (), b"/a%2Fb", b"/a%2Fb"),
    (b"/caf%c3%a9", (), b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/a?q=DUPONT%20Jean", (), b"/a", b"/a?q=DUPONT%20Jean"),
    (b"/a?q=x%0Ay", (), b"/a", b"/a?q=x%0Ay"),  # a multi-line form value
    (b"/a?q={1}|[2]^`", (), b"/a", b"/a?q={1}|[2]^`"),  # browsers send these raw
    # dot-segments that stay inside the root: repairable
    (b"/static/../admin", (t.DOT_SEGMENT,), b"/admin", b"/admin"),
    (b"/static/%2e%2e/admin", (t.DOT_SEGMENT,), b"/admin", b"/admin"),
    (b"/static/%2E%2e/admin", (t.DOT_SEGMENT,), b"/admin", b"/admin"),
    (b"/./admin", (t.DOT_SEGMENT,), b"/admin", b"/admin"),
    (b"/a/./b/../c/", (t.DOT_SEGMENT,), b"/a/c/", b"/a/c/"),
    (b"/a/b/..", (t.DOT_SEGMENT,), b"/a/", b"/a/"),
    (b"/a/.", (t.DOT_SEGMENT,), b"/a/", b"/a/"),
    # climbing above the root, in every spelling: never forwarded normalized
    (b"/..", (t.ABOVE_ROOT,), b"/", None),
    (b"/a/../../etc/passwd", (t.ABOVE_ROOT,), b"/etc/passwd", None),
    (b"/%2e%2e/x", (t.ABOVE_ROOT,), b"/x", None),
    (b"/%252e%252e/x", (t.ABOVE_ROOT, t.DOUBLE_ENCODING), b"/x", None),
    (b"/..%2f..%2fx", (t.ABOVE_ROOT,), b"/x", None),
    (b"/..\\x", (t.ABOVE_ROOT, t.BACKSLASH), b"/x", None),
    # dot-segments only a liberal backend would see: routed on that reading, never forwarded
    (b"/static/%252e%252e/admin", (t.HIDDEN_DOT_SEGMENT, t.DOUBLE_ENCODING), b"/admin", None),
    (b"/%2561dmin", (t.DOUBLE_ENCODING,), b"/admin", None),  # routed as a liberal backend reads it
    (b"/100%25.pdf", (), b"/100%25.pdf", b"/100%25.pdf"),  # a literal '%' is fine
    (b"/static%2F..%2Fadmin", (t.HIDDEN_DOT_SEGMENT,), b"/admin", None),
    (b"/static/..;/admin", (t.HIDDEN_DOT_SEGMENT,), b"/admin", None),
    (b"/static%5C..%5Cadmin", (t.HIDDEN_DOT_SEGMENT,), b"/admin", None),
    # backslashes: read as '/', as browsers do
    (b"/static\\..\\admin", (t.BACKSLASH, t.DOT_SEGMENT), b"/admin", b"/admin"),
    (b"/a\\b", (t.BACKSLASH,), b"/a/b", b"/a/b"),
    # percent-encoding
    (b"/a%zz", (t.BAD_PERCENT,), b"/a%zz", None),
    (b"/a%4", (t.BAD_PERCENT,), b"/a%4", None),
    (b"/a?q=100%", (t.BAD_PERCENT,), b"/a", None),
    (b"/a%00b", (t.ENCODED_NUL,), b"/a%00b", None),
    (b"/a?id=%00", (t.ENCODED_NUL,), b"/a", None),
    (b"/a%0d%0aSet-Cookie:x", (t.ENCODED_CONTROL,), b"/a%0D%0ASet-Cookie:x", None),
    (b"/a%7f", (t.ENCODED_CONTROL,), b"/a%7F", None),
    # bytes outside the allowed set
    (b"/a<b>", (t.BAD_CHAR,), b"/a%3Cb%3E", b"/a%3Cb%3E"),
    (b'/a"b', (t.BAD_CHAR,), b"/a%22b", b"/a%22b"),
    (b"/a b", (t.BAD_CHAR,), b"/a%20b", b"/a%20b"),  # llhttp refuses it before us
    (b"/a\x00b", (t.BAD_CHAR,), b"/a%00b", None),
    (b"/a\x7fb", (t.BAD_CHAR,), b"/a%7Fb", None),
    (b"/a\xc3\xa9", (t.BAD_CHAR,), b"/a%C3%A9", b"/a%C3%A9"),
    (b"/a?q=<x>", (t.BAD_CHAR,), b"/a", None),  # the query is never rewritten
    # fragment
    (b"/a#frag", (t.FRAGMENT,), b"/a", b"/a"),
    (b"/a?x=1#frag", (t.FRAGMENT,), b"/a", b"/a?x=1"),
    # forms
    (b"*", (t.ASTERISK_FORM,), b"*", None),  # with GET
    (b"http://ehr.test/x?y=1", (), b"/x", b"/x?y=1"),
    (b"HTTP://EHR.TEST:80/x", (), b"/x", b"/x"),
    (b"http://ehr.test", (t.EMPTY_PATH,), b"/", b"/"),
    (b"http://ehr.test?x=1", (t.EMPTY_PATH,), b"/", b"/?x=1"),
    (b"http://other.test/x", (t.HOST_MISMATCH,), b"/x", None),
    (b"http://u:p@ehr.test/x", (t.USERINFO,), b"/x", None),
    (b"ftp://ehr.test/x", (t.BAD_FORM,), b"/x", None),
    (b"ehr.test:443", (t.BAD_FORM,), b"ehr.test:443", None),
]


@pytest.mark.parametrize(("target", "reasons", "path", "normalized"), CASES)
def test_analyze(
    target: bytes, reasons: tuple[str, ...], path: bytes, normalized: bytes | None
) -> None:
    report = analyze(b"GET", target, b"ehr.test")
    assert set(report.reasons) == set(reasons), report
    assert report.path == path, report
    assert report.normalized == normalized, report
    if reasons:
        assert report.reasons[0] == report.violations[0].reason
        # What cannot be repaired is counted first.
        assert report.violations[0].fixable == (normalized is not None)


def test_options_asterisk_is_fine() -> None:
    report = analyze(b"OPTIONS", b"*", b"ehr.test")
    assert (report.reasons, report.path, report.normalized) == ((), b"*", b"*")


def test_offsets_point_at_the_offending_byte() -> None:
    cases = {
        b"/static/../admin": 8,
        b"/a%zz": 2,
        b"/a?id=%00": 6,
        b"/a#frag": 2,
        b"/a<b": 2,
        b"http://other.test/x": 7,
        b"http://u@ehr.test/x": 8,
    }
    for target, offset in cases.items():
        first = analyze(b"GET", target, b"ehr.test").violations[0]
        assert first.offset == offset, (target, first)


def test_absolute_form_is_forwarded_as_origin_form() -> None:
    report = analyze(b"GET", b"http://ehr.test/a/../b?x=1", b"ehr.test")
    assert report.forward == b"/a/../b?x=1"  # log policy: unchanged, minus scheme and host
    assert report.normalized == b"/b?x=1"
    assert analyze(b"GET", b"http://ehr.test", None).forward == b"/"


def test_is_clean_is_exactly_the_common_case() -> None:
    assert is_clean(b"/comptes-rendus/2024/12345?from=2024-01-01&page=2")
    for target in (b"/a%20b", b"/a/../b", b"//a", b"/a\\b", b"/a#b", b"*", b"http://a/", b"/a<"):
        assert not is_clean(target), target
    assert not is_clean(b"/.well-known/x")  # slow path, no violation
    assert analyze(b"GET", b"/.well-known/x", None).violations == []


def _clean_by_definition(target: bytes) -> bool:
    """is_clean's specification in plain bytes operations (what it was before the regex)."""
    allowed = PATH_CHARS + b"?"
    return (
        target[:1] == b"/"
        and not target.translate(None, allowed)
        and b"/." not in target
        and b"//" not in target
    )


def test_is_clean_matches_its_definition_on_random_targets() -> None:
    rng = random.Random(7)
    alphabet = b"/.?a-%_~:@!$&'()*+,;=#\\ Z9{"
    for _ in range(20_000):
        target = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        assert is_clean(target) is _clean_by_definition(target), target
    for target in (b"/", b"/a/", b"/a.b/c.d", b"/a/.", b"/a//", b"/?x=/.", b"/a?b=c/d", b""):
        assert is_clean(target) is _clean_by_definition(target), target


def _host_by_definition(host: bytes) -> bool | None:
    """valid_host's old fast path: True when it accepted without the regex, else None."""
    if not host.translate(None, UNRESERVED):
        return True
    colon = host.rfind(b":")
    if colon >= 0 and host[:1] != b"[":
        port = host[colon + 1 :]
        if port and not port.isdigit():
            return False
        if not host[:colon].translate(None, UNRESERVED):
            return True
    return None


def test_valid_host_fast_path_agrees_on_random_hosts() -> None:
    rng = random.Random(11)
    alphabet = b"a.-Z9:[]@/ _~%"
    for _ in range(20_000):
        host = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 10)))
        expected = _host_by_definition(host)
        if expected is not None:
            assert valid_host(host) is expected, host


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        (b"ehr.test", True),
        (b"ehr.test:8080", True),
        (b"ehr.test:", True),  # RFC 3986: port = *DIGIT
        (b"", True),  # RFC 9112 §3.2: an empty authority is sent as an empty Host
        (b"127.0.0.1:80", True),
        (b"[::1]:8443", True),
        (b"xn--caf-dma.test", True),
        (b"user@ehr.test", False),
        (b"ehr.test:80x", False),
        (b"ehr test", False),
        (b"ehr.test/x", False),
        (b"a:b:80", False),
        (b"[::1", False),
    ],
)
def test_valid_host(host: bytes, ok: bool) -> None:
    assert valid_host(host) is ok


def test_same_authority() -> None:
    assert same_authority(b"EHR.test:80", b"ehr.test", b"http")
    assert same_authority(b"ehr.test:443", b"ehr.test", b"https")
    assert not same_authority(b"ehr.test:8080", b"ehr.test", b"http")
    assert not same_authority(b"ehr.test:443", b"ehr.test", b"http")


# --- normalize: idempotent, and its output has nothing left to report -----------------------------

PATH_ALPHABET = b"ab./\\%25eEfF0;?#:@~-_<>\"' xz"
segments = st.sampled_from(
    [b"a", b"b", b".", b"..", b"%2e", b"%2E%2e", b"%252e", b"%2f", b"%5C", b"\\", b"", b";x",
     b"%41", b"%7e", b"%zz", b"%00", b"%0a", b"<", b"caf%c3%a9", b"?q=1", b"#f", b"%25"]
)  # fmt: skip
targets = st.one_of(
    st.lists(segments, max_size=8).map(lambda parts: b"/" + b"/".join(parts)),
    st.binary(max_size=40).map(lambda b: b"/" + b),
    st.text(alphabet=PATH_ALPHABET.decode(), max_size=40).map(lambda s: ("/" + s).encode()),
)


@settings(max_examples=3000, deadline=None, database=None)
@given(targets)
@example(b"/a/..%2f")
@example(b"/%2e%2e%252f")
@example(b"/.%2e/")
def test_normalize_is_idempotent_and_clean(target: bytes) -> None:
    once = normalize(target)
    if once is None:
        return
    assert normalize(once) == once
    report = analyze(b"GET", once, None)
    assert report.violations == [], (target, once, report)
    assert report.path == once.split(b"?", 1)[0]  # routing sees exactly what is forwarded
    assert b"//" not in report.path and b"/./" not in report.path + b"/"


@settings(max_examples=2000, deadline=None, database=None)
@given(targets)
def test_routing_path_never_climbs_and_is_what_normalize_sends(target: bytes) -> None:
    report = analyze(b"GET", target, None)
    assert report.path.startswith(b"/")
    for seg in report.path.split(b"/"):
        assert seg not in (b".", b"..")
    if report.normalized is not None:
        assert report.normalized.split(b"?", 1)[0] == report.path
