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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random

from lbd.balancing.slowstart import SlowStarts
from lbd.config.schema import Backend, HealthCheck, Observe, Server
from lbd.health.active import Checker, stop_all
from lbd.health.passive import Observer
from lbd.health.state import HealthState
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


class HealthManager:
    def __init__(self, rng: random.Random | None = None) -> None:
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


def _usable_counts(be: BackendRuntime) -> tuple[int, int]:
    return sum(1 for s in be.active if s.usable()), sum(1 for s in be.backups if s.usable())


def _ref(server: ServerState) -> str:
    return f"{server.backend_name}/{server.name}"
