"""Counting the requests a Consul agent answered, from its own log.

`consul agent -dev` logs every HTTP request it finished at DEBUG level:

    2026-11-24T21:10:44.693Z [DEBUG] agent.http: Request finished: method=PUT url=/v1/agent/... from=... latency=...

so the benchmarks count from the agent's side, with no proxy in the way
that would add its own latency.  Requests the benchmark makes itself carry
MARK in their query string and are left out.
"""
from __future__ import annotations

import json
import pathlib
import re
import urllib.request
from dataclasses import dataclass
from datetime import datetime

MARK = "bench=1"  # in the query string of every request the benchmark makes itself
_LINE = re.compile(r"^\s*(?P<ts>\S+) \[DEBUG\] agent\.http: Request finished: "
                   r"method=(?P<method>[A-Z]+) url=(?P<url>\S+) from=\S+ latency=(?P<latency>[0-9.]+)(?P<unit>[µnm]?s)")
_UNITS = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class Request:
    at: float  # wall-clock seconds, to the millisecond the agent logs
    method: str
    url: str
    latency: float = 0.0  # seconds the agent took to answer

    @property
    def kind(self) -> str:
        """`PUT register`, `PUT pass`, `PUT fail`, `PUT deregister`, `GET services`, ..."""
        path = self.url.split("?", 1)[0]
        parts = path.split("/")  # '', 'v1', 'agent', 'check', 'pass', ID / 'service', 'deregister', ID
        if path.startswith("/v1/agent/check/") and len(parts) > 4:
            return f"{self.method} {parts[4]}"
        return f"{self.method} {parts[4] if path.startswith('/v1/agent/service/') else path}"


class AgentLog:
    """Reads the requests an agent logged after a given point in its log."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)

    def offset(self) -> int:
        """Where the log ends now: requests() from here on are the ones made after this."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, start: int, end: int | None = None, ours: bool = False) -> list[Request]:
        """The requests logged between two offsets, without the benchmark's own (MARK) unless `ours`."""
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
        # A line still being written has no newline yet: leave it for the next read.
        text = data[:data.rfind(b"\n") + 1].decode("utf-8", "replace")
        found = []
        for line in text.splitlines():
            match = _LINE.match(line)
            if match is None or (MARK in match["url"]) != ours:
                continue
            at = datetime.fromisoformat(match["ts"].replace("Z", "+00:00")).timestamp()
            found.append(Request(at, match["method"], match["url"], float(match["latency"]) * _UNITS[match["unit"]]))
        return found


def get(http_addr: str, path: str, timeout: float = 10.0):
    """GET from the agent, marked as the benchmark's own request."""
    separator = "&" if "?" in path else "?"
    with urllib.request.urlopen(f"http://{http_addr}{path}{separator}{MARK}", timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def put(http_addr: str, path: str, body: bytes | None = None, timeout: float = 10.0) -> None:
    separator = "&" if "?" in path else "?"
    request = urllib.request.Request(f"http://{http_addr}{path}{separator}{MARK}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


def latencies(requests: list[Request]) -> dict[str, float]:
    """Mean latency in seconds by kind."""
    sums: dict[str, list[float]] = {}
    for request in requests:
        sums.setdefault(request.kind, []).append(request.latency)
    return {kind: sum(values) / len(values) for kind, values in sorted(sums.items())}


def counts(requests: list[Request]) -> dict[str, int]:
    result: dict[str, int] = {}
    for request in requests:
        result[request.kind] = result.get(request.kind, 0) + 1
    return dict(sorted(result.items()))
