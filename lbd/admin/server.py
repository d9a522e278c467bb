"""The admin unix socket (`global.admin_socket`, mode 0600): not on the data path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from lbd.admin.commands import dispatch
from lbd.admin.protocol import MAX_LINE, frame_answer, parse_command

if TYPE_CHECKING:
    from lbd.process.worker import Worker

log = logging.getLogger("lbd.admin")


class AdminServer:
    def __init__(self, worker: Worker, path: str) -> None:
        self.worker = worker
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if os.path.exists(self.path) and _is_stale_socket(self.path):
            os.unlink(self.path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600: root-equivalent control
        try:
            self._server = await asyncio.start_unix_server(self._handle, self.path, limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        log.info("admin socket on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    writer.write(frame_answer("error: command line too long"))
                    break
                if not line:
                    break
                try:
                    words = parse_command(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    writer.write(frame_answer(f"error: {exc}"))
                    continue
                if not words:
                    continue
                try:
                    answer = await dispatch(self.worker, words)
                except Exception:  # a bug in one command must not kill the socket
                    log.exception("admin command %r failed", " ".join(words))
                    answer = "error: internal error (see the daemon's log)"
                writer.write(frame_answer(answer))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _is_stale_socket(path: str) -> bool:
    """A socket file left by a previous run that nobody listens on any more."""
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return True
    return False
