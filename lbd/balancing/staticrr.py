"""`static-rr`: smooth weighted round-robin over the weights the configuration set at load.

HAProxy's `static-rr`: the same order as `roundrobin`, but `set server weight` does not reorder
(only weight 0, which makes a server unusable, takes it out, as any state change does). Up/down
and admin-state events still regroup. Same cost as `roundrobin`: O(distinct weights) per pick.
"""

from __future__ import annotations

from lbd.balancing.roundrobin import RoundRobin
from lbd.state import ServerState


class StaticRoundRobin(RoundRobin):
    __slots__ = ()

    def _weight(self, server: ServerState) -> int:
        return server.config.weight
