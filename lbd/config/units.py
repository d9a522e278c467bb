"""Durations and sizes as written in the configuration file.

Rules: pure functions, no I/O. Both accept a bare number (what YAML gives for `30` or `512`) or
a string with an optional unit, and raise ValueError with a message that can be shown to the
operator as is. Ranges (must a timeout be positive?) are the loader's business, not ours; we only
refuse negative values, which no duration or size can have.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# Seconds per duration unit. A bare number is seconds (unlike HAProxy, where it is milliseconds):
# the contract says so, and it is what people expect when they read `retries: 3, connect: 5`.
_DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

# Bytes per size unit, case-insensitive. Every unit is 1024-based, including k/K/M/G and
# KB/MB/GB: HAProxy (`tune.bufsize 16k`) and nginx (`client_max_body_size 10m`) read them that
# way, and a limit that is 2.4% larger than the operator believes is never the safe surprise.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}

# NUMBER [UNIT], spaces allowed between the two: `250ms`, `2 s`, `1.5h`, `64KiB`.
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_duration(value: str | int | float) -> float:
    """Return `value` in seconds.

    Accepts a non-negative number (seconds) or NUMBER followed by one of us, ms, s, m, h, d:
    `250ms` → 0.25, `2s` → 2.0, `5m` → 300.0, `1h` → 3600.0, `30` → 30.0.
    """
    what = "a duration like 250ms, 2s, 5m or 1h"
    if isinstance(value, bool):  # bool is an int subclass; `true` is not a duration
        raise ValueError(f"expected {what}, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected {what}, got {value!r}")
        return float(value)
    match = _QUANTITY.fullmatch(value)
    if match is None or match.group(2) not in ("", *_DURATION_UNITS):
        raise ValueError(f"expected {what}, got {value!r}")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS.get(unit, 1.0)


def parse_size(value: str | int) -> int:
    """Return `value` in bytes.

    Accepts a non-negative integer (bytes) or NUMBER followed by a unit, case-insensitive:
    B; k, KB, KiB (1024); M, MB, MiB (1024²); G, GB, GiB (1024³). All are powers of 1024, as in
    HAProxy and nginx: `10KB` is 10240 bytes. A fraction is allowed when the result is a whole
    number of bytes (`1.5KiB` → 1536).
    """
    what = "a size like 512, 64KiB or 10MiB"
    if isinstance(value, bool):
        raise ValueError(f"expected {what}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {what}, got {value!r}")
        return value
    match = _QUANTITY.fullmatch(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"expected {what}, got {value!r}")
    size = Fraction(match.group(1)) * _SIZE_UNITS[unit]  # exact, even for huge numbers
    if size.denominator != 1:
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(size)
