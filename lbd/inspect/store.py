"""A bounded per-frontend record of malformed requests, for the stats page and `show errors`.

Rules:
- HAProxy's `show errors` keeps only the last error per proxy; this keeps, per (reason, module),
  the count, what was done (rejected / logged / normalized / would-reject), the first and last
  time seen and the last SAMPLES_PER_ENTRY samples.
- Bounded: at most MAX_ENTRIES (reason, module) pairs (reasons are a fixed set and modules come
  from the configuration, so the bound is only a guard); a new pair beyond it is only counted in
  `overflow`. Samples are built by the caller with lbd.inspect.mask: nothing in a sample may
  identify a patient, and excerpts are bounded (mask.EXCERPT_BYTES).
- Written only from the event loop (no lock); readers copy plain data out (`to_json`).
Limits: 256 pairs × 10 samples × ~0.5 KiB ≈ 1.3 MiB per frontend at the very worst.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypedDict

MAX_ENTRIES = 256
SAMPLES_PER_ENTRY = 10

# What lbd did with the request.
REJECTED = "rejected"
LOGGED = "logged"  # url_policy: log — forwarded unchanged
NORMALIZED = "normalized"  # url_policy: normalize — forwarded normalized
WOULD_REJECT = "would-reject"  # url_policy_dry_run — forwarded unchanged
ACTIONS = (REJECTED, LOGGED, NORMALIZED, WOULD_REJECT)

NO_MODULE = "-"  # refused before the request could be classified


class SampleJSON(TypedDict):
    time: float  # Unix time
    client: str  # "ip:port"
    method: str  # escaped
    action: str
    status: int  # what the client got (0: forwarded)
    reasons: list[str]  # every violation found, the counted one first
    offset: int  # of the offending byte, -1 when unknown
    where: str  # what `offset` counts from: "target", "message" or ""
    excerpt: str  # escaped and masked


class EntryJSON(TypedDict):
    reason: str
    module: str
    count: int
    actions: dict[str, int]  # ACTIONS → count
    first_seen: float
    last_seen: float
    samples: list[SampleJSON]  # newest first


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    client: str
    method: str
    action: str
    status: int
    reasons: tuple[str, ...]
    offset: int = -1
    where: str = ""
    excerpt: str = ""

    def to_json(self) -> SampleJSON:
        return {
            "time": self.time,
            "client": self.client,
            "method": self.method,
            "action": self.action,
            "status": self.status,
            "reasons": list(self.reasons),
            "offset": self.offset,
            "where": self.where,
            "excerpt": self.excerpt,
        }


class Entry:
    __slots__ = ("actions", "count", "first_seen", "last_seen", "module", "reason", "samples")

    def __init__(self, reason: str, module: str, now: float, samples: int) -> None:
        self.reason = reason
        self.module = module
        self.count = 0
        self.actions = dict.fromkeys(ACTIONS, 0)
        self.first_seen = now
        self.last_seen = now
        self.samples: deque[Sample] = deque(maxlen=samples)

    def to_json(self) -> EntryJSON:
        return {
            "reason": self.reason,
            "module": self.module,
            "count": self.count,
            "actions": dict(self.actions),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "samples": [s.to_json() for s in reversed(self.samples)],
        }


class CaptureStore:
    """Malformed requests of one frontend, by (reason, module)."""

    __slots__ = ("_entries", "max_entries", "overflow", "samples_per_entry")

    def __init__(
        self, max_entries: int = MAX_ENTRIES, samples_per_entry: int = SAMPLES_PER_ENTRY
    ) -> None:
        self.max_entries = max_entries
        self.samples_per_entry = samples_per_entry
        self.overflow = 0  # records that found the table full
        self._entries: dict[tuple[str, str], Entry] = {}

    def record(self, reason: str, module: str, sample: Sample) -> None:
        key = (reason, module)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                self.overflow += 1
                return
            entry = self._entries[key] = Entry(reason, module, sample.time, self.samples_per_entry)
        entry.count += 1
        entry.actions[sample.action] = entry.actions.get(sample.action, 0) + 1
        entry.last_seen = sample.time
        entry.samples.append(sample)

    def entries(self) -> list[Entry]:
        """Most recently seen first."""
        return sorted(self._entries.values(), key=lambda e: (-e.last_seen, e.reason, e.module))

    def get(self, reason: str, module: str = NO_MODULE) -> Entry | None:
        return self._entries.get((reason, module))

    @property
    def total(self) -> int:
        return sum(e.count for e in self._entries.values()) + self.overflow

    def to_json(self) -> list[EntryJSON]:
        return [e.to_json() for e in self.entries()]

    def clear(self) -> None:
        self._entries.clear()
        self.overflow = 0
