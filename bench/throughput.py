"""Throughput (issue 4): synthetic PROCESS_STATE events through the listener's stdin.

The listener runs as supervisord would run it (`supervisor-consul listen`,
the protocol on its stdin and stdout, one event in flight) against a real
`consul agent -dev`; this module plays supervisord: it writes each event and
waits for `RESULT 2\\nOK` + `READY` before the next.  There is no real
supervisord: its XML-RPC (getAllProcessInfo at start, getProcessInfo for
each EXITED's exit status) is answered by a small fake on a unix socket
that knows the state each event announced, as supervisord would.

The events cycle each program through STARTING, RUNNING (a new pid each
time), EXITED (status 1), STARTING, RUNNING, STOPPING, STOPPED, round-robin
over the programs, each program starting at its own phase of the cycle.

The agent runs at INFO (see bench/instrument/sitecustomize.py: at -dev's
DEBUG every request costs O(instances)); the listener's requests are logged
by that module, a line each.

Figures:
- events/s end to end: from the first event written until the listener's
  last request is answered, the agent then showing exactly the final state
  (each program as its last event says; STOPPING may be absent or critical);
- events answered/s: first event written to last answer read;
- Consul calls/s: the listener's requests after the first event, over the
  time from the first to the last of them (its sync loop is busy all along);
- raw loop, per event: a listener without coalescing, as a tight loop over
  one keep-alive `http.client` connection making each event's own calls
  (register where needed, then the TTL update; deregister on STOPPED), with
  no event to read and no XML-RPC, from the same empty start;
- raw loop, same calls: the listener's very requests (method, URL and body),
  from the same empty start: what this
  agent and a minimal Python client can do with them.
"""
from __future__ import annotations

import http.client
import json
import os
import pathlib
import platform
import re
import select
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xmlrpc.server
from dataclasses import dataclass, field

from bench import requestlog
from bench.footprint import cpu_seconds
from bench.report import Row
from supervisor_consul import config, instance
from supervisor_consul.health import CRITICAL
from tests.harness import ConsulAgent, wait_for

CYCLE = ("STARTING", "RUNNING", "EXITED", "STARTING", "RUNNING", "STOPPING", "STOPPED")
STATE_CODES = {"STOPPED": 0, "STARTING": 10, "RUNNING": 20, "BACKOFF": 30, "STOPPING": 40, "EXITED": 100,
               "FATAL": 200, "UNKNOWN": 1000}
EXIT_STATUS = 1
EXITED_NOTE = ("critical", f"EXITED unexpectedly with exit status {EXIT_STATUS}")
TTL = "5m"  # heartbeats (every ttl/3 = 100 s) stay out of a run of seconds


def programs(count: int) -> list[str]:
    return [f"p{i:04d}" for i in range(count)]


# -- the fake supervisord ----------------------------------------------------

@dataclass
class Process:
    name: str
    statename: str = "STOPPED"
    pid: int = 0
    exitstatus: int = 0
    start: float = 0.0
    stop: float = 0.0

    def info(self) -> dict:
        now = int(time.time())
        return {"name": self.name, "group": self.name, "statename": self.statename,
                "state": STATE_CODES[self.statename], "pid": self.pid, "exitstatus": self.exitstatus,
                "start": int(self.start), "stop": int(self.stop), "now": now, "spawnerr": "",
                "description": "", "logfile": "", "stdout_logfile": "", "stderr_logfile": ""}


class _Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")
    disable_nagle_algorithm = False  # a unix socket has no TCP options

    def address_string(self) -> str:  # a unix socket has no client address
        return "unix"


class _UnixXMLRPCServer(socketserver.UnixStreamServer, xmlrpc.server.SimpleXMLRPCDispatcher):
    def __init__(self, path: str) -> None:
        xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
        socketserver.UnixStreamServer.__init__(self, path, _Handler)
        self.logRequests = False


class FakeSupervisord:
    """supervisord's XML-RPC as the listener uses it, answered from `processes`."""

    def __init__(self, path: str, names: list[str]) -> None:
        self.processes = {name: Process(name) for name in names}
        self.calls: dict[str, int] = {}
        self.server = _UnixXMLRPCServer(path)
        self.server.register_function(self._counted("getState", lambda: {"statecode": 1, "statename": "RUNNING"}),
                                      "supervisor.getState")
        self.server.register_function(self._counted("getAllProcessInfo", lambda: [
            p.info() for p in list(self.processes.values())]), "supervisor.getAllProcessInfo")
        self.server.register_function(self._counted("getProcessInfo", lambda name: self.processes[name].info()),
                                      "supervisor.getProcessInfo")
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-supervisord", daemon=True)

    def _counted(self, name, function):
        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return function(*args)
        return call

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the events -------------------------------------------------------------

@dataclass
class Step:
    name: str
    state: str
    pid: int
    data: bytes  # the event as supervisord writes it


@dataclass
class Expected:
    """What the agent must show for one program at the end: (status, note), or None for absent."""

    allowed: list[tuple[str, str] | None] = field(default_factory=lambda: [None])


def events(names: list[str], total: int) -> tuple[list[Step], dict[str, Expected]]:
    steps: list[Step] = []
    phase = {name: i % len(CYCLE) for i, name in enumerate(names)}
    last_pid: dict[str, int] = {}
    expected = {name: Expected() for name in names}
    pid = 10_000
    for serial in range(1, total + 1):
        name = names[(serial - 1) % len(names)]
        state = CYCLE[phase[name]]
        phase[name] = (phase[name] + 1) % len(CYCLE)
        previous = CYCLE[(phase[name] - 2) % len(CYCLE)]
        fields = [f"processname:{name}", f"groupname:{name}", f"from_state:{previous}"]
        if state == "RUNNING":
            pid += 1
            last_pid[name] = pid
        if state in ("RUNNING", "STOPPING", "STOPPED"):
            fields.append(f"pid:{last_pid.get(name, 0)}")
        elif state == "EXITED":
            fields += ["expected:0", f"pid:{last_pid.get(name, 0)}"]
        else:
            fields.append("tries:0")
        payload = " ".join(fields)
        header = (f"ver:3.0 server:supervisor serial:{serial} pool:consul poolserial:{serial} "
                  f"eventname:PROCESS_STATE_{state} len:{len(payload)}\n")
        steps.append(Step(name, state, last_pid.get(name, 0), (header + payload).encode()))
        # What the agent shows once this is the last word on the program.  STARTING changes
        # nothing, but an EXITED just before it may be told without its status: by the time the
        # listener asks, supervisord is starting the process again and answers about that.
        if state == "STARTING" and expected[name].allowed == [EXITED_NOTE]:
            expected[name] = Expected([EXITED_NOTE, ("critical", "EXITED unexpectedly, exit status unknown")])
        elif state == "RUNNING":
            expected[name] = Expected([("passing", f"RUNNING pid {last_pid[name]}")])
        elif state == "EXITED":
            expected[name] = Expected([EXITED_NOTE])
        elif state == "STOPPING":
            # Registered only if the RUNNING before it reached the agent before it was folded away.
            expected[name] = Expected([None, ("critical", f"STOPPING pid {last_pid.get(name, 0)}")])
        elif state == "STOPPED":
            expected[name] = Expected([None])
    return steps, expected


def supervisord_conf(path: pathlib.Path, socket_path: str, names: list[str]) -> None:
    sections = [f"[supervisord]\nlogfile={path.parent / 'supervisord.log'}\n",
                f"[unix_http_server]\nfile={socket_path}\n",
                "[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"]
    for i, name in enumerate(names):
        sections.append(f"[program:{name}]\ncommand=/bin/sleep 1000\n")
        sections.append(f"[consul:{name}]\nport={20000 + i}\nttl={TTL}\n")
    path.write_text("\n".join(sections))


# -- the agent's view ----------------------------------------------------------

def agent_state(http_addr: str, owner: str) -> dict[str, tuple[str, str]]:
    """Program name -> (status, note) of its process-state check, for our instances."""
    prefix = f"{instance.ID_PREFIX}:{owner}:"
    checks = requestlog.get(http_addr, "/v1/agent/checks")
    services = requestlog.get(http_addr, "/v1/agent/services")
    state = {}
    for sid in services:
        if sid.startswith(prefix):
            check = checks.get(instance.ttl_check_id(sid)) or {}
            state[sid[len(prefix):]] = (check.get("Status", "?"), check.get("Output", "?"))
    return state


def wrong(state: dict[str, tuple[str, str]], expected: dict[str, Expected]) -> list[str]:
    return [f"{name}: {state.get(name)} not in {want.allowed}" for name, want in expected.items()
            if state.get(name) not in want.allowed]


# -- the run --------------------------------------------------------------------

class Feeder:
    """supervisord's side of the protocol: one event in flight."""

    ANSWER = b"RESULT 2\nOKREADY\n"

    def __init__(self, proc: subprocess.Popen) -> None:
        self.stdin = proc.stdin.fileno()
        self.stdout = proc.stdout.fileno()

    def expect(self, text: bytes, timeout: float = 30.0) -> None:
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < len(text):
            chunk = os.read(self.stdout, len(text) - len(got))
            if not chunk:
                raise RuntimeError(f"the listener closed its stdout after {got!r}")
            got += chunk
            if len(got) < len(text) and not select.select([self.stdout], [], [],
                                                          max(0.0, deadline - time.monotonic()))[0]:
                raise RuntimeError(f"no answer within {timeout}s: {got!r}")
        if got != text:
            raise RuntimeError(f"the listener answered {got!r}, not {text!r}")

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.stdin, view):]
        self.expect(self.ANSWER)


def replay(http_addr: str, calls: list[tuple[str, str, bytes | None]]) -> float:
    """The raw loop: the calls back to back over one keep-alive connection; seconds taken."""
    host, port = http_addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json"}
    try:
        started = time.perf_counter()
        for method, url, body in calls:
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"raw loop: {method} {url} answered {response.status}")
        return time.perf_counter() - started
    finally:
        connection.close()


def per_event_calls(steps: list[Step], registrations: dict[str, instance.Registration], owner: str
                    ) -> list[tuple[str, str, bytes | None]]:
    """The raw loop as a listener without coalescing: each event's own calls, in order
    (register where the listener would register, then the TTL update; STARTING nothing).
    It is spared the XML-RPC for the exit status and any parsing."""
    calls: list[tuple[str, str, bytes | None]] = []
    registered: set[str] = set()

    def update(sid: str, verb: str, note: str) -> None:
        query = urllib.parse.urlencode({"note": note})
        calls.append(("PUT", f"/v1/agent/check/{verb}/{instance.ttl_check_id(sid)}?{query}", None))

    for step in steps:
        sid = instance.service_id(owner, step.name)
        if step.state in ("RUNNING", "EXITED") and sid not in registered:
            calls.append(("PUT", "/v1/agent/service/register?replace-existing-checks=true",
                          json.dumps(registrations[sid].payload(CRITICAL)).encode()))
            registered.add(sid)
        if step.state == "RUNNING":
            update(sid, "pass", f"RUNNING pid {step.pid}")
        elif step.state == "EXITED":
            update(sid, "fail", f"EXITED unexpectedly with exit status {EXIT_STATUS}")
        elif step.state == "STOPPING" and sid in registered:
            update(sid, "fail", f"STOPPING pid {step.pid}")
        elif step.state == "STOPPED" and sid in registered:
            calls.append(("PUT", f"/v1/agent/service/deregister/{sid}", None))
            registered.discard(sid)
    return calls


def reset(http_addr: str, owner: str) -> None:
    """The agent as before the first event: none of the listener's instances."""
    for sid in requestlog.get(http_addr, "/v1/agent/services"):
        if sid.startswith(f"{instance.ID_PREFIX}:{owner}:"):
            requestlog.put(http_addr, f"/v1/agent/service/deregister/{sid}")


def replayable(requests: list[requestlog.Request]) -> list[tuple[str, str, bytes | None]]:
    """The listener's requests as the raw loop makes them: the same methods, URLs and bodies."""
    return [(request.method, request.url, request.body) for request in requests]


def run(quick: bool) -> list[Row]:
    sizes = ((20, 1000), (100, 1000)) if quick else ((100, 10_000), (1000, 10_000))
    rows: list[Row] = []
    for count, total in sizes:
        rows.extend(measure(count, total, pyspy=os.environ.get("BENCH_PYSPY")))
    return rows


def measure(count: int, total: int, pyspy: str | None = None) -> list[Row]:
    """`total` events over `count` programs; with `pyspy` (a directory), the listener is
    recorded by py-spy into it, as collapsed stacks."""
    names = programs(count)
    steps, expected = events(names, total)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    agent = ConsulAgent(workdir / "consul", extra_args=requestlog.AGENT_ARGS)
    fake: FakeSupervisord | None = None
    recorder: subprocess.Popen | None = None
    listener: subprocess.Popen | None = None
    stderr = open(workdir / "listener.log", "wb")
    try:
        agent.start()
        log = requestlog.RequestLog(workdir / "requests.log")
        socket_path = str(workdir / "supervisor.sock")
        fake = FakeSupervisord(socket_path, names)
        fake.start()
        conf = workdir / "supervisord.conf"
        supervisord_conf(conf, socket_path, names)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "CONSUL_"))}
        listener = subprocess.Popen(
            [sys.executable, "-m", "supervisor_consul", "listen", "-c", str(conf), "--http-addr", agent.http_addr],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, bufsize=0,
            env=requestlog.environment(log.path, env), cwd=str(workdir))
        feeder = Feeder(listener)
        if pyspy:
            pathlib.Path(pyspy).mkdir(parents=True, exist_ok=True)
            recorder = subprocess.Popen(
                [shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy", "record", "--threads",
                 "--format", "raw", "--rate", "250", "--pid", str(listener.pid),
                 "--output", os.path.join(pyspy, f"throughput-{count}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        feeder.expect(b"READY\n")
        # Ready once its first reconcile has read the agent (and found nothing to do).
        wait_for(lambda: any(r.kind == "GET /v1/agent/checks" for r in log.requests(0)), timeout=60,
                 message="the listener's first reconcile")
        owner = re.search(r"owner id (\w+)", (workdir / "listener.log").read_text())[1]
        start_offset = log.offset()

        cpu = cpu_seconds(listener.pid)
        started = time.time()
        for step in steps:
            process = fake.processes[step.name]
            # supervisord changes the state, then tells its listeners.
            if step.state != process.statename:
                process.statename, process.pid = step.state, step.pid if step.state in ("RUNNING", "STOPPING") else 0
                if step.state == "EXITED":
                    process.exitstatus, process.stop = EXIT_STATUS, time.time()
                elif step.state == "RUNNING":
                    process.start = time.time()
            feeder.send(step.data)
        answered = time.time() - started

        last: list[str] = []

        def final_state():
            state = agent_state(agent.http_addr, owner)
            last[:] = wrong(state, expected)
            return None if last else state

        try:
            state = wait_for(final_state, timeout=60 + total / 50, interval=0.1)
        except AssertionError:
            raise RuntimeError(f"the agent did not reach the final state; {len(last)} wrong: {last[:5]}") from None
        # Quiet: the listener has nothing left to send (two reads of its requests agree).
        seen = [len(log.requests(start_offset))]
        wait_for(lambda: seen.append(len(log.requests(start_offset))) or seen[-1] == seen[-2], timeout=60,
                 interval=0.5, message="the listener to go quiet")
        requests = log.requests(start_offset)
        cpu = cpu_seconds(listener.pid) - cpu
        if (later := agent_state(agent.http_addr, owner)) != state:
            changed = {name: (state.get(name), later.get(name)) for name in set(state) | set(later)
                       if state.get(name) != later.get(name)}
            raise RuntimeError(f"the agent's state changed after convergence: {list(changed.items())[:5]}")
        converged = requests[-1].at - started
        busy = requests[-1].at - requests[0].at
        listener_calls_per_s = len(requests) / busy if busy > 0 else float("nan")

        # Stop the listener (EOF, as supervisord closing the pipe; the fake says supervisord is
        # RUNNING, so nothing is deregistered), put the agent back as it was before the first event,
        # and replay the same calls.
        listener.stdin.close()
        listener.wait(timeout=30)
        configuration = config.read(str(conf))
        registrations = {r.service_id: r for r in (instance.of(spec, owner, platform.node())
                                                     for spec in configuration.services.values())}
        calls = replayable(requests)
        reset(agent.http_addr, owner)
        raw_cpu = time.process_time()
        raw_seconds = replay(agent.http_addr, calls)
        raw_cpu = time.process_time() - raw_cpu
        raw_per_s = len(calls) / raw_seconds
        if agent_state(agent.http_addr, owner) != state:
            raise RuntimeError("the raw loop's calls did not give the listener's final state")

        naive = per_event_calls(steps, registrations, owner)
        reset(agent.http_addr, owner)
        naive_seconds = replay(agent.http_addr, naive)
        naive_wrong = wrong(agent_state(agent.http_addr, owner), expected)
        if naive_wrong:
            raise RuntimeError(f"the per-event raw loop did not reach the final state: {naive_wrong[:5]}")
    finally:
        if listener is not None:
            if listener.poll() is None:
                listener.kill()
            listener.wait(timeout=10)
        if recorder is not None:
            try:
                recorder.wait(timeout=30)  # py-spy writes its file when the listener exits
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait(timeout=10)
        if fake is not None:
            fake.stop()
        agent.stop()
        stderr.close()
    shutil.rmtree(workdir, ignore_errors=True)

    kinds = requestlog.counts(requests)
    events_per_s = total / answered
    end_to_end = total / converged
    naive_events_per_s = total / naive_seconds
    detail = ", ".join(f"{n} {k.split(' ', 1)[1]}" for k, n in kinds.items())
    return [
        Row(f"throughput: {total} events over {count} programs, stdin to agent converged",
            f"{end_to_end:.0f} events/s ({converged:.2f} s from the first event until the agent shows the final "
            f"state, which is right); events answered at {events_per_s:.0f}/s",
            f"raw keep-alive http.client loop making each event's own {len(naive)} calls: "
            f"{naive_events_per_s:.0f} events/s ({len(naive) / naive_seconds:.0f} ops/s, {naive_seconds:.2f} s)",
            end_to_end / naive_events_per_s, "≥ 0.8× the raw loop", end_to_end / naive_events_per_s >= 0.8),
        Row(f"throughput: Consul calls/s ({count} programs)",
            f"{len(requests)} calls ({detail}) at {listener_calls_per_s:.0f} calls/s; listener CPU "
            f"{cpu * 1000 / len(requests):.2f} ms per call (events included); "
            f"getProcessInfo {fake.calls.get('getProcessInfo', 0)}×",
            f"raw loop making the same {len(calls)} calls: {raw_per_s:.0f} ops/s; its CPU "
            f"{raw_cpu * 1000 / len(calls):.2f} ms per call",
            listener_calls_per_s / raw_per_s, "≥ 0.8× the raw loop", listener_calls_per_s / raw_per_s >= 0.8),
    ]


if __name__ == "__main__":
    # python -m bench.throughput [--quick | PROGRAMS EVENTS]
    from bench.report import table
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    rows = measure(*numbers, pyspy=os.environ.get("BENCH_PYSPY")) if numbers else run(quick="--quick" in sys.argv)
    print("\n".join(table(rows)))
