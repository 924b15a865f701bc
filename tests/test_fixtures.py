"""The test-fixture servers themselves (tests/grpc_health.py, tests/http_probe.py):
fast, no Consul.  Integration tests lean on them to prove Consul's own gRPC and
HTTP checks, so a fault there must show up here and not as a puzzling Consul result."""
from __future__ import annotations

import http.client
import json
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import grpc_health, http_probe
from tests.harness import LOOPBACK, REPO_ROOT, _terminate, free_port, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Program:
    """One fixture program run as `python -m tests.NAME ARGS` from the repository root,
    its stderr in a file; stopped by its pid at teardown."""

    def __init__(self, module: str, args: list[str], log: pathlib.Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", f"tests.{module}", *args], cwd=str(REPO_ROOT),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self) -> None:
        # Its one "serving" line is written once the port is bound.
        wait_for(lambda: self.proc.poll() is not None or "serving on" in self.stderr(),
                 message=f"{self.proc.args} to serve")
        assert self.proc.poll() is None, f"exited rc={self.proc.returncode}: {self.stderr()}"

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)


@pytest.fixture
def program(tmp_path: pathlib.Path) -> Iterator[Callable[..., Program]]:
    """start(module, *args) -> a started Program; every one is stopped by pid at teardown."""
    started: list[Program] = []

    def start(module: str, *args: str, wait: bool = True) -> Program:
        prog = Program(module, list(args), tmp_path / f"{module}{len(started)}.log")
        started.append(prog)
        if wait:
            prog.wait_serving()
        return prog

    try:
        yield start
    finally:
        for prog in started:
            _terminate(prog.proc, timeout=10)


def check(port: int, service: str = "") -> int:
    """One grpc.health.v1 Check, as Consul's gRPC check makes it."""
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def statuses(port: int, services: list[str]) -> dict[str, int]:
    return {name: check(port, name) for name in services}


# ------------------------------------------------------------------ gRPC health


def test_grpc_health_serving_then_usr1_not_serving_then_usr2_serving(program):
    port = free_port()
    prog = program("grpc_health", "--port", str(port), "--service", "web", "--service", "api")
    names = ["", "web", "api"]
    assert statuses(port, names) == dict.fromkeys(names, SERVING)
    assert prog.stderr().count("serving on") == 1

    prog.signal(signal.SIGUSR1)
    wait_for(lambda: statuses(port, names) == dict.fromkeys(names, NOT_SERVING), message="NOT_SERVING after USR1")
    prog.signal(signal.SIGUSR2)
    wait_for(lambda: statuses(port, names) == dict.fromkeys(names, SERVING), message="SERVING after USR2")

    # A service it was not told of is unknown to it, as the protocol says (Consul: critical).
    with pytest.raises(grpc.RpcError) as caught:
        check(port, "other")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_health_survives_a_burst_of_signals(program):
    # USR1 and USR2 back to back, many times: each is taken in turn (none kills it,
    # none hangs it); a signal sent after the burst still decides the status.
    port = free_port()
    prog = program("grpc_health", "--port", str(port))
    for _ in range(50):
        prog.signal(signal.SIGUSR1)
        prog.signal(signal.SIGUSR2)
    prog.signal(signal.SIGUSR2)
    wait_for(lambda: check(port) == SERVING, message="SERVING after the burst and a USR2")
    prog.signal(signal.SIGUSR1)
    wait_for(lambda: check(port) == NOT_SERVING, message="NOT_SERVING after a USR1")
    assert prog.proc.poll() is None


def test_grpc_health_sigterm_exits_zero(program):
    port = free_port()
    prog = program("grpc_health", "--port", str(port))
    prog.signal(signal.SIGTERM)
    assert prog.proc.wait(timeout=10) == 0
    assert "SIGTERM: stopping" in prog.stderr()


def test_grpc_health_port_taken_exits_nonzero(program):
    port = free_port()
    program("grpc_health", "--port", str(port))
    second = program("grpc_health", "--port", str(port), wait=False)
    assert second.proc.wait(timeout=10) == 1
    assert "cannot bind" in second.stderr()


def test_grpc_health_under_supervisord_signal_usr1(supervisord_factory):
    # The way integration tests run it: program_lines() (directory= the repository
    # root) and `supervisorctl signal USR1 prog`.
    port = free_port()
    sv = supervisord_factory(f"""
[program:grpc]
{grpc_health.program_lines(port, ["web"])}
startsecs=0
stopsignal=TERM
""")
    sv.wait_state("grpc", "RUNNING")
    wait_for(lambda: check(port, "web") == SERVING, message="SERVING under supervisord")
    assert sv.ctl("signal", "USR1", "grpc").returncode == 0
    wait_for(lambda: check(port, "web") == NOT_SERVING and check(port) == NOT_SERVING, message="NOT_SERVING")
    assert sv.ctl("signal", "USR2", "grpc").returncode == 0
    wait_for(lambda: check(port, "web") == SERVING, message="SERVING again")
    assert sv.rpc().supervisor.stopProcess("grpc")
    assert sv.info("grpc")["exitstatus"] == 0


# ------------------------------------------------------------------ HTTP probe


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request(method, path, body=iter([body]) if chunked else body, headers=headers or {},
                     encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_http_probe_records_method_headers_and_body(program, tmp_path):
    port, record = free_port(), tmp_path / "requests.jsonl"
    program("http_probe", "--port", str(port), "--record", str(record))
    assert http_probe.read_records(record) == []

    status, _ = request(port, "POST", "/health?deep=1", body=b'{"ping": true}',
                        headers={"X-Probe": "yes", "Content-Type": "application/json"})
    assert status == 200
    # Written before the answer: there once the client has its answer.
    [entry] = http_probe.read_records(record)
    assert entry["method"] == "POST"
    assert entry["path"] == "/health?deep=1"
    assert entry["headers"]["X-Probe"] == "yes"
    assert entry["headers"]["Content-Type"] == "application/json"
    assert entry["body"] == '{"ping": true}'
    assert set(entry) == {"method", "path", "headers", "body"}

    # Any method, one line each, in order; a chunked body read whole.
    assert request(port, "PUT", "/x", body=b"chunk", chunked=True)[0] == 200
    assert request(port, "HEAD", "/")[0] == 200
    assert request(port, "PURGE", "/cache")[0] == 200
    records = http_probe.read_records(record)
    assert [(r["method"], r["path"], r["body"]) for r in records[1:]] == [
        ("PUT", "/x", "chunk"), ("HEAD", "/", ""), ("PURGE", "/cache", "")]
    assert all(json.loads(line) for line in record.read_text().splitlines())


def test_http_probe_status_and_status_file(program, tmp_path):
    port = free_port()
    program("http_probe", "--port", str(port), "--record", str(tmp_path / "a.jsonl"), "--status", "503")
    assert request(port, "GET", "/")[0] == 503

    # --status-file: flipped between requests, no restart; --status while it has none.
    port, flip = free_port(), tmp_path / "status"
    program("http_probe", "--port", str(port), "--record", str(tmp_path / "b.jsonl"), "--status-file", str(flip))
    assert request(port, "GET", "/")[0] == 200
    flip.write_text("503\n")
    assert request(port, "GET", "/")[0] == 503
    flip.write_text("200")
    assert request(port, "GET", "/")[0] == 200
    flip.write_text("garbage")
    assert request(port, "GET", "/")[0] == 200


def test_http_probe_sigterm_exits_zero(program, tmp_path):
    port = free_port()
    prog = program("http_probe", "--port", str(port), "--record", str(tmp_path / "r.jsonl"))
    prog.signal(signal.SIGTERM)
    assert prog.proc.wait(timeout=10) == 0
