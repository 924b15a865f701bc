"""The requests a process made to the Consul agent, as bench/instrument/sitecustomize.py logs them."""
from __future__ import annotations

import base64
import json
import os
import pathlib
import urllib.request
from dataclasses import dataclass

INSTRUMENT = pathlib.Path(__file__).with_name("instrument")
AGENT_ARGS = ("-log-level=info",)  # see instrument/sitecustomize.py: DEBUG makes the agent O(instances)


@dataclass(frozen=True)
class Request:
    at: float  # wall-clock seconds when the answer came
    duration: float  # seconds from sending to the answer, as the client saw it
    method: str
    url: str
    status: int
    body: bytes | None = None

    @property
    def kind(self) -> str:
        """`PUT register`, `PUT pass`, `PUT fail`, `PUT deregister`, `GET /v1/agent/services`, ..."""
        path = self.url.split("?", 1)[0]
        parts = path.split("/")  # '', 'v1', 'agent', 'check', 'pass', ID / 'service', 'deregister', ID
        if path.startswith(("/v1/agent/check/", "/v1/agent/service/")) and len(parts) > 4:
            return f"{self.method} {parts[4]}"
        return f"{self.method} {path}"


def environment(path: pathlib.Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) for a process whose requests are to be logged to `path`."""
    result = dict(os.environ if env is None else env)
    result["PYTHONPATH"] = os.pathsep.join(filter(None, [str(INSTRUMENT), result.get("PYTHONPATH")]))
    result["BENCH_REQUEST_LOG"] = str(path)
    return result


class RequestLog:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)

    def offset(self) -> int:
        """Where the log ends now: requests(offset) are the ones made after this."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, start: int = 0) -> list[Request]:
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        found = []
        for line in data[:data.rfind(b"\n") + 1].decode().splitlines():
            at, duration, method, url, status, *body = line.split(" ")
            found.append(Request(float(at), float(duration), method, url, int(status),
                                 base64.b64decode(body[0]) if body else None))
        return found


def counts(requests: list[Request]) -> dict[str, int]:
    result: dict[str, int] = {}
    for request in requests:
        result[request.kind] = result.get(request.kind, 0) + 1
    return dict(sorted(result.items()))


def get(http_addr: str, path: str, timeout: float = 10.0):
    with urllib.request.urlopen(f"http://{http_addr}{path}", timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def put(http_addr: str, path: str, body: bytes | None = None, timeout: float = 10.0) -> None:
    request = urllib.request.Request(f"http://{http_addr}{path}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
