"""Admin socket framing: one command per line in, an answer that ends with an empty line out.

Rules: an answer never contains an empty line of its own (they are squeezed), so the client
can stop at the first blank line; errors are one line starting with `error:`.
"""

from __future__ import annotations

import shlex

MAX_LINE = 4096


def parse_command(line: bytes) -> list[str]:
    """The words of one command line; raises ValueError on bad quoting or non-UTF-8."""
    return shlex.split(line.decode("utf-8").strip())


def frame_answer(text: str) -> bytes:
    lines = [ln for ln in text.rstrip("\n").split("\n") if ln.strip() != ""] or ["ok"]
    return ("\n".join(lines) + "\n\n").encode()
