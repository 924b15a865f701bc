"""Every exchange with the agent bounded in total time and in size.

requests' timeout is per socket operation: an endpoint that answers one byte
a second never trips it, and the sync thread would wait on it for ever.  So
each request gets a deadline (the timeout it was sent with is the whole
exchange: connect, TLS, send, headers and body), and a watchdog shuts the
in-flight socket down when the deadline passes, which ends any blocked read
at once.  The body is read here, in chunks, under the same deadline and a
size cap, so nothing unbounded is ever held in memory.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

MiB = 1024 * 1024
# The agent's largest answers are /v1/agent/services, 0.7 KiB an instance with
# our meta, and /v1/agent/checks, 0.55 KiB a TTL check (measured, Consul 1.8.7):
# 32 MiB is some 45 000 instances on one agent, or 6 000 with an http check
# each whose output is the most Consul keeps (4 KiB).  A supervisord host has
# hundreds; an endpoint sending more is not an agent, and is not held in memory.
MAX_BODY = 32 * MiB
CHUNK = 64 * 1024  # read size: small enough that the cap is overshot by little


class DeadlineExceeded(requests.exceptions.Timeout):
    """No whole response within the deadline; a Timeout, so code that handles
    requests' timeouts handles this one."""

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(f"no whole response within {seconds:g}s", **kwargs)
        self.seconds = seconds


class ResponseTooLarge(requests.exceptions.RequestException):
    """The body went past the cap; reading stopped there."""

    def __init__(self, limit: int, **kwargs: Any) -> None:
        super().__init__(f"response body over {limit} bytes", **kwargs)
        self.limit = limit


# Guards which request owns which connection, and the shutting down: a socket is
# shut down only while the request whose deadline passed still owns it, never
# once the connection is back in the pool or in another thread's request.
_LOCK = threading.RLock()
_current = threading.local()  # the Watch of the request this thread is sending


class _Watch:
    """One request's deadline and the connections it used."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.done = False
        self.connections: set[_Watched] = set()

    def fire(self) -> None:
        with _LOCK:
            if self.done:
                return
            self.expired = True
            for conn in self.connections:
                if conn._owner is self:
                    conn._shut_down()

    def finish(self) -> bool:
        """The request is over; True if its deadline had passed."""
        with _LOCK:
            self.done = True
            self.connections.clear()
            return self.expired


class _Watched:
    """Mixed into urllib3's connections: each knows the request using it, and
    keeps a duplicate of its socket, which shuts down the same TCP connection
    at any stage (an SSL socket detaches the plain one it wraps, and a
    handshake in progress is reachable no other way)."""

    _owner: _Watch | None = None
    _handle: socket.socket | None = None
    _shut = False
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        with _LOCK:
            self._drop_handle()
            self._handle, self._shut = sock.dup(), False
            self._claim()
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        with _LOCK:
            if self._shut:  # an earlier request's deadline shut it just as it was pooled
                self.close()  # type: ignore[attr-defined]
            self._claim()
        super().request(*args, **kwargs)  # type: ignore[misc]

    def close(self) -> None:
        super().close()  # type: ignore[misc]
        with _LOCK:
            self._drop_handle()

    def _claim(self) -> None:
        watch: _Watch | None = getattr(_current, "watch", None)
        self._owner = watch
        if watch is not None:
            watch.connections.add(self)
            if watch.expired:
                self._shut_down()

    def _shut_down(self) -> None:
        if self._handle is not None and not self._shut:
            self._shut = True
            try:
                self._handle.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the peer closed it first

    def _drop_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Watchdog:
    """One thread for all of an adapter's deadlines (a Timer per request would
    start a thread per heartbeat); started at the first request, ended by close()."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()  # ties: never compare two Watches
        self._thread: threading.Thread | None = None
        self._generation = 0  # close() ends the thread of its generation, even if a request starts another

    def arm(self, watch: _Watch) -> None:
        with self._cond:
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                                name="consul-deadline", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:  # sooner than what it sleeps towards
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            thread, self._thread = self._thread, None
            self._generation += 1
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self, generation: int) -> None:
        while True:
            with self._cond:
                while True:
                    if self._generation != generation:
                        return
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                watch = heapq.heappop(self._heap)[2]
            watch.fire()  # outside the condition: arm() never waits on a shutdown


class BoundedAdapter(HTTPAdapter):
    """An HTTPAdapter whose every request ends by its timeout, taken as the
    whole exchange, with a body of at most max_body bytes (read whole here,
    whatever `stream` asks: nothing of ours streams)."""

    def __init__(self, timeout: float, max_body: int = MAX_BODY, **kwargs: Any) -> None:
        self.default_timeout = timeout  # when a request comes without one
        self.max_body = max_body
        self._watchdog = _Watchdog()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        seconds = self._total(timeout)
        watch = _Watch(time.monotonic() + seconds)
        outer, _current.watch = getattr(_current, "watch", None), watch
        self._watchdog.arm(watch)
        try:
            response = super().send(request, stream=True, timeout=seconds, verify=verify, cert=cert,
                                    proxies=proxies)
            self._read_body(response)
        except Exception as exc:
            if watch.finish():
                # Whatever the cut-off socket raised (reset, EOF, a TLS error), the cause is the deadline.
                raise DeadlineExceeded(seconds, request=request) from exc
            raise
        finally:
            expired = watch.finish()  # however it ended, its deadline must cut nothing more
            _current.watch = outer
        if expired:
            # A cut can also read as a short but well-formed answer (headers ended by the EOF,
            # a body that runs to the close): nothing read under a passed deadline is trusted.
            response.close()
            raise DeadlineExceeded(seconds, request=request)
        return response

    def close(self) -> None:
        self._watchdog.close()
        super().close()

    def _total(self, timeout: Any) -> float:
        if isinstance(timeout, tuple):  # (connect, read): a read may follow a connect that took all its time
            parts = [t for t in timeout if isinstance(t, (int, float))]
            return sum(parts) if parts else self.default_timeout
        if isinstance(timeout, Timeout):
            total = timeout.total
            return total if isinstance(total, (int, float)) else self.default_timeout
        return float(timeout) if timeout is not None else self.default_timeout

    def _read_body(self, response: requests.Response) -> None:
        try:
            declared = int(response.headers.get("Content-Length", "0"))
        except ValueError:
            declared = 0  # urllib3 rejects a bad length itself as the body is read
        body = bytearray()
        try:
            if declared > self.max_body:
                raise ResponseTooLarge(self.max_body, response=response)
            # iter_content decodes (gzip) and turns urllib3's errors into requests'.
            for chunk in response.iter_content(CHUNK):
                body += chunk
                if len(body) > self.max_body:
                    raise ResponseTooLarge(self.max_body, response=response)
        except BaseException:
            response.close()  # the rest is unread: the connection cannot be reused
            raise
        # What Response.content would have read; requests has no public setter for it.
        response._content = bytes(body)
