"""The control channel between the master and one worker: a socketpair, framed JSON messages.

Rules:
- Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object). Frames
  are bounded (MAX_FRAME): a peer that announces more is broken and the channel closes.
- Both ends are symmetric. `request(kind, ...)` sends `{"id": N, "kind": ...}` and waits for the
  frame with `{"reply": N}`; `notify(kind, ...)` sends a frame that gets no reply. Incoming
  requests and notifications go to the owner's handler (one task per request, so a slow reload
  does not hold up a heartbeat); its return value (a JSON object) is the reply.
- EOF (the peer died or closed) fails every pending request with ChannelClosed and calls
  `on_close` once: a worker whose master is gone stops; the master restarts a worker.
- Listening sockets do not travel here: they go over a datagram socketpair with SCM_RIGHTS
  (`send_listeners` / `receive_listeners`), sent before the message that needs them.
- Peers are the master and its own children (same user, inherited socketpair): the config they
  exchange is trusted and travels pickled (base64) inside the JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from lbd.config.schema import Address, Config

log = logging.getLogger("lbd.control")

MAX_FRAME = 64 << 20  # a stats dump of a large configuration stays far below this
_LENGTH = struct.Struct(">I")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]


class ChannelClosed(Exception):
    """The peer is gone: the request will never get its answer."""


class Channel:
    """One end of a control socketpair (see the module rules)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._on_close = on_close
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls, sock: socket.socket, handler: Handler, on_close: Callable[[], None] | None = None
    ) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer, handler, on_close)

    # --- sending --------------------------------------------------------------------------------

    def notify(self, kind: str, **fields: Any) -> None:
        """Send a message that expects no answer; silently dropped when the peer is gone."""
        if not self.closed:
            self._send({"kind": kind, **fields})

    async def request(self, kind: str, timeout: float, **fields: Any) -> Message:
        """Send and wait for the answer; ChannelClosed or TimeoutError otherwise."""
        if self.closed:
            raise ChannelClosed(kind)
        ident = self._next_id
        self._next_id += 1
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            self._send({"id": ident, "kind": kind, **fields})
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ident, None)

    def _send(self, message: Message) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def close(self) -> None:
        self._finish()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reading
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # --- receiving ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(_LENGTH.size)
                (size,) = _LENGTH.unpack(head)
                if size > MAX_FRAME:
                    log.error("control channel: frame of %d bytes refused", size)
                    break
                message = json.loads(await self._reader.readexactly(size))
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._finish()

    def _dispatch(self, message: Message) -> None:
        if "reply" in message:
            future = self._pending.get(message["reply"])
            if future is not None and not future.done():
                future.set_result(message)
            return
        task = asyncio.get_running_loop().create_task(self._answer(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, message: Message) -> None:
        try:
            answer = await self._handler(message)
        except Exception as exc:  # a bug in one handler must not kill the channel
            log.exception("control message %r failed", message.get("kind"))
            answer = {"error": f"internal error: {exc}"}
        if "id" in message and not self.closed:
            self._send({"reply": message["id"], **(answer or {})})

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("peer closed the control channel"))
        if self._on_close is not None:
            self._on_close()


# --- configuration and listening sockets ----------------------------------------------------------


def pack_config(cfg: Config) -> str:
    return base64.b64encode(pickle.dumps(cfg)).decode("ascii")


def unpack_config(data: str) -> Config:
    cfg = pickle.loads(base64.b64decode(data))
    assert isinstance(cfg, Config)
    return cfg


def send_listeners(sock: socket.socket, listeners: dict[Address, socket.socket]) -> None:
    """All listening sockets in one datagram (SCM_RIGHTS), the addresses as JSON alongside.

    One datagram per call: a datagram socketpair queues only a few, and the receiver drains it
    only when the next message needs the sockets."""
    if not listeners:
        return
    names = [[a.host, a.port] for a in listeners]
    socket.send_fds(sock, [json.dumps(names).encode()], [s.fileno() for s in listeners.values()])


def receive_listeners(sock: socket.socket) -> dict[Address, socket.socket]:
    """Every listening socket the master sent so far (non-blocking: they are already queued)."""
    received: dict[Address, socket.socket] = {}
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 253, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return received
        if not data:
            return received
        for (host, port), fd in zip(json.loads(data), fds, strict=True):
            received[Address(host, port)] = socket.socket(fileno=fd)
