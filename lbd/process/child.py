"""A worker process under a master: `python -m lbd worker --control-fd N --listeners-fd M`.

Rules:
- Spawned as a fresh interpreter by lbd/process/master.py (never forked from a running loop).
  It binds nothing: its listening sockets arrive from the master over the listeners socketpair
  (SCM_RIGHTS), its configuration (already validated by the master) over the control channel.
- Boot: ask the master `hello` (configuration, every server's health verdict, admin state and
  weight), build the Worker, apply that state, accept on the inherited sockets, report `ready`.
  Any failure before `ready` exits 3: the master counts it as a boot failure.
- Health: no active check runs here; passive triggers are forwarded to the master and its
  verdicts applied (HealthManager in follower mode). The admin socket, the stats listener and
  sd_notify belong to the master.
- Signals: SIGTERM stops gracefully (as a single process does); SIGINT and SIGHUP are ignored
  (a terminal's Ctrl-C reaches the whole process group: the master orders the stop; reloads come
  from the master); SIGUSR1 reopens the access log. EOF on the control channel (the master died)
  stops gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from lbd.admin.commands import dispatch
from lbd.config.schema import Address
from lbd.health.manager import HealthManager
from lbd.process.control import Channel, Message, receive_listeners, unpack_config
from lbd.process.worker import StartError, Worker
from lbd.state import ServerState
from lbd.stats.aggregate import dump_runtime

log = logging.getLogger("lbd")

EXIT_OK, EXIT_START = 0, 3
HELLO_TIMEOUT = 30.0


class Child:
    def __init__(self, control: socket.socket, listeners: socket.socket, index: int) -> None:
        self.control_sock = control
        self.listeners_sock = listeners
        self.index = index
        self.pool: dict[Address, socket.socket] = {}  # passed by the master, not yet served
        self.worker: Worker | None = None
        self.channel: Channel | None = None
        self.booted = asyncio.Event()
        self.stop = asyncio.Event()

    # --- boot -------------------------------------------------------------------------------

    async def boot(self) -> None:
        """Everything up to `ready`; raises on any failure (the caller exits 3)."""
        self.channel = await Channel.open(self.control_sock, self._handle, self.stop.set)
        hello = await self.channel.request("hello", HELLO_TIMEOUT, pid=os.getpid())
        cfg = unpack_config(hello["config"])
        health = HealthManager(follower=self._forward_passive)
        worker = Worker(cfg, health=health, child=True)
        worker.bind = self._take_listener
        self.worker = worker
        self._receive_listeners()
        await worker.start()
        self._apply_servers(hello["servers"])
        self._close_duplicates()
        self.booted.set()
        self.channel.notify("ready", pid=os.getpid(), generation=worker.runtime.generation)
        log.info("worker #%d ready (generation %d)", self.index, worker.runtime.generation)

    def _receive_listeners(self) -> None:
        for addr, sock in receive_listeners(self.listeners_sock).items():
            previous = self.pool.pop(addr, None)
            if previous is not None:
                previous.close()
            self.pool[addr] = sock

    def _take_listener(self, address: Address) -> socket.socket:
        sock = self.pool.pop(address, None)
        if sock is None:
            raise StartError(f"cannot listen on {address}: the master did not pass its socket")
        sock.setblocking(False)
        return sock

    def _close_duplicates(self) -> None:
        """Sockets sent again for addresses already served (a reload racing a boot)."""
        assert self.worker is not None
        for addr in [a for a in self.pool if a in self.worker.listeners]:
            self.pool.pop(addr).close()

    def _apply_servers(self, rows: list[list[object]]) -> None:
        """The master's view of every server: health verdict, admin state, weight."""
        worker = self.worker
        assert worker is not None
        for backend, name, up, admin, weight in rows:
            be = worker.runtime.backends.get(str(backend))
            server = be.server(str(name)) if be is not None else None
            if be is None or server is None:
                continue
            worker.health.apply_remote(str(backend), str(name), bool(up))
            if server.admin != admin or server.weight != weight:
                server.admin = str(admin)
                server.set_weight(int(str(weight)))
                be.balancer.server_changed(server)

    def _forward_passive(self, server: ServerState, what: str) -> None:
        if self.channel is not None:
            self.channel.notify(
                "passive", backend=server.backend_name, server=server.name, what=what
            )

    # --- messages from the master -----------------------------------------------------------

    async def _handle(self, message: Message) -> Message | None:
        kind = message["kind"]
        if kind == "stop":
            self.stop.set()
            return {}
        await self.booted.wait()
        worker = self.worker
        assert worker is not None
        if kind == "ping":
            return {"pid": os.getpid(), "generation": worker.runtime.generation}
        if kind == "dump":
            return {"dump": dump_runtime(worker.runtime)}
        if kind == "servers":
            self._apply_servers(message["servers"])
            return None
        if kind == "admin":
            return {"answer": await dispatch(worker, list(message["words"]))}
        if kind == "reload":
            self._receive_listeners()
            async with worker._reload_lock:
                ok, report = await worker.apply_config(unpack_config(message["config"]))
            self._close_duplicates()
            if not ok:  # sockets of the refused configuration: listening, never served
                wanted = {addr for fe in worker.config.frontends for addr in fe.bind}
                for addr in [a for a in self.pool if a not in wanted]:
                    self.pool.pop(addr).close()
            return {"ok": ok, "report": report, "generation": worker.runtime.generation}
        if kind == "reopen":
            if worker.access_log is not None:
                worker.access_log.reopen()
            return None
        return {"error": f"unknown message {kind!r}"}

    # --- run --------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen)
        try:
            await self.boot()
        except Exception as exc:
            log.error("worker #%d cannot start: %s", self.index, exc)
            return EXIT_START
        await self.stop.wait()
        assert self.worker is not None
        await self.worker.graceful_stop()
        if self.channel is not None:
            await self.channel.close()
        return EXIT_OK

    def _reopen(self) -> None:
        if self.worker is not None and self.worker.access_log is not None:
            self.worker.access_log.reopen()


def child_main(control_fd: int, listeners_fd: int, index: int) -> int:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the loop installs its handlers
    control = socket.socket(fileno=control_fd)
    listeners = socket.socket(fileno=listeners_fd)
    listeners.setblocking(False)

    async def serve() -> int:
        return await Child(control, listeners, index).run()

    try:
        return uvloop.run(serve())
    except Exception as exc:
        print(f"lbd worker #{index}: {exc}", file=sys.stderr)
        return EXIT_START
