"""An HTTP server that records every request it gets, for integration tests to run
as a supervisord program so that they can prove what Consul's own HTTP check sent
(method, headers, body) and how it read the answer.

    python -m tests.http_probe --port PORT --record FILE [--status CODE] [--status-file FILE]

Run it from the repository root (so `tests` is importable): in a supervisord
stanza, use program_lines() below, which also sets directory=.

Any method on any path is answered with --status (default 200).  With
--status-file, the status is read from that file at each request (its text, an
integer), so a test can flip 200 -> 503 without a restart; --status stands while
the file is missing or holds no integer.

Each request appends one JSON line to --record, written before the answer is
sent (a client that has its answer will find its record):

    {"method": "POST", "path": "/health?x=1", "headers": {"X-Token": "t"}, "body": "..."}

Header names are as the client sent them; a repeated header's values are joined
with ", ".  read_records() reads the file back.  SIGTERM / SIGINT: exit status 0.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

LOOPBACK = "127.0.0.1"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def program_lines(port: int, record: os.PathLike | str, status: int = 200,
                  status_file: os.PathLike | str | None = None) -> str:
    """The command= and directory= lines of a supervisord [program:x] stanza that runs
    this server with this Python (directory=: supervisord would otherwise start it
    in its own directory, where `tests` is not importable; so paths are made absolute)."""
    extra = f" --status-file {pathlib.Path(status_file).resolve()}" if status_file is not None else ""
    return (f"command={sys.executable} -m tests.http_probe --port {port}"
            f" --record {pathlib.Path(record).resolve()} --status {status}{extra}\n"
            f"directory={REPO_ROOT}\n")


def read_records(path: os.PathLike | str) -> list[dict[str, Any]]:
    """The requests recorded in path so far ([] if none yet).  A last line still being
    written (no newline yet) is left out rather than read half."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 so keep-alive clients (Go's, Consul's) are served as they expect;
    # every answer carries Content-Length, so the connection can stay open.
    protocol_version = "HTTP/1.1"

    # Set per server through functools.partial in serve().
    def __init__(self, *args: Any, status: Callable[[], int], record: Callable[[dict], None],
                 **kwargs: Any) -> None:
        self._status = status
        self._record = record
        super().__init__(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>: answer every method,
        # including ones Consul lets an operator configure freely.
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line that ends the message.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._record({"method": self.command, "path": self.path, "headers": headers,
                      "body": body.decode("utf-8", "replace")})
        status = self._status()
        payload = b"" if self.command == "HEAD" else f"{status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the record file says what came, and a check every second would
        # fill the program's stderr log.
        pass


def _status_source(default: int, status_file: str | None) -> Callable[[], int]:
    def status() -> int:
        if status_file is not None:
            try:
                return int(pathlib.Path(status_file).read_text().strip())
            except (OSError, ValueError):
                pass
        return default
    return status


def _recorder(path: str) -> Callable[[dict], None]:
    lock = threading.Lock()  # one whole line per request, even with requests in parallel

    def record(entry: dict) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(line)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.http_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help=f"TCP port on {LOOPBACK}")
    parser.add_argument("--record", required=True, metavar="FILE", help="append one JSON line per request here")
    parser.add_argument("--status", type=int, default=200, metavar="CODE", help="the answer's status (default 200)")
    parser.add_argument("--status-file", metavar="FILE",
                        help="read the status from FILE at each request (--status while it has none)")
    args = parser.parse_args(argv)

    # Blocked before the serving thread starts (it inherits the mask) and taken by
    # sigwait() below: shutdown() must not run in the thread that serves.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    handler = functools.partial(_Handler, status=_status_source(args.status, args.status_file),
                                record=_recorder(args.record))
    try:
        server = http.server.ThreadingHTTPServer((LOOPBACK, args.port), handler)
    except OSError as exc:
        print(f"http_probe: cannot bind {LOOPBACK}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    server.daemon_threads = True  # a client holding a connection open does not hold up the exit
    # poll_interval: how long shutdown() may wait for the loop to notice (default 0.5 s).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="serve",
                              daemon=True)
    thread.start()
    print(f"http_probe: serving on {LOOPBACK}:{args.port}, recording to {args.record}", file=sys.stderr, flush=True)

    signum = signal.sigwait(stop_signals)
    print(f"http_probe: {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
