"""Typed errors shared across lbd.

Rules: every error a user can cause carries what they need to fix it. Configuration errors name
the file, the line and the dotted key path; request errors carry the HTTP status to answer with
and a short machine-readable reason that is counted per frontend.
"""

from __future__ import annotations


class LbdError(Exception):
    """Base of every error lbd raises on purpose."""


class ConfigError(LbdError):
    """One problem in a configuration file, printed as `FILE:LINE: key.path: message`."""

    def __init__(self, file: str, line: int, key: str, message: str) -> None:
        super().__init__(f"{file}:{line}: {key}: {message}")
        self.file = file
        self.line = line
        self.key = key
        self.message = message


class ConfigErrors(LbdError):
    """All the problems found in one configuration file (validation never stops at the first)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class BadRequest(LbdError):
    """A request lbd refuses before it reaches a server; `status` is what the client gets."""

    status = 400

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        if status is not None:
            self.status = status


class UriTooLong(BadRequest):
    status = 414


class HeadersTooLarge(BadRequest):
    status = 431


class BodyTooLarge(BadRequest):
    status = 413


class RequestTimeout(BadRequest):
    status = 408


class NotImplementedMethod(BadRequest):
    status = 501


class VersionNotSupported(BadRequest):
    status = 505
