"""The immutable runtime snapshot: everything built from one configuration.

Rules: a request reads `holder.runtime` once, when it starts, and uses that snapshot to the
end, so a reload is one assignment (`holder.runtime = new`) and requests in flight finish on the
old one. `build_runtime(cfg, previous)` keeps state that belongs to an identity rather than to a
config: servers (health, admin state, counters, pooled connections) by (backend, server name),
and frontend/backend/module counters by name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lbd.balancing.base import Balancer
from lbd.balancing.keys import KeyExtractor, key_extractor
from lbd.balancing.registry import make_balancer
from lbd.config.schema import Backend, Config, Frontend, Limits, Rule
from lbd.inspect.policy import UrlPolicies
from lbd.inspect.store import CaptureStore
from lbd.limits.access import AccessList
from lbd.limits.gate import ConnGate
from lbd.limits.rate import SourceLimiter
from lbd.proxy.connpool import ConnPool
from lbd.routing.router import Router
from lbd.state import ServerState
from lbd.stats.counters import BackendCounters, FrontendCounters, TrafficCounters
from lbd.sticky.policy import StickyPolicy
from lbd.sticky.sweeper import TableSweeper
from lbd.sticky.table import StickTable
from lbd.tls.context import FrontendTls, LoadedTls, load_tls

if TYPE_CHECKING:
    from lbd.logs.access import AccessLog
    from lbd.proxy.exchange import Exchange

log = logging.getLogger("lbd.runtime")


class BackendRuntime:
    __slots__ = (
        "_no_server_logged",
        "active",
        "backups",
        "balancer",
        "config",
        "counters",
        "host_header",
        "key_of",
        "name",
        "queue",
        "queue_limit",
        "servers",
        "sticky",
        "sweeper",
    )

    def __init__(
        self,
        config: Backend,
        servers: list[ServerState],
        counters: BackendCounters,
        sweeper: TableSweeper | None = None,
    ) -> None:
        self.name = config.name
        self.host_header = config.name.encode()  # Host for HTTP/1.0 requests that have none
        self.config = config
        self.servers = servers
        self.active = [s for s in servers if not s.config.backup]
        self.backups = [s for s in servers if s.config.backup]
        self.balancer: Balancer = make_balancer(config.balance, self.active)
        # Hash algorithms get their key from the request; the algorithm never parses HTTP.
        self.key_of: KeyExtractor | None = key_extractor(config.balance)
        # Requests waiting for a slot when every usable server is at its maxconn, oldest first
        # (HAProxy's backend queue). Bounded by the servers' maxqueue when all set one, and by
        # timeouts.queue in any case.
        self.queue: deque[Exchange] = deque()
        limits = [s.config.maxqueue for s in servers]
        self.queue_limit = sum(limits) if limits and all(limits) else 0
        self.counters = counters
        self._no_server_logged = False
        # Persistence (cookie, stick table): None keeps the request path to one attribute test.
        # The table and its sweeper belong to the backend's name and outlive reloads.
        self.sweeper = sweeper
        self.sticky: StickyPolicy | None = None
        if config.sticky is not None:
            table = sweeper.table if sweeper is not None else None
            self.sticky = StickyPolicy(config.name, config.sticky, servers, table)

    def pick(self, key: bytes | None, avoid: ServerState | None) -> ServerState | None:
        """A server for a new request: actives through the balancer, else the first usable
        backup (all of them in turn with `allbackups`)."""
        server = self.balancer.pick(key, avoid)
        if server is None and avoid is not None:
            # The only usable server is the one that just failed: better it than a 503.
            server = self.balancer.pick(key, None)
        if server is None:
            server = self._pick_backup(avoid)
        if server is None:
            if not self._no_server_logged:
                log.error("backend %s has no server available!", self.name)
                self._no_server_logged = True
        else:
            self._no_server_logged = False
        return server

    def pick_with_room(
        self, key: bytes | None, avoid: ServerState | None
    ) -> tuple[ServerState | None, bool]:
        """(server, False) for a server below its maxconn; (None, True) when usable servers
        exist but all are full (the request should wait); (None, False) when none is usable."""
        server = self.pick(key, avoid)
        if server is not None and server.has_room():
            return server, False
        if server is not None:
            # Full: look further, skipping it (O(n) only while servers are saturated).
            for _ in range(len(self.servers)):
                other = self.balancer.pick(key, server)
                if other is None or other is server:
                    break
                if other.has_room():
                    return other, False
                server = other
        usable = [s for s in self.servers if s.usable()]
        if usable and not any(s.has_room() for s in usable):
            return None, True
        return (server if server is not None and server.has_room() else None), False

    def wake_one(self) -> None:
        """A slot was freed: the oldest waiting request that can use it tries again. Requests
        waiting for their own persistent server (still full) keep their place, as they would in
        HAProxy's per-server queue."""
        queue = self.queue
        skipped: list[Exchange] = []
        while queue:
            ex = queue.popleft()
            if ex.waits_for_its_server():
                skipped.append(ex)
                continue
            self.counters.queue_cur -= 1
            if ex.leave_queue():
                break
        if skipped:
            queue.extendleft(reversed(skipped))

    def _pick_backup(self, avoid: ServerState | None) -> ServerState | None:
        usable = [s for s in self.backups if s.usable()]
        if not usable:
            return None
        if self.config.allbackups:
            # Rotate through the usable backups; the list is tiny.
            self.backups.append(self.backups.pop(0))
        preferred = [s for s in usable if s is not avoid]
        return (preferred or usable)[0]

    def server(self, name: str) -> ServerState | None:
        for s in self.servers:
            if s.name == name:
                return s
        return None


class FrontendRuntime:
    __slots__ = (
        "acl",
        "allowed_methods",
        "captures",
        "config",
        "counters",
        "gate",
        "hsts",
        "limiter",
        "limits",
        "module_counters",
        "module_servers",
        "name",
        "router",
        "timeouts",
        "tls",
        "url_policies",
    )

    def __init__(
        self,
        config: Frontend,
        limits: Limits,
        counters: FrontendCounters,
        module_counters: dict[str, TrafficCounters],
        captures: CaptureStore | None = None,
        module_servers: dict[tuple[str, str, str], TrafficCounters] | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.router = Router(config)
        self.counters = counters
        self.limits = limits
        self.timeouts = config.timeouts
        self.module_counters = module_counters
        # (module, backend, server) → counters of that module on that server, kept by identity
        self.module_servers: dict[tuple[str, str, str], TrafficCounters] = (
            module_servers if module_servers is not None else {}
        )
        # Request inspection: the capture store is kept across reloads like the counters.
        self.captures = captures if captures is not None else CaptureStore()
        self.url_policies = UrlPolicies(config)
        self.allowed_methods = frozenset(m.encode() for m in config.allowed_methods)
        # Edge protection (lbd.limits): `build_runtime` hands over the previous snapshot's
        # limiter table and maxconn gate, which belong to the frontend's name like counters.
        self.acl = AccessList(config.allow, config.deny) if config.allow or config.deny else None
        self.limiter: SourceLimiter | None = None
        self.gate: ConnGate | None = None
        self.tls: FrontendTls | None = None  # loaded certificates, when the frontend has `tls:`
        self.hsts = b""  # the Strict-Transport-Security line for responses, when configured


@dataclass(slots=True)
class Runtime:
    config: Config
    frontends: dict[str, FrontendRuntime]
    backends: dict[str, BackendRuntime]
    generation: int = 0
    servers: dict[tuple[str, str], ServerState] = field(default_factory=dict)
    # Where requests of this snapshot log (set by the worker; None with `log.access: off`):
    # a reload that changes `global.log` gives new requests a new target at the swap.
    access_log: AccessLog | None = None


class RuntimeHolder:
    """The one mutable reference: listeners read `.runtime` per request; reload assigns it."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


def build_runtime(
    cfg: Config,
    previous: Runtime | None,
    loop: asyncio.AbstractEventLoop,
    tls: LoadedTls | None = None,
) -> Runtime:
    """A new snapshot for `cfg`, reusing identity-owned state from `previous`. `tls` holds the
    certificates `cfg` names, loaded beforehand (off the loop on reload); without it they are
    loaded here (ConfigErrors when a file is unusable)."""
    if tls is None:
        tls = load_tls(cfg)
    old_servers = previous.servers if previous is not None else {}
    servers: dict[tuple[str, str], ServerState] = {}
    backends: dict[str, BackendRuntime] = {}
    for b in cfg.backends:
        states: list[ServerState] = []
        for s in b.servers:
            state = old_servers.get((b.name, s.name))
            if state is None or state.config.address != s.address:
                pool = ConnPool(loop, s.address, b.pool_max_idle, b.pool_idle_timeout)
                state = ServerState(b.name, s, pool)
            else:
                # Same identity and address: keep health, admin state, counters and pool.
                if state.config.weight != s.weight:
                    state.set_weight(s.weight)  # the file changed it; else keep `set server weight`
                state.config = s
                state.pool.max_idle = b.pool_max_idle
                state.pool.idle_timeout = b.pool_idle_timeout
            # TLS to the server (or back to plain); pooled connections keep what they have.
            state.pool.ssl = tls.servers.get((b.name, s.name))
            state.pool.server_hostname = (s.tls.sni or s.address.host) if s.tls else None
            servers[(b.name, s.name)] = state
            states.append(state)
        old_backend = previous.backends.get(b.name) if previous is not None else None
        counters = old_backend.counters if old_backend is not None else BackendCounters()
        sweeper = _stick_table(b, old_backend, loop)
        backend = BackendRuntime(b, states, counters, sweeper)
        if old_backend is not None:
            # Requests waiting for a slot stay in one queue across the swap: whichever snapshot
            # frees a slot wakes the oldest of them.
            backend.queue = old_backend.queue
        backends[b.name] = backend

    if previous is not None:
        for old in previous.backends.values():
            new_backend = backends.get(old.name)
            if old.sweeper is not None and (
                new_backend is None or new_backend.sweeper is not old.sweeper
            ):
                old.sweeper.stop()  # the table was dropped or replaced: its entries go with it

    frontends: dict[str, FrontendRuntime] = {}
    for f in cfg.frontends:
        old_fe = previous.frontends.get(f.name) if previous is not None else None
        fe_counters = old_fe.counters if old_fe is not None else FrontendCounters()
        modules: dict[str, TrafficCounters] = {}
        for name in (*(m.name for m in f.modules), "other"):
            old_mod = old_fe.module_counters.get(name) if old_fe is not None else None
            modules[name] = old_mod if old_mod is not None else TrafficCounters()
        captures = old_fe.captures if old_fe is not None else None
        fe_rt = frontends[f.name] = FrontendRuntime(
            f,
            cfg.global_.limits,
            fe_counters,
            modules,
            captures,
            old_fe.module_servers if old_fe is not None else None,
        )
        _edge(fe_rt, old_fe, tls)

    generation = previous.generation + 1 if previous is not None else 1
    return Runtime(cfg, frontends, backends, generation, servers)


def _edge(fe: FrontendRuntime, old: FrontendRuntime | None, tls: LoadedTls) -> None:
    """TLS, per-source limits and maxconn of a new frontend snapshot; the limiter table and the
    gate are the previous ones when they exist (re-configured), so a reload keeps them."""
    cfg = fe.config
    fe.tls = tls.frontends.get(fe.name)
    fe.hsts = fe.tls.hsts_header if fe.tls is not None else b""
    if cfg.per_source is not None:
        limiter = old.limiter if old is not None else None
        if limiter is None:
            limiter = SourceLimiter(cfg.per_source)
        else:
            limiter.configure(cfg.per_source)
        fe.limiter = limiter
    gate = old.gate if old is not None else None
    if gate is None:
        gate = ConnGate(cfg.maxconn)
    gate.maxconn = cfg.maxconn
    fe.gate = gate


def _stick_table(
    b: Backend, old: BackendRuntime | None, loop: asyncio.AbstractEventLoop
) -> TableSweeper | None:
    """The backend's stick table (with its sweeper): kept from `old` when the table still keys
    on the same thing, so entries survive a reload (they name servers by name: a server that
    keeps its backend and name keeps its sessions); new otherwise."""
    spec = b.sticky.table if b.sticky is not None else None
    if spec is None:
        return None
    kept = old.sweeper if old is not None else None
    old_spec = old.config.sticky.table if old is not None and old.config.sticky else None
    if (
        kept is not None
        and old_spec is not None
        and (old_spec.on, old_spec.learn_cookie)
        == (
            spec.on,
            spec.learn_cookie,
        )
    ):
        kept.table.resize(spec.size, spec.expire)
        return kept
    sweeper = TableSweeper(loop, StickTable(spec.size, spec.expire))
    sweeper.start()
    return sweeper


def describe_changes(old: Config, new: Config) -> list[str]:
    """Human-readable differences between two configurations, for `lbd reload`.

    Compares configurations, not runtime states: states are shared across a reload on purpose.
    """
    changes: list[str] = []
    old_be = {b.name: b for b in old.backends}
    new_be = {b.name: b for b in new.backends}
    changes += [f"backend added: {n}" for n in sorted(new_be.keys() - old_be.keys())]
    changes += [f"backend removed: {n}" for n in sorted(old_be.keys() - new_be.keys())]
    old_srv = {(b.name, s.name): s for b in old.backends for s in b.servers}
    new_srv = {(b.name, s.name): s for b in new.backends for s in b.servers}
    changes += [f"server added: {b}/{s}" for b, s in sorted(new_srv.keys() - old_srv.keys())]
    changes += [f"server removed: {b}/{s}" for b, s in sorted(old_srv.keys() - new_srv.keys())]
    for b, s in sorted(new_srv.keys() & old_srv.keys()):
        o, n = old_srv[(b, s)], new_srv[(b, s)]
        if o.weight != n.weight:
            changes.append(f"weight {b}/{s}: {o.weight} -> {n.weight}")
        if o.address != n.address:
            changes.append(f"address {b}/{s}: {o.address} -> {n.address}")
    for name in sorted(new_be.keys() & old_be.keys()):
        o_be, n_be = old_be[name], new_be[name]
        if o_be.balance != n_be.balance:
            changes.append(f"balance {name}: {n_be.balance.algorithm}")
        if o_be.health_check != n_be.health_check:
            changes.append(f"health_check changed: backend {name}")
        if o_be.observe != n_be.observe:
            changes.append(f"observe changed: backend {name}")
        if o_be.sticky != n_be.sticky:
            changes.append(f"sticky changed: backend {name}")
    old_fe = {f.name: f for f in old.frontends}
    new_fe = {f.name: f for f in new.frontends}
    changes += [f"frontend added: {n}" for n in sorted(new_fe.keys() - old_fe.keys())]
    changes += [f"frontend removed: {n}" for n in sorted(old_fe.keys() - new_fe.keys())]
    for name in sorted(new_fe.keys() & old_fe.keys()):
        of, nf = old_fe[name], new_fe[name]
        if _without_lines(of.rules) != _without_lines(nf.rules):
            changes.append(f"rules changed: frontend {name} ({len(nf.rules)} rules)")
        if of.modules != nf.modules:
            changes.append(f"modules changed: frontend {name}")
        if of.default_backend != nf.default_backend:
            changes.append(f"default_backend {name}: {of.default_backend} -> {nf.default_backend}")
        if (of.allow, of.deny) != (nf.allow, nf.deny):
            changes.append(f"access lists changed: frontend {name}")
        if of.per_source != nf.per_source or of.maxconn != nf.maxconn:
            changes.append(f"limits changed: frontend {name}")
    # Certificate files are re-read on every reload, changed or not.
    changes += [f"certificates reloaded: frontend {f.name}" for f in new.frontends if f.tls]
    return changes


def _without_lines(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """Rules compared by meaning: moving a rule down the file is not a change."""
    return tuple(replace(r, line=0) for r in rules)
