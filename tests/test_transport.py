"""transport.BoundedAdapter against misbehaving endpoints on loopback: every
call ends by its deadline (connect, TLS, headers and body together) and a
body stops at the size cap; normal calls, keep-alive and many threads on one
session still work.

The endpoints (Endpoint and its answers) are reused by test_faults_bounded.py.
"""
from __future__ import annotations

import contextlib
import http.client
import itertools
import socket
import socketserver
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import pytest
import requests

from supervisor_consul import transport
from supervisor_consul.agent import Agent, ConsulError
from supervisor_consul.connection import connection
from supervisor_consul.transport import MAX_BODY, BoundedAdapter, DeadlineExceeded, MiB, ResponseTooLarge
from tests.harness import LOOPBACK, free_port, wait_for
from tests.secure_agent import TestCA

TIMEOUT = 1.0  # the deadline in these tests
DRIP = 0.05  # a trickle's pause between bytes: far under TIMEOUT, so no per-read timeout ever fires
MARGIN = 0.5  # how late past the deadline a call may end (a loaded shared machine)


# ---------------------------------------------------------------- endpoints

Answer = Callable[[socket.socket, BinaryIO, "Endpoint"], None]


class Endpoint:
    """A TCP server on loopback that answers every connection as `answer` says,
    one thread a connection.  stop() ends every connection and joins every thread."""

    def __init__(self, answer: Answer, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.tls = answer, tls
        self.stopping = threading.Event()
        self.connections = self.requests = self.body_bytes = 0
        self.responses: list[int] = []  # body bytes sent, one entry per response flood() ended
        self.first_request_at: float | None = None  # monotonic
        self.first_request_wall: float | None = None  # time.time(), to set beside a log's timestamps
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        endpoint = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                endpoint._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True  # the port goes to a real agent next, as Consul binds it
            daemon_threads, block_on_close = False, True  # server_close() joins every connection's thread

        self._server = Server((LOOPBACK, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"endpoint-{self.port}")
        self._listening = False

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    def count(self, **amounts: int) -> None:
        with self._lock:
            if "requests" in amounts and self.first_request_at is None:
                self.first_request_at, self.first_request_wall = time.monotonic(), time.time()
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._sockets.add(sock)
        try:
            if self.tls:  # it takes the plain socket's place (which it detaches)
                sock = self._replace(sock, self.tls.wrap_socket(sock, server_side=True,
                                                                do_handshake_on_connect=False))
                sock.do_handshake()  # here, in this connection's thread, not in the accept loop
            with sock.makefile("rb") as rfile:
                self.answer(sock, rfile, self)
        except (OSError, ValueError):
            pass  # the client went away, or stop() cut the connection
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    def _replace(self, old: socket.socket, new: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.discard(old)
            self._sockets.add(new)
        return new

    def stop_listening(self) -> None:
        """Accept no more connections and free the port; those open go on."""
        if self._listening:
            self._server.shutdown()
            self._thread.join()
            self._listening = False
        self._server.socket.close()

    def stop(self) -> None:
        self.stopping.set()
        self.stop_listening()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, even under TLS
        self._server.server_close()

    def __enter__(self) -> Endpoint:
        self._thread.start()
        self._listening = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_request(rfile: BinaryIO) -> bool:
    """Read one request, head and body; False at the end of the connection."""
    if not rfile.readline(65537):
        return False
    headers = http.client.parse_headers(rfile)  # type: ignore[arg-type]
    rfile.read(int(headers.get("Content-Length") or 0))
    return True


def drip(sock: socket.socket, endpoint: Endpoint, data: Iterable[int], every: float) -> None:
    for byte in data:
        if endpoint.stopping.wait(every):
            return
        sock.sendall(bytes([byte]))


def ok(body: bytes = b"{}") -> Answer:
    """A well-behaved agent: every request on a kept-alive connection answered at once."""
    def answer(sock: socket.socket, rfile: BinaryIO, endpoint: Endpoint) -> None:
        while read_request(rfile):
            endpoint.count(requests=1)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return answer


def trickle_headers(every: float = DRIP) -> Answer:
    """The status line and then a header that never ends, one byte at a time."""
    def answer(sock: socket.socket, rfile: BinaryIO, endpoint: Endpoint) -> None:
        if read_request(rfile):
            endpoint.count(requests=1)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Trickle: "
            drip(sock, endpoint, itertools.chain(head, itertools.repeat(ord("a"))), every)
    return answer


def trickle_body(every: float = DRIP) -> Answer:
    """Whole headers at once, then a body one byte at a time."""
    def answer(sock: socket.socket, rfile: BinaryIO, endpoint: Endpoint) -> None:
        if read_request(rfile):
            endpoint.count(requests=1)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
            drip(sock, endpoint, itertools.repeat(ord(" ")), every)
    return answer


def trickle_tls_handshake(every: float = DRIP) -> Answer:
    """After the ClientHello, a TLS handshake record whose 16 KiB come a byte at a
    time: the client's handshake waits for the whole record."""
    def answer(sock: socket.socket, rfile: BinaryIO, endpoint: Endpoint) -> None:
        if sock.recv(65536):
            endpoint.count(requests=1)
            drip(sock, endpoint, itertools.chain(b"\x16\x03\x03\x40\x00", itertools.repeat(0)), every)
    return answer


def flood(size: int = 600 * MiB, framing: str = "chunked") -> Answer:
    """A body of `size` bytes as fast as loopback takes it, framed by a declared
    Content-Length, chunked, or the end of the connection."""
    framings = {"length": b"Content-Length: %d\r\n" % size, "chunked": b"Transfer-Encoding: chunked\r\n",
                "close": b"Connection: close\r\n"}

    def answer(sock: socket.socket, rfile: BinaryIO, endpoint: Endpoint) -> None:
        if not read_request(rfile):
            return
        endpoint.count(requests=1)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framings[framing] + b"\r\n")
        piece, sent = b" " * MiB, 0
        try:
            while sent < size and not endpoint.stopping.is_set():
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
                sent += len(piece)
                endpoint.count(body_bytes=len(piece))
            if framing == "chunked":
                sock.sendall(b"0\r\n\r\n")
        finally:
            with endpoint._lock:
                endpoint.responses.append(sent)
    return answer


def trickle_first(then: Answer) -> Answer:
    """The first connection trickles its headers; every later one is answered by `then`."""
    first = threading.Event()

    def answer(sock: socket.socket, rfile: BinaryIO, endpoint: Endpoint) -> None:
        if not first.is_set():
            first.set()
            trickle_headers()(sock, rfile, endpoint)
        else:
            then(sock, rfile, endpoint)
    return answer


# ---------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def no_thread_left():
    # Only this test's: an Agent another test module made (and never closed) keeps its watchdog.
    before = set(threading.enumerate())
    yield
    left = [t.name for t in set(threading.enumerate()) - before
            if t.name == "consul-deadline" or t.name.startswith("endpoint-")]
    assert not left, f"threads left running: {left}"


@pytest.fixture
def session():
    with requests.Session() as s:
        adapter = BoundedAdapter(TIMEOUT)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        yield s


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = TestCA(tmp_path_factory.mktemp("pki"), "transport-ca")
    server = ca.issue("agent")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    return ca, context


def timed(call: Callable[[], Any], exception: type[BaseException]) -> tuple[float, BaseException]:
    start = time.monotonic()
    with pytest.raises(exception) as raised:
        call()
    return time.monotonic() - start, raised.value


def agent_for(endpoint: Endpoint, **env: str) -> Agent:
    return Agent(connection(http_addr=endpoint.url, env=env), timeout=TIMEOUT)


# ---------------------------------------------------------------- the deadline

@pytest.mark.parametrize("answer", [trickle_headers, trickle_body], ids=["headers", "body"])
def test_a_trickle_ends_at_the_deadline(session, answer):
    with Endpoint(answer()) as endpoint:
        took, error = timed(lambda: session.get(f"{endpoint.url}/v1/agent/services", timeout=TIMEOUT),
                            DeadlineExceeded)
    assert TIMEOUT - 0.05 <= took < TIMEOUT + MARGIN
    assert isinstance(error, requests.exceptions.Timeout) and error.seconds == TIMEOUT
    assert "no whole response within 1s" in str(error)


def test_the_deadline_is_the_timeout_the_request_was_sent_with(session):
    # py-consul sends a blocking query with its wait added; the whole of that is the bound.
    with Endpoint(trickle_headers()) as endpoint:
        took, error = timed(lambda: session.get(endpoint.url, timeout=2 * TIMEOUT), DeadlineExceeded)
    assert 2 * TIMEOUT - 0.05 <= took < 2 * TIMEOUT + MARGIN and error.seconds == 2 * TIMEOUT


def test_total_of_each_kind_of_timeout():
    adapter = BoundedAdapter(5.0)
    assert adapter._total(None) == 5.0 and adapter._total(2) == 2.0 and adapter._total((1, 2.5)) == 3.5
    assert adapter._total((None, None)) == 5.0
    assert adapter._total(transport.Timeout(total=4)) == 4.0
    adapter.close()


def test_a_trickling_tls_handshake_ends_at_the_deadline(pki):
    ca, _ = pki
    with Endpoint(trickle_tls_handshake(), tls=None) as endpoint:
        agent = Agent(connection(http_addr=f"https://{endpoint.addr}", ca_file=str(ca.cert), env={}),
                      timeout=TIMEOUT)
        try:
            took, error = timed(lambda: agent.read_owned("owner"), ConsulError)
        finally:
            agent.client.http.session.close()
    assert took < TIMEOUT + MARGIN
    assert error.unreachable and "did not answer GET /v1/agent/services within 1s (the whole response)" in str(error)


def test_tls_headers_trickle_through_the_verifying_adapter(pki):
    ca, context = pki
    with Endpoint(trickle_headers(), tls=context) as endpoint:
        agent = Agent(connection(http_addr=endpoint.url, ca_file=str(ca.cert), env={}), timeout=TIMEOUT)
        try:
            took, error = timed(lambda: agent.read_owned("owner"), ConsulError)
        finally:
            agent.client.http.session.close()
    assert took < TIMEOUT + MARGIN and error.unreachable and "(the whole response)" in str(error)


def test_a_connection_cut_at_its_deadline_is_not_reused(session):
    with Endpoint(trickle_first(ok())) as endpoint:
        timed(lambda: session.get(endpoint.url, timeout=TIMEOUT), DeadlineExceeded)
        assert session.get(endpoint.url, timeout=TIMEOUT).json() == {}
        assert session.get(endpoint.url, timeout=TIMEOUT).json() == {}
    assert endpoint.connections == 2  # one cut, one new and kept alive


def test_a_pooled_connection_an_old_deadline_shut_down_is_replaced(session):
    # The narrow case: a deadline passing just as its request pooled the connection,
    # after the pool's own liveness check: the next request starts a new connection.
    with Endpoint(ok()) as endpoint:
        session.get(endpoint.url, timeout=TIMEOUT)
        pools = session.get_adapter(endpoint.url).poolmanager.pools
        [conn] = [c for key in pools.keys() for c in pools[key].pool.queue if c is not None]
        conn._shut = True
        assert session.get(endpoint.url, timeout=TIMEOUT).json() == {}
    assert endpoint.connections == 2 and endpoint.requests == 2


def test_refused_connection_is_an_error_at_once_not_a_deadline(session):
    took, _ = timed(lambda: session.get(f"http://{LOOPBACK}:{free_port()}/", timeout=TIMEOUT),
                    requests.exceptions.ConnectionError)
    assert took < TIMEOUT / 2


# ---------------------------------------------------------------- the size cap

def test_a_declared_huge_body_is_refused_without_reading_it(session):
    with Endpoint(flood(600 * MiB, "length")) as endpoint:
        took, error = timed(lambda: session.get(endpoint.url, timeout=TIMEOUT), ResponseTooLarge)
    assert error.limit == MAX_BODY and took < TIMEOUT
    assert endpoint.body_bytes < 600 * MiB / 4  # what loopback buffers took before the close


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_an_undeclared_huge_body_stops_at_the_cap(session, framing):
    with Endpoint(flood(600 * MiB, framing)) as endpoint:
        tracemalloc.start()
        try:
            took, error = timed(lambda: session.get(endpoint.url, timeout=5 * TIMEOUT), ResponseTooLarge)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert error.limit == MAX_BODY
    assert MAX_BODY <= endpoint.body_bytes < 600 * MiB / 4
    assert peak < 1.5 * MAX_BODY, f"{peak / MiB:.0f} MiB held while reading"


def test_a_body_just_under_the_cap_is_whole(session):
    body = b"[" + b" " * (4 * MiB - 2) + b"]"
    adapter = BoundedAdapter(TIMEOUT, max_body=len(body))
    session.mount("http://", adapter)
    with Endpoint(ok(body)) as endpoint:
        assert session.get(endpoint.url, timeout=TIMEOUT).content == body
        session.mount("http://", BoundedAdapter(TIMEOUT, max_body=len(body) - 1))
        with pytest.raises(ResponseTooLarge):
            session.get(endpoint.url, timeout=TIMEOUT)
    adapter.close()


# ---------------------------------------------------------------- normal calls

def test_normal_calls_keep_one_connection_alive(session):
    with Endpoint(ok(b'{"web": {"ID": "web"}}')) as endpoint:
        for _ in range(20):
            assert session.get(f"{endpoint.url}/v1/agent/services", timeout=TIMEOUT).json() == {"web": {"ID": "web"}}
            assert session.put(f"{endpoint.url}/v1/agent/check/pass/x", data="note", timeout=TIMEOUT).ok
    assert endpoint.requests == 40 and endpoint.connections == 1


def test_threads_share_a_session_while_others_run_out_of_time(session):
    """Heartbeats from several threads over one session: a deadline passing in one
    thread never cuts another thread's call."""
    failures: list[BaseException] = []
    timed_out: list[float] = []
    with Endpoint(ok()) as good, Endpoint(trickle_headers()) as bad:
        def heartbeats() -> None:
            try:
                for _ in range(40):
                    assert session.put(f"{good.url}/v1/agent/check/pass/x", timeout=TIMEOUT).json() == {}
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        def stuck() -> None:
            start = time.monotonic()
            try:
                session.get(bad.url, timeout=TIMEOUT)
            except DeadlineExceeded:
                timed_out.append(time.monotonic() - start)

        threads = [threading.Thread(target=heartbeats) for _ in range(6)] + \
                  [threading.Thread(target=stuck) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[:3]
    assert len(timed_out) == 4 and max(timed_out) < TIMEOUT + MARGIN
    assert good.requests == 240 and good.connections <= 10  # the pool's size


def test_close_ends_the_watchdog_and_a_later_call_starts_it_again(session):
    def watchdogs() -> int:  # other tests' Agents may keep theirs
        return len([t for t in threading.enumerate() if t.name == "consul-deadline"])

    others = watchdogs()
    with Endpoint(ok()) as endpoint:
        session.get(endpoint.url, timeout=TIMEOUT)
        assert watchdogs() == others + 1
        session.close()
        assert watchdogs() == others
        assert session.get(endpoint.url, timeout=TIMEOUT).json() == {}


# ---------------------------------------------------------------- through Agent

@pytest.fixture
def closing():
    agents: list[Agent] = []
    yield agents.append
    for agent in agents:
        agent.client.http.session.close()


def test_agent_names_the_endpoint_the_call_and_the_deadline(closing):
    with Endpoint(trickle_body()) as endpoint:
        agent = agent_for(endpoint)
        closing(agent)
        took, error = timed(lambda: agent.read_owned("owner"), ConsulError)
    assert took < TIMEOUT + MARGIN and error.unreachable
    assert str(error) == (f"Consul agent at {endpoint.url} did not answer GET /v1/agent/services within 1s "
                          f"(the whole response); retrying")


def test_agent_names_the_size_bound(closing):
    with Endpoint(flood(600 * MiB, "chunked")) as endpoint:
        agent = agent_for(endpoint)
        closing(agent)
        _, error = timed(lambda: agent.in_maintenance("owner"), ConsulError)
    assert error.unreachable
    assert str(error).startswith(f"Consul agent at {endpoint.url} answered GET /v1/agent/checks with more than "
                                 f"32 MiB; ")


def test_agent_works_normally_through_the_bound(closing):
    with Endpoint(ok()) as endpoint:
        agent = agent_for(endpoint)
        closing(agent)
        for _ in range(3):
            assert agent.read_owned("owner") == {}
    assert endpoint.requests == 6 and endpoint.connections == 1


def test_agent_mounts_the_bound_for_both_schemes(pki, closing):
    ca, _ = pki
    for conn in (connection(env={}), connection(http_addr="https://127.0.0.1:8501", ca_file=str(ca.cert), env={}),
                 connection(http_addr="https://127.0.0.1:8501", env={"CONSUL_HTTP_SSL_VERIFY": "false"})):
        agent = Agent(conn)
        closing(agent)
        for prefix in ("http://x/", "https://x/"):
            adapter = agent.client.http.session.get_adapter(prefix)
            assert isinstance(adapter, BoundedAdapter) and adapter.default_timeout == 5.0


def test_endpoint_stop_frees_the_port_for_the_next_server():
    endpoint = Endpoint(trickle_headers())
    with endpoint:
        port = endpoint.port
        with socket.create_connection((LOOPBACK, port)) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: endpoint.requests == 1, timeout=5, message="the request read")
            endpoint.stop_listening()
            with socket.create_server((LOOPBACK, port)):  # bindable while the old connection trickles on
                assert client.recv(1) == b"H"  # and the old connection still trickles
