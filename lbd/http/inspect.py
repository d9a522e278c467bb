"""Sans-IO checks of a request head: framing, Host and version.

Rules: pure functions over bytes; a refusal raises a typed BadRequest whose `status` is the
answer and whose `reason` is counted per frontend. httptools (llhttp) accepts several things a
proxy must not forward, so every framing decision is re-checked here (RFC 9112 §6):
- Content-Length together with Transfer-Encoding is a smuggling vector → 400 (§6.1 allows a
  server to reject it; HAProxy and nginx do).
- Content-Length must be digits only; several different values, or a list, → 400 (§6.3).
- Transfer-Encoding must end with `chunked` and contain nothing else we could decode → 501 for an
  unknown coding, 400 for a malformed list; HTTP/1.0 with Transfer-Encoding → 400 (§6.1).
- HTTP/1.1 needs exactly one Host (RFC 9112 §3.2) → 400.
- Only HTTP/1.0 and HTTP/1.1 are served → 505 (llhttp also parses "HTTP/2.0").
"""

from __future__ import annotations

from lbd.errors import BadRequest, NotImplementedMethod, VersionNotSupported
from lbd.http.head import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_EXPECT,
    H_HOST,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_XFF,
    SPECIAL_HEADERS,
    RequestHead,
    parse_connection_tokens,
)


def classify(head: RequestHead) -> int:
    """Fill the framing fields of `head` from its headers, refusing what is unsafe to forward.
    Returns the size of the header section (names, values and separators) for the 431 limit."""
    version = head.version
    if version != b"1.1" and version != b"1.0":
        raise VersionNotSupported("bad-version", version.decode("latin-1"))
    if head.method == b"CONNECT":
        raise NotImplementedMethod("connect-method", "lbd is not a forward proxy")

    special = SPECIAL_HEADERS
    host: bytes | None = None
    host_count = 0
    te_values: list[bytes] | None = None
    cl_value: bytes | None = None
    connection: bytes | None = None
    upgrade: bytes | None = None
    size = 0
    for name, value in head.headers:
        size += len(name) + len(value) + 4
        code = special.get(name.lower())
        if code is None:
            continue
        if code == H_HOST:
            host_count += 1
            host = value
        elif code == H_CONTENT_LENGTH:
            if cl_value is not None and value != cl_value:
                raise BadRequest("content-length-conflict")
            cl_value = value
        elif code == H_TRANSFER_ENCODING:
            if te_values is None:
                te_values = [value]
            else:
                te_values.append(value)
        elif code == H_CONNECTION:
            connection = value if connection is None else connection + b"," + value
        elif code == H_EXPECT:
            head.expect_continue = value.strip().lower() == b"100-continue"
        elif code == H_UPGRADE:
            upgrade = value
        elif code == H_XFF:
            head.xff = value if head.xff is None else head.xff + b", " + value
    head.host = host

    if version == b"1.1":
        if host_count != 1:
            raise BadRequest("missing-host" if host_count == 0 else "duplicate-host")

    if cl_value is not None:
        if not cl_value.isdigit() or len(cl_value) > 18:
            raise BadRequest("bad-content-length")
        head.content_length = int(cl_value)

    if te_values is not None:
        _check_transfer_encoding(head, te_values, cl_value is not None)

    if connection is not None:
        tokens = parse_connection_tokens(connection)
        head.connection_tokens = tokens
        if version == b"1.1":
            head.keep_alive = b"close" not in tokens
        else:
            head.keep_alive = b"keep-alive" in tokens
        if upgrade is not None and b"upgrade" in tokens:
            # h2c would switch the server leg to HTTP/2 behind our back; drop it (RFC 9113 §3.1).
            if upgrade.strip().lower() != b"h2c":
                head.upgrade = upgrade
    elif version == b"1.0":
        head.keep_alive = False

    target = head.target
    q = target.find(b"?")
    if q < 0:
        head.path = target
    else:
        head.path = target[:q]
        head.query = target[q + 1 :]
    return size


def _check_transfer_encoding(head: RequestHead, values: list[bytes], has_cl: bool) -> None:
    if head.version == b"1.0":
        raise BadRequest("te-on-http10")
    if has_cl:
        raise BadRequest("cl-and-te")
    te = b",".join(values)
    codings = [c.strip().lower() for c in te.split(b",")]
    if codings != [b"chunked"]:
        if any(not c for c in codings) or codings.count(b"chunked") > 1:
            raise BadRequest("bad-transfer-encoding")
        raise NotImplementedMethod("unsupported-transfer-encoding", te.decode("latin-1"))
    head.chunked = True
    head.transfer_encoding = te
