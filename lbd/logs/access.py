"""Access log: one line per request, formatted on the loop, written by a thread.

Rules: the event loop never blocks on a log target. Lines go into a bounded queue; a writer
thread drains it; when the queue is full the line is dropped and counted (`dropped`). Only the
path is logged, never the query string (patient identifiers travel in URLs), never bodies,
cookies or Authorization.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from lbd.proxy.exchange import Exchange

QUEUE_LINES = 65536


class AccessLog:
    def __init__(self, target: str, fmt: str) -> None:
        self.fmt = fmt
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=QUEUE_LINES)
        self._stream: IO[str] = (
            sys.stdout if target == "stdout" else open(target, "a", encoding="utf-8")  # noqa: SIM115
        )
        self._thread = threading.Thread(target=self._writer, name="lbd-access-log", daemon=True)
        self._thread.start()

    def __call__(self, ex: Exchange, elapsed: float) -> None:
        try:
            self._queue.put_nowait(self._format(ex, elapsed))
        except queue.Full:
            self.dropped += 1

    def _format(self, ex: Exchange, elapsed: float) -> str:
        client = ex.client
        backend = ex.backend.name if ex.backend is not None else "<NOSRV>"
        server = ex.server.name if ex.server is not None else "<NOSRV>"
        head = ex.head
        path = head.path.decode("latin-1")
        if head.query:
            path += "?<masked>"
        ta = int(elapsed * 1000)
        now = time.time()
        if self.fmt == "json":
            return json.dumps(
                {
                    "time": now,
                    "client_ip": client.peer_ip.decode(),
                    "client_port": client.peer_port,
                    "frontend": ex.fe.name,
                    "backend": backend,
                    "server": server,
                    "module": ex.module,
                    "ta_ms": ta,
                    "status": ex.status,
                    "bytes_read": ex.resp_bytes,
                    "method": head.method.decode("latin-1"),
                    "path": path,
                    "version": head.version.decode(),
                }
            )
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(now))
        ms = int(now * 1000) % 1000
        return (
            f"{client.peer_ip.decode()}:{client.peer_port} [{stamp}.{ms:03d}] {ex.fe.name} "
            f"{backend}/{server} {ta} {ex.status} {ex.resp_bytes} {ex.module} "
            f'"{head.method.decode("latin-1")} {path} HTTP/{head.version.decode()}"'
        )

    def _writer(self) -> None:
        q = self._queue
        stream = self._stream
        while True:
            line = q.get()
            if line is None:
                break
            batch = [line]
            while len(batch) < 512:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    q.put(None)
                    break
                batch.append(nxt)
            try:
                stream.write("\n".join(batch) + "\n")
                stream.flush()
                self.written += len(batch)
            except (OSError, ValueError):
                self.dropped += len(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)
