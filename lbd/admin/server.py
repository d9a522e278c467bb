"""The admin unix socket (`global.admin_socket`): not on the data path.

Created 0600 (root-equivalent control), then given `admin_socket_mode` / `_owner` / `_group`
when set; the loader refuses any mode that opens it to others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from lbd.admin.commands import dispatch
from lbd.admin.protocol import MAX_LINE, frame_answer, parse_command

if TYPE_CHECKING:
    from lbd.admin.commands import Daemon

log = logging.getLogger("lbd.admin")


class AdminServer:
    def __init__(
        self,
        worker: Daemon,
        path: str,
        handler: Callable[[list[str]], Awaitable[str]] | None = None,
    ) -> None:
        self.worker = worker
        self.path = path
        # A master passes its own handler (aggregate, fan out to workers); else `dispatch`.
        self.handler = handler
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
        g = self.worker.runtime.config.global_
        try:
            # Widened (to a group of operators, say) only as configured; never to others.
            _set_access(self.path, g.admin_socket_mode, g.admin_socket_owner, g.admin_socket_group)
        except (OSError, KeyError) as exc:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            why = exc.strerror if isinstance(exc, OSError) else exc.args[0]
            raise OSError(errno.EINVAL, f"cannot set its owner or mode: {why}") from exc
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
                    if self.handler is not None:
                        answer = await self.handler(words)
                    else:
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


def _set_access(path: str, mode: int, owner: str | None, group: str | None) -> None:
    """chown (names or numeric ids; KeyError for an unknown name) then chmod the socket."""
    import grp
    import pwd

    uid = gid = -1
    if owner is not None:
        uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
    if group is not None:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def _is_stale_socket(path: str) -> bool:
    """A socket file left by a previous run that nobody listens on any more."""
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return True
    return False
