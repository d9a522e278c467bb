"""The command line the bench's one-upstream peers share (floor_proxy.py, relay_proxy.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

Serve = Callable[[int, tuple[str, int]], Coroutine[Any, Any, None]]


def run(serve: Serve, description: str) -> None:
    """Parse `--port N --upstream HOST:PORT` and run `serve(port, (host, port))` on uvloop."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    uvloop.run(serve(args.port, (host, int(port))))
