"""`lbd ctl` and `lbd reload`: send one command to the daemon's admin socket, print the answer.

The socket path comes from the configuration file the daemon runs with (`global.admin_socket`);
the protocol is one command per line, the answer ends with an empty line.
"""

from __future__ import annotations

import socket
import sys

import yaml

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _socket_path(config_path: str) -> str | None:
    """`global.admin_socket` of the file. Read leniently: `lbd reload` must still reach the
    daemon when the edited file is invalid, so the daemon can report (and refuse) it."""
    try:
        with open(config_path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        print(f"{config_path}: cannot read: {exc.strerror}", file=sys.stderr)
        return None
    except yaml.YAMLError:
        doc = None
    path = None
    if isinstance(doc, dict) and isinstance(doc.get("global"), dict):
        path = doc["global"].get("admin_socket")
    if not isinstance(path, str) or not path:
        print(f"{config_path}: global.admin_socket is not set", file=sys.stderr)
        return None
    return path


def send_command(path: str, command: str, timeout: float = 30.0) -> str:
    """The answer to one command, without the terminating empty line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"".join(chunks[-2:]).endswith(b"\n\n"):
                break
    answer = b"".join(chunks).decode(errors="replace")
    return answer[:-2] if answer.endswith("\n\n") else answer.rstrip("\n")


def ctl_main(config_path: str, words: list[str]) -> int:
    path = _socket_path(config_path)
    if path is None:
        return EXIT_FAIL
    try:
        answer = send_command(path, " ".join(words))
    except OSError as exc:
        print(f"lbd ctl: cannot reach {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    print(answer)
    return EXIT_FAIL if answer.startswith("error:") else EXIT_OK


def reload_main(config_path: str) -> int:
    path = _socket_path(config_path)
    if path is None:
        return EXIT_FAIL
    try:
        answer = send_command(path, "reload")
    except OSError as exc:
        print(f"lbd reload: cannot reach {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    if answer.startswith("error:") or answer.startswith("rejected"):
        print(answer, file=sys.stderr)
        return EXIT_FAIL
    print(answer)
    return EXIT_OK
