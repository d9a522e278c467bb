"""Per-frontend source access lists (`allow:` / `deny:` CIDRs), checked once per connection.

Rules: a source in `deny` is refused; with `allow` set, a source in none of its networks is
refused too (deny wins over allow). The caller closes a refused connection at once, before
reading a byte (HAProxy's `tcp-request connection reject`). Networks are parsed once per
configuration; verdicts are cached per address in a small bounded dict, so a busy client costs
one dict lookup per connection.
"""

from __future__ import annotations

import ipaddress
from typing import Final

CACHE_SIZE: Final = 4096  # addresses remembered; the cache is simply cleared when full

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessList:
    __slots__ = ("_cache", "allow", "deny")

    def __init__(self, allow: tuple[str, ...], deny: tuple[str, ...]) -> None:
        self.allow: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in allow)
        self.deny: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in deny)
        self._cache: dict[str, bool] = {}

    def permits(self, address: str) -> bool:
        """Whether a client at `address` (an IP literal, IPv4-mapped IPv6 included) may connect."""
        verdict = self._cache.get(address)
        if verdict is None:
            verdict = self._decide(address)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[address] = verdict
        return verdict

    def _decide(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:  # not an IP (a unix socket peer): nothing to match, refuse if listed
            return not self.allow
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny):
            return False
        return not self.allow or any(ip in net for net in self.allow)
