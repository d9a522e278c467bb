"""A bounded stick table: key (client address, learned cookie value) → server name.

Rules:
- Sans-IO: the caller passes `now` (the event loop's monotonic clock).
- Bounded: at most `size` entries; inserting into a full table evicts the least recently used
  entry (HAProxy's stick-table `size` drops the oldest too). Memory per entry is measured by
  bench/stick_table_mem.py.
- Ordered by last use: every hit or store moves the entry to the end, so expired entries are
  always at the front and `sweep` stops at the first live one (O(expired), never a full scan).
- Entries name a server by its name, not its state object: the table belongs to the backend's
  identity and survives reloads; a name that no longer exists is the caller's "unknown" case.
"""

from __future__ import annotations

from collections import OrderedDict


class StickTable:
    __slots__ = ("_entries", "evicted", "expire", "expired", "size")

    def __init__(self, size: int, expire: float) -> None:
        if size < 1 or expire <= 0:
            raise ValueError("a stick table needs size >= 1 and expire > 0")
        self.size = size
        self.expire = expire
        # key → (server name, last use). Tuples: the name is shared with the configuration,
        # so an entry costs its key, one tuple and one float.
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.evicted = 0  # entries dropped because the table was full (plain counters)
        self.expired = 0  # entries dropped because they were idle longer than `expire`

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> str | None:
        """The server stored for `key`, refreshing its last use; None if absent or expired."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return None
        name, seen = entry
        if now - seen > self.expire:
            del entries[key]
            self.expired += 1
            return None
        entries[key] = (name, now)
        entries.move_to_end(key)
        return name

    def put(self, key: bytes, server: str, now: float) -> None:
        """Remember that `key` goes to `server`, evicting the least recently used if full."""
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self.size:
            entries.popitem(last=False)
            self.evicted += 1
        entries[key] = (server, now)

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Drop up to `budget` expired entries from the front; returns how many went. Bounded so
        one sweep never holds the event loop long; the caller comes back sooner if it was full."""
        entries = self._entries
        limit = now - self.expire
        dropped = 0
        while entries and dropped < budget:
            key, (_, seen) = next(iter(entries.items()))
            if seen >= limit:
                break
            del entries[key]
            dropped += 1
        self.expired += dropped
        return dropped

    def resize(self, size: int, expire: float) -> None:
        """A reload changed `size` or `expire`: apply it to the kept entries (oldest go first)."""
        if size < 1 or expire <= 0:
            raise ValueError("a stick table needs size >= 1 and expire > 0")
        self.size = size
        self.expire = expire
        while len(self._entries) > size:
            self._entries.popitem(last=False)
            self.evicted += 1

    def items(self) -> list[tuple[bytes, str, float]]:
        """(key, server, last use) oldest first, for `show table` and tests."""
        return [(k, name, seen) for k, (name, seen) in self._entries.items()]
