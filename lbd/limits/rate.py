"""Per-source abuse limits: a token bucket of requests and a count of open connections per
client address, in a bounded table (HAProxy: a stick table on `src` with `http_req_rate` and
`conn_cur`, used by `http-request deny deny_status 429`).

Rules:
- A request takes one token; tokens refill at `requests_per_second` up to `burst`. Without a
  token the request gets 429 with `Retry-After` (seconds until the next token, at least 1).
- A connection beyond `max_connections` open ones from its address is marked at accept; a
  request sent within 1 s (lbd.proxy.client.REFUSE_GRACE) gets 429 (`Retry-After: 1`), then it
  closes; silent that long, it is closed without a reply. The connection never counts.
- The table holds at most `table_size` addresses, least recently seen evicted first. A
  connection keeps its own entry, so an entry evicted while connections are open only makes
  that address's count start again from zero: the table stays bounded under an address sweep,
  at the cost of precision for the addresses pushed out.
- Everything here runs on the event loop, no locks; one OrderedDict move per request.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

from lbd.config.schema import PerSource
from lbd.errors import BadRequest
from lbd.http import wire

MAX_RETRY_AFTER: Final = 3600  # seconds; a bucket slower than one token an hour is a config mistake


class Source:
    """What is known of one client address."""

    __slots__ = ("conns", "stamp", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.stamp = now
        self.conns = 0


class Limited(BadRequest):
    """A request refused by a per-source limit; `response` is the whole 429 to send."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason, status=429)
        self.response = too_many_requests(retry_after)


class SourceLimiter:
    """The per-source table of one frontend; kept across reloads, re-`configure`d by them."""

    __slots__ = ("burst", "max_connections", "rate", "size", "table")

    def __init__(self, cfg: PerSource) -> None:
        self.table: OrderedDict[bytes, Source] = OrderedDict()
        self.rate = 0.0
        self.burst = 1.0
        self.max_connections = 0
        self.size = 1
        self.configure(cfg)

    def configure(self, cfg: PerSource) -> None:
        self.rate = cfg.requests_per_second
        self.burst = float(cfg.burst or max(1, math.ceil(cfg.requests_per_second)))
        self.max_connections = cfg.max_connections
        self.size = cfg.table_size
        while len(self.table) > self.size:
            self.table.popitem(last=False)

    def connect(self, address: bytes, now: float) -> Source | None:
        """Count a new connection from `address`; None when it is over `max_connections`."""
        src = self._entry(address, now)
        if self.max_connections and src.conns >= self.max_connections:
            return None
        src.conns += 1
        return src

    def take(self, src: Source, address: bytes, now: float) -> int:
        """Take a token for one request: 0 when allowed, else the seconds to wait."""
        rate = self.rate
        if not rate:
            return 0
        table = self.table
        if address in table:
            table.move_to_end(address)
        else:  # evicted meanwhile: back in, as the most recent
            table[address] = src
            self._trim()
        tokens = min(self.burst, src.tokens + (now - src.stamp) * rate)
        src.stamp = now
        if tokens >= 1.0:
            src.tokens = tokens - 1.0
            return 0
        src.tokens = tokens
        return min(MAX_RETRY_AFTER, max(1, math.ceil((1.0 - tokens) / rate)))

    def _entry(self, address: bytes, now: float) -> Source:
        table = self.table
        src = table.get(address)
        if src is None:
            src = table[address] = Source(self.burst, now)
            self._trim()
        else:
            table.move_to_end(address)
        return src

    def _trim(self) -> None:
        table = self.table
        while len(table) > self.size:
            table.popitem(last=False)


_RESPONSES: Final[dict[int, bytes]] = {}


def too_many_requests(retry_after: int) -> bytes:
    """The canned 429 with `Retry-After` (RFC 6585 §4); built once per distinct delay."""
    response = _RESPONSES.get(retry_after)
    if response is None:
        canned = wire.error_response(429)
        end = canned.index(b"\r\n") + 2
        response = canned[:end] + b"Retry-After: %d\r\n" % retry_after + canned[end:]
        if len(_RESPONSES) < MAX_RETRY_AFTER:
            _RESPONSES[retry_after] = response
    return response
