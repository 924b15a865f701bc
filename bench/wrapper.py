"""The other approach, for the footprint benchmark: one wrapper process per service.

What ianitor-style wrappers do, in as little Python as it takes: register
one service with a TTL check, start the program as a child, pass the check
every ttl/3 while the child runs, and deregister when it exits (or on
SIGTERM, after stopping the child).  Standard library only (http.client,
one keep-alive connection), so it is the lightest such wrapper Python can
make: ianitor itself also loads python-consul and requests.

    python bench/wrapper.py HTTP_ADDR SERVICE_ID NAME PORT TTL_SECONDS -- COMMAND...
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time


def main(argv: list[str]) -> int:
    addr, service_id, name, port, ttl = argv[:5]
    command = argv[argv.index("--") + 1:]
    host, http_port = addr.rsplit(":", 1)
    every = float(ttl) / 3
    check_id = f"{service_id}:ttl"
    connection = http.client.HTTPConnection(host, int(http_port), timeout=5)
    # The benchmark counts requests as bench/instrument counts the listener's.
    log = os.open(os.environ["BENCH_REQUEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) \
        if os.environ.get("BENCH_REQUEST_LOG") else None

    def put(path: str, body: dict | None = None) -> None:
        nonlocal connection
        for attempt in (1, 2):  # once more on a fresh connection after the agent closed ours
            try:
                started = time.time()
                connection.request("PUT", path, body=json.dumps(body) if body is not None else None)
                response = connection.getresponse()
                response.read()
                if log is not None:
                    ended = time.time()
                    os.write(log, f"{ended:.6f} {ended - started:.6f} PUT {path} {response.status}\n".encode())
                return
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, int(http_port), timeout=5)
                if attempt == 2:
                    raise

    put("/v1/agent/service/register", {"ID": service_id, "Name": name, "Port": int(port),
                                       "Check": {"CheckID": check_id, "TTL": f"{ttl}s", "Status": "critical",
                                                 "DeregisterCriticalServiceAfter": "5m"}})
    child = subprocess.Popen(command)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while child.poll() is None and not stop.is_set():
            try:
                put(f"/v1/agent/check/pass/{check_id}?note=RUNNING+pid+{child.pid}")
            except (OSError, http.client.HTTPException):
                pass  # the agent is away: the check expires; try again next time
            stop.wait(every)
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()
        try:
            put(f"/v1/agent/service/deregister/{service_id}")
        except (OSError, http.client.HTTPException):
            pass
    return child.returncode if child.returncode and child.returncode > 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
