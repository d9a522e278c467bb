"""The health manager: configures every server's health state and runs its active checks.

Rules:
- The state lives on ServerState (`server.health`, `server.observer`), which build_runtime keeps
  across reloads by identity (backend, server name, same address): a reload never resets a
  server's health. The manager only holds the running check tasks, keyed by ServerState.
- A server is checked when it has an effective check (its own `health_check`, else its
  backend's) and `check: true`. A server seen for the first time starts in `init_state`; a
  kept server keeps its state; one that loses its check becomes UP.
- Reload keeps a server's task when the server object and its check configuration are both
  unchanged; otherwise the old task stops and a new one starts (same state, new settings).
- Every UP<->DOWN change is logged once, in HAProxy's words, and the backend's balancer is told
  (`server_changed(server)`). The backend is looked up in the current runtime at that moment.
- `disable` / `enable` are the operator's `disable|enable health B/S`: the task stops (the
  server counts as UP, passive observation is ignored) or restarts. The flag is on the state, so
  it survives reloads.
- With worker processes there is still one health truth, the master's manager: it runs the
  active checks and every passive trigger (`apply_passive`), and `on_transition` broadcasts each
  UP<->DOWN change. A worker's manager is a `follower`: it configures the same states but runs
  no check, forwards passive triggers (ForwardingObserver) instead of acting on them, and only
  applies the master's verdicts (`apply_remote`), without logging them a second time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable

from lbd.balancing.slowstart import SlowStarts
from lbd.config.schema import Backend, HealthCheck, Observe, Server
from lbd.health.active import Checker, stop_all
from lbd.health.passive import Observer
from lbd.health.state import HealthState, IllegalTransition, Op
from lbd.runtime import BackendRuntime, Runtime, RuntimeHolder
from lbd.state import ServerState

log = logging.getLogger("lbd.events")


class HealthError(Exception):
    """An operator request that cannot apply (no check on that server)."""


def effective_check(backend: Backend, server: Server) -> HealthCheck | None:
    """The check that applies to `server`: its own (already merged over the backend's by the
    loader), else the backend's; None with `check: false` or when neither has one."""
    if not server.check:
        return None
    return server.health_check if server.health_check is not None else backend.health_check


# A passive trigger forwarded to the master: (server, `what` of the last error).
PassiveForward = Callable[[ServerState, str], None]


class ForwardingObserver(Observer):
    """A worker's passive observer: counts consecutive errors like any Observer, but at the
    limit hands the trigger to the master (the one health truth) instead of acting on it."""

    __slots__ = ("forward", "server")

    def __init__(
        self, config: Observe, health: HealthState, server: ServerState, forward: PassiveForward
    ) -> None:
        super().__init__(config, health)
        self.server = server
        self.forward = forward

    def act(self, n: int, what: str) -> None:
        self.forward(self.server, what)


class HealthManager:
    def __init__(
        self, rng: random.Random | None = None, *, follower: PassiveForward | None = None
    ) -> None:
        # `follower`: this is a worker process's manager; passive triggers go there.
        self.follower = follower
        # Called after every UP<->DOWN change (the master broadcasts it to its workers).
        self.on_transition: Callable[[ServerState], None] | None = None
        self._holder: RuntimeHolder | None = None
        self._checkers: dict[ServerState, Checker] = {}
        self._stopping: list[asyncio.Task[None]] = []
        self._rng = rng if rng is not None else random.Random()
        self.slowstarts = SlowStarts()  # weight ramps of servers that came back (slowstart)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, holder: RuntimeHolder) -> None:
        """Configure every server of the current runtime and start its checks. Call before
        the listeners open, so `init_state: down` holds from the first request."""
        self._holder = holder
        self._apply(holder.runtime, previous=None)

    def reload(self, old: Runtime, new: Runtime) -> None:
        """After `holder.runtime = new`: stop what went away or changed, start what is new."""
        self._apply(new, previous=old)

    async def stop(self) -> None:
        """Stop every check task and wait for them to end."""
        self.slowstarts.stop_all()
        for server in list(self._checkers):
            self._stop_checker(server)
        tasks, self._stopping = self._stopping, []
        await stop_all(tasks)

    # --- operator -------------------------------------------------------------------------------

    def disable(self, server: ServerState) -> str:
        """`disable health B/S`: stop checking; the server counts as UP until enabled."""
        health = server.health
        if not health.checked:
            raise HealthError(f"{_ref(server)} has no health check")
        if not health.enabled:
            return f"{_ref(server)} health already disabled"
        self._stop_checker(server)
        health.disable()
        return f"{_ref(server)} health disabled"

    def enable(self, server: ServerState) -> str:
        """`enable health B/S`: checks resume from `UP 1/fall` (up until the first failure)."""
        health = server.health
        if not health.checked:
            raise HealthError(f"{_ref(server)} has no health check")
        if health.enabled:
            return f"{_ref(server)} health already enabled"
        check = self._check_of(server)
        if check is None:  # checked but no longer configured: cannot happen after _apply
            raise HealthError(f"{_ref(server)} has no health check")
        health.enable()
        self._start_checker(server, check)
        return f"{_ref(server)} health enabled ({health.display()})"

    def apply_remote(self, backend: str, name: str, up: bool) -> None:
        """A follower applies the master's verdict on one server (idempotent: a verdict that
        matches the state changes nothing). Unknown servers (a reload still in progress here)
        are skipped: the master sends every state again once all workers have reloaded."""
        assert self._holder is not None
        be = self._holder.runtime.backends.get(backend)
        server = be.server(name) if be is not None else None
        if server is None:
            return
        health = server.health
        if not health.checked or not health.enabled or health.up == up:
            return
        try:
            health.force(Op.UP if up else Op.DOWN, 0, "state from the master")
        except IllegalTransition:  # cannot happen: any state may move to UP or DOWN
            log.exception("health state from the master refused for %s", _ref(server))

    def apply_passive(self, backend: str, name: str, what: str) -> None:
        """The master acts on a passive trigger a worker forwarded: the server's own observer
        is brought to its limit, so the action and its wording are exactly the single-process
        ones."""
        assert self._holder is not None
        be = self._holder.runtime.backends.get(backend)
        server = be.server(name) if be is not None else None
        obs = server.observer if server is not None else None
        if obs is not None:
            obs.errors = obs.limit - 1
            obs.error(what)

    def checker(self, server: ServerState) -> Checker | None:
        """The check task of this server, if one runs."""
        return self._checkers.get(server)

    # --- configuration --------------------------------------------------------------------------

    def _apply(self, runtime: Runtime, previous: Runtime | None) -> None:
        known = set(previous.servers.values()) if previous is not None else set()
        wanted: dict[ServerState, tuple[HealthCheck | None, Observe | None]] = {}
        for be in runtime.backends.values():
            unobserved: list[str] = []
            for server in be.servers:
                check = effective_check(be.config, server.config)
                wanted[server] = (check, be.config.observe)
                if be.config.observe is not None and check is None:
                    unobserved.append(server.name)
            if unobserved:
                log.warning(
                    "backend %s: observe ignored for %s: no health check to bring a server back",
                    be.name,
                    ", ".join(unobserved),
                )
        # Servers gone from the configuration (or replaced: new address, new object).
        for server in known - wanted.keys():
            self._stop_checker(server)
            server.health.on_change = None
            server.observer = None
        # Tasks whose settings changed stop here and restart below with the same state.
        for server, checker in list(self._checkers.items()):
            if server not in wanted or wanted[server][0] != checker.check:
                self._stop_checker(server)
        for server, (check, observe) in wanted.items():
            self._configure(server, check, observe, fresh=server not in known)

    def _configure(
        self,
        server: ServerState,
        check: HealthCheck | None,
        observe: Observe | None,
        fresh: bool,
    ) -> None:
        health = server.health
        health.on_change = functools.partial(self._changed, server)
        if check is None:
            server.observer = None
            if health.checked:
                health.stop_checking()
            return
        health.reconfigure(check.rise, check.fall)
        if not health.checked:
            # A kept server that gains a check was serving: up until a check says otherwise.
            health.start_checking(check.init_state if fresh else "up")
        if observe is None:
            server.observer = None
        elif server.observer is None or server.observer.config != observe:
            if self.follower is not None:
                server.observer = ForwardingObserver(observe, health, server, self.follower)
            else:
                server.observer = Observer(observe, health)
        if health.enabled and server not in self._checkers:
            self._start_checker(server, check)

    def _check_of(self, server: ServerState) -> HealthCheck | None:
        assert self._holder is not None
        be = self._holder.runtime.backends.get(server.backend_name)
        if be is None or be.server(server.name) is not server:
            return None
        return effective_check(be.config, server.config)

    def _start_checker(self, server: ServerState, check: HealthCheck) -> None:
        if self.follower is not None:
            return  # the master checks, once for every worker
        checker = Checker(server, check, self._rng)
        self._checkers[server] = checker
        checker.start()

    def _stop_checker(self, server: ServerState) -> None:
        checker = self._checkers.pop(server, None)
        if checker is not None:
            task = checker.stop()
            if task is not None:
                self._stopping = [t for t in self._stopping if not t.done()]
                self._stopping.append(task)

    # --- transitions ----------------------------------------------------------------------------

    def _changed(self, server: ServerState, health: HealthState, reason: str) -> None:
        """An UP<->DOWN change: one log line in HAProxy's words, then the balancer."""
        assert self._holder is not None
        be = self._holder.runtime.backends.get(server.backend_name)
        if be is None or be.server(server.name) is not server:
            return  # a server the current configuration no longer has
        if self.follower is not None:
            # The master logged this change already; here only the balancer learns it.
            if health.up:
                self.slowstarts.begin(server, be.balancer.server_changed)
            else:
                self.slowstarts.stop(server)
            be.balancer.server_changed(server)
            return
        active, backup = _usable_counts(be)
        ref = _ref(server)
        if health.up:
            log.info(
                "Server %s is UP, reason: %s. %d active and %d backup servers online.",
                ref,
                reason,
                active,
                backup,
            )
            self.slowstarts.begin(server, be.balancer.server_changed)
        else:
            self.slowstarts.stop(server)
            level = logging.WARNING if active + backup else logging.ERROR
            log.log(
                level,
                "Server %s is DOWN, reason: %s. %d active and %d backup servers left.",
                ref,
                reason,
                active,
                backup,
            )
        be.balancer.server_changed(server)
        if self.on_transition is not None:
            self.on_transition(server)


def _usable_counts(be: BackendRuntime) -> tuple[int, int]:
    return sum(1 for s in be.active if s.usable()), sum(1 for s in be.backups if s.usable())


def _ref(server: ServerState) -> str:
    return f"{server.backend_name}/{server.name}"
