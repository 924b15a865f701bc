"""Durations as Consul writes them (Go's syntax: 15s, 500ms, 1h30m)."""

from __future__ import annotations

import re

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# [0-9], not \d: Go (and so Consul) reads only ASCII digits, \d also takes '١٠'.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+$")
_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


def normalize(text: str) -> str:
    """A duration Consul accepts; a bare number means seconds, as in supervisord's own keys."""
    text = text.strip()
    if _NUMBER.match(text):
        return f"{text}s"
    if not _WHOLE.match(text):
        raise ValueError(f"not a duration: {text!r}")
    return text


def seconds(text: str) -> float:
    return sum(float(n) * UNITS[unit] for n, unit in _PART.findall(normalize(text)))
