"""Transfer rates as storage admins write them: '50MB/s', '200Mbit/s', '1.5GiB/s'."""

from __future__ import annotations

import re

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kbit": 1000 / 8,
    "mbit": 1000**2 / 8,
    "gbit": 1000**3 / 8,
}
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)\s*/\s*s\s*")


def parse_rate(text: str) -> float:
    """Bytes per second; ValueError with a message a person can act on."""
    m = _RATE.fullmatch(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a rate like '50MB/s', '200Mbit/s' or '1GiB/s'")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return value
