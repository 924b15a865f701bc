"""Durations as Consul reads them: Go's time.ParseDuration (15s, 500ms, 1h30m, .5s)."""

from __future__ import annotations

import re
from decimal import Decimal

NANOSECONDS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
MAX_NANOSECONDS = 2**63 - 1  # Go keeps a duration in an int64
# [0-9], not \d: Go reads only ASCII digits, \d also takes '١٠'.  Go takes "1." and ".5" too.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(?:ns|us|µs|ms|s|m|h)"
_PART = re.compile(f"({_NUMBER})({_UNIT})")
_WHOLE = re.compile(f"(?:{_NUMBER}{_UNIT})+")
_BARE = re.compile(_NUMBER)


def normalize(text: str) -> str:
    """A duration Consul accepts; a bare number means seconds, as in supervisord's own keys."""
    text = text.strip()
    if _BARE.fullmatch(text):
        return f"{text}s"
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return text


def nanoseconds(text: str) -> int:
    """As Go counts them: each part truncated to whole nanoseconds."""
    return sum(int(Decimal(number) * NANOSECONDS[unit]) for number, unit in _PART.findall(normalize(text)))


def seconds(text: str) -> float:
    return nanoseconds(text) / 1e9
