"""Put on a process's PYTHONPATH by the benchmarks: with BENCH_REQUEST_LOG set, every HTTP
request it makes through requests (the listener's to the Consul agent) appends one line
`END_TIME DURATION METHOD PATH STATUS [BODY]` to that file, BODY in base64 when there is one
(the agent logs no bodies; the throughput bench replays the very requests).

The agent is not asked to count: `consul agent -dev` logs each request only at DEBUG
level, and at DEBUG it also logs a line per registered service and check on every
change, which makes each request cost O(instances) (108 heartbeats/s at 1000 services
instead of 2500/s at INFO).  A line written here costs a few microseconds.
"""
import base64
import os
import time

_path = os.environ.get("BENCH_REQUEST_LOG")
if _path:
    import requests.adapters

    _fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _send = requests.adapters.HTTPAdapter.send

    def _counted_send(self, request, *args, **kwargs):
        started = time.time()
        response = _send(self, request, *args, **kwargs)
        ended = time.time()
        body = request.body.encode() if isinstance(request.body, str) else request.body
        suffix = f" {base64.b64encode(body).decode()}" if body else ""
        os.write(_fd, f"{ended:.6f} {ended - started:.6f} {request.method} {request.path_url} "
                      f"{response.status_code}{suffix}\n".encode())
        return response

    requests.adapters.HTTPAdapter.send = _counted_send
