"""Test harness: a real Consul agent and a real supervisord, on loopback only.

Every process started here is tracked by pid and stopped by pid.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterable
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

_handed_out_ports: set[int] = set()


# ---------------------------------------------------------------- utilities

def bindable(address: str, port: int) -> bool:
    """True if port is free on address for both TCP and UDP.  TCP with SO_REUSEADDR,
    as Consul (Go) binds it: connections in TIME_WAIT from an agent just stopped
    do not keep the next one from starting."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (not handed out before)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _handed_out_ports and bindable(LOOPBACK, port):
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("could not find a free loopback port")


def free_port_prefix(count: int, digits: int = 1) -> str:
    """A prefix P such that ports P1..P<count> are free on loopback (for
    port=P%(process_num)d; with digits=2, P01.., for %(process_num)02d).  All
    below the usual ephemeral range (32768-60999), so no outgoing connection
    takes one meanwhile."""
    scale = 10 ** digits
    for _ in range(200):
        prefix = random.randint(10_000 // scale, 32_767 // scale - 1)
        if all(bindable(LOOPBACK, prefix * scale + n) for n in range(1, count + 1)):
            return str(prefix)
    raise RuntimeError("no free port prefix")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0,
             interval: float = 0.05, message: str = "") -> Any:
    """Call predicate() until it returns a truthy value, and return that value.

    Exceptions raised by predicate count as falsy (the last one is kept for
    the error message). On the deadline raise AssertionError.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}: last={last!r}")
        time.sleep(interval)


def fetched(script: str, *args: str) -> str:
    """What one of the project's fetch scripts (scripts/get-consul, get-nc, get-dig,
    get-chromium, get-deb) prints: the path of what it found or fetched."""
    proc = subprocess.run([str(REPO_ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        reason = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"scripts/{' '.join((script, *args))} failed (rc={proc.returncode}): {reason[0]}")
    return lines[-1].strip()


def listener(agent: ConsulAgent, buffer_size: int = 10, priority: int = -2, log_level: str = "debug",
             module: str = "-m supervisor_consul", options: str = "") -> str:
    """The [eventlistener:consul] stanza the issue asks to work (the README's), with
    supervisord's default buffer, the listener's log in %(here)s/listener.log.
    `module`: how this Python runs the listener (a benchmark swaps in a variant);
    `options`: more of `listen`'s options."""
    more = f" {options}" if options else ""
    return f"""
[eventlistener:consul]
command={sys.executable} {module} listen -c %(here)s/supervisord.conf --http-addr {agent.http_addr} --log-level {log_level}{more}
events=PROCESS_STATE,PROCESS_GROUP,TICK_5
buffer_size={buffer_size}
priority={priority}
autorestart=true
stdout_logfile=NONE
stderr_logfile=%(here)s/listener.log
"""


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `supervisor-consul ARGS...` (this checkout's, with this Python) to its end."""
    return subprocess.run([sys.executable, "-m", "supervisor_consul", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env=env)


@functools.cache
def consul_binary() -> str:
    return fetched("get-consul")


@functools.cache
def nc_dir() -> str:
    """A directory holding an OpenBSD `nc`."""
    return fetched("get-nc")


def _with_nc_on_path(env: dict) -> dict:
    """env with nc_dir() put first on PATH (so `command=nc -l PORT` works).

    If PATH already finds that very nc first, PATH is left alone, so putting
    e.g. /usr/bin first does not shadow anything else (a venv's python...).
    """
    directory = nc_dir()
    path = env.get("PATH", os.defpath)
    found = shutil.which("nc", path=path)
    try:
        if found and os.path.samefile(os.path.dirname(found), directory):
            return env
    except OSError:
        pass
    env = dict(env)
    env["PATH"] = directory + os.pathsep + path if path else directory
    return env


def _proc_stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, starttime) of a pid from /proc, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2:].split()
    # rest[0] is field 3 (state), rest[1] field 4 (ppid); starttime is field 22 -> rest[19]
    return rest[0], int(rest[1]), int(rest[19])


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    st = _proc_stat(pid)
    if st is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return st[0] not in ("Z", "X")


def parent_pid(pid: int) -> int | None:
    """pid's parent from /proc, or None if pid is gone."""
    st = _proc_stat(pid)
    return None if st is None else st[1]


def _starttime(pid: int) -> int | None:
    st = _proc_stat(pid)
    return None if st is None else st[2]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        st = _proc_stat(entry) if entry.isdigit() else None
        if st is not None:
            children.setdefault(st[1], []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All descendant pids of pid (from /proc)."""
    tree = _children_map()
    out: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def _kill_recorded(recorded: dict[int, int | None]) -> None:
    """SIGKILL every recorded pid still alive whose start time still matches."""
    for pid, start in list(recorded.items()):
        if pid_alive(pid) and (start is None or _starttime(pid) == start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid, start in list(recorded.items()):
        try:
            wait_for(lambda: not pid_alive(pid) or _starttime(pid) != start,
                     timeout=10, message=f"pid {pid} to die")
        except AssertionError:
            pass
        recorded.pop(pid, None)


def _terminate(popen: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a Popen'd process, wait up to timeout, then SIGKILL; reap it."""
    if popen.poll() is not None:
        return
    try:
        popen.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=10)


def _wait_started(proc: subprocess.Popen, ready: Callable[[], Any], timeout: float, what: str,
                  tail: Callable[[], str]) -> None:
    """Poll ready() until it is true; RuntimeError if proc exits first or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early (rc={proc.returncode}); {tail()}")
        try:
            if ready():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s (last={last!r}); {tail()}")
        time.sleep(0.05)


def _tail(path: pathlib.Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -------------------------------------------------------------- Consul agent

class ConsulAgent:
    """A real `consul agent -dev` on free loopback ports."""

    def __init__(self, workdir: pathlib.Path, binary: str | None = None,
                 extra_args: Iterable[str] = ()) -> None:
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or consul_binary()
        self.extra_args = list(extra_args)
        self.http_port = free_port()
        self.dns_port = free_port()
        self.serf_lan_port = free_port()
        self.serf_wan_port = free_port()
        self.server_port = free_port()
        self.grpc_port = free_port()
        self.log_path = self.workdir / "consul.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def http_addr(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        return [
            self.binary, "agent", "-dev", "-ui",
            "-bind", LOOPBACK, "-client", LOOPBACK, "-node", "test-node",
            "-http-port", str(self.http_port),
            "-dns-port", str(self.dns_port),
            "-serf-lan-port", str(self.serf_lan_port),
            "-serf-wan-port", str(self.serf_wan_port),
            "-server-port", str(self.server_port),
            "-grpc-port", str(self.grpc_port),
            "-hcl", "disable_update_check = true",
            *self.extra_args,
        ]

    def _get(self, path: str, timeout: float = 5.0) -> Any:
        url = f"http://{self.http_addr}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode() or "null")

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=str(self.workdir))

        def ready():
            return self._get("/v1/status/leader", timeout=2) and self._get("/v1/agent/self", timeout=2)

        try:
            _wait_started(self._proc, ready, 30, "consul agent", lambda: f"log tail:\n{_tail(self.log_path)}")
        except RuntimeError:
            self.stop()
            raise

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, timeout=10)
            self._proc = None
        self._close_log()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the agent hangs; its sockets still accept connections."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def register_foreign(self, service: dict) -> None:
        """Register a service the way another tool would (PUT /v1/agent/service/register)."""
        request = urllib.request.Request(f"http://{self.http_addr}/v1/agent/service/register",
                                         data=json.dumps(service).encode(), method="PUT")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def client(self):
        import consul
        return consul.Consul(host=LOOPBACK, port=self.http_port,
                             connections_timeout=5)

    def services(self) -> dict:
        return self._get("/v1/agent/services")

    def checks(self) -> dict:
        return self._get("/v1/agent/checks")

    def health(self, service: str) -> list:
        return self._get(f"/v1/health/service/{urllib.parse.quote(service, safe='')}")

    def dns(self, name: str, rdtype: str = "A") -> list:
        import dns.exception
        import dns.flags
        import dns.message
        import dns.query
        import dns.rcode
        import dns.rdatatype

        want = dns.rdatatype.from_text(rdtype)
        query = dns.message.make_query(name, want)
        try:
            resp = dns.query.udp(query, LOOPBACK, port=self.dns_port, timeout=3)
            if resp.flags & dns.flags.TC:
                raise dns.exception.DNSException("truncated")
        except (dns.exception.DNSException, OSError):
            resp = dns.query.tcp(query, LOOPBACK, port=self.dns_port, timeout=3)
        if resp.rcode() == dns.rcode.NXDOMAIN:
            return []
        out: list[str] = []
        for rrset in resp.answer:
            if rrset.rdtype == want:
                out.extend(rd.to_text() for rd in rrset)
        return out

    def __enter__(self) -> ConsulAgent:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Supervisord:
    """A real supervisord (from this Python's environment) in its own directory."""

    def __init__(self, workdir: pathlib.Path, config_text: str, auth: tuple[str, str] | None = None,
                 server: str = "") -> None:
        """auth: (username, password) for the XML-RPC server, kept there as {SHA} as an operator
        would; supervisorctl and the test's own rpc() get them in plain text.  server: more
        [unix_http_server] lines (chmod=...)."""
        self.auth = auth
        self.workdir = pathlib.Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._sockdir: str | None = None
        sock = self.workdir / "supervisor.sock"
        if len(str(sock)) > 90:
            self._sockdir = tempfile.mkdtemp(prefix="svd-")
            sock = pathlib.Path(self._sockdir) / "s.sock"
        self.sock = sock
        self.logfile = self.workdir / "supervisord.log"
        self.pidfile = self.workdir / "supervisord.pid"
        self.outfile = self.workdir / "supervisord.out"
        self.conf = self.workdir / "supervisord.conf"
        header = (
            "[supervisord]\n"
            "nodaemon=true\n"
            f"logfile={self.logfile}\n"
            f"pidfile={self.pidfile}\n"
            f"childlogdir={self.workdir / 'logs'}\n"
            "loglevel=debug\n"
            "\n"
            "[unix_http_server]\n"
            f"file={self.sock}\n"
            + (f"username={auth[0]}\npassword={{SHA}}{hashlib.sha1(auth[1].encode()).hexdigest()}\n" if auth else "")
            + (server + "\n" if server else "") +
            "\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            "\n"
            "[supervisorctl]\n"
            f"serverurl=unix://{self.sock}\n"
            + (f"username={auth[0]}\npassword={auth[1]}\n" if auth else "") +
            "\n"
        )
        self.conf.write_text(header + config_text)
        self._proc: subprocess.Popen | None = None
        self._out = None
        # pid -> start time (from /proc) of processes to kill on cleanup
        self._leftovers: dict[int, int | None] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, env: dict | None = None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self.sock.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        full_env = _with_nc_on_path(full_env)
        self._out = open(self.outfile, "ab")
        self._proc = subprocess.Popen(
            self.command(), env=full_env, cwd=str(self.workdir), stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT)

        try:
            _wait_started(self._proc, lambda: self.rpc().supervisor.getState().get("statename") == "RUNNING",
                          20, "supervisord",
                          lambda: f"output:\n{_tail(self.outfile)}\nlog tail:\n{_tail(self.logfile)}")
        except RuntimeError:
            self.cleanup()
            raise

    def command(self) -> list[str]:
        """How supervisord is started (a test may start it otherwise, as another user would):
        PyPI's, from this Python's environment, or SUPERVISORD_BIN's (Debian's, from
        scripts/get-supervisor, under the system Python: make compat)."""
        if os.environ.get("SUPERVISORD_BIN"):
            return [os.environ["SUPERVISORD_BIN"], "-c", str(self.conf)]
        return [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)]

    def rpc(self) -> xmlrpc.client.ServerProxy:
        from supervisor.xmlrpc import SupervisorTransport
        username, password = self.auth or (None, None)
        transport = SupervisorTransport(username, password, serverurl=f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf),
             *args],
            capture_output=True, text=True, timeout=60, cwd=str(self.workdir),
            stdin=subprocess.DEVNULL)

    def info(self, namespec: str) -> dict:
        return self.rpc().supervisor.getProcessInfo(namespec)

    def state(self, namespec: str) -> str:
        return self.info(namespec)["statename"]

    def wait_state(self, namespec: str, statename: str, timeout: float = 20) -> dict:
        def reached():
            info = self.info(namespec)
            return info if info["statename"] == statename else None

        return wait_for(reached, timeout=timeout,
                        message=f"{namespec} to be {statename}")

    def _record_children(self) -> None:
        """Remember pids of all supervisord's children (and their descendants)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        pids: set[int] = set()
        try:
            for info in self.rpc().supervisor.getAllProcessInfo():
                if info.get("pid"):
                    pids.add(int(info["pid"]))
        except Exception:  # noqa: BLE001 - supervisord may be unresponsive
            pass
        pids.update(descendants(self._proc.pid))
        pids.discard(self._proc.pid)
        for p in pids:
            if p not in self._leftovers:
                self._leftovers[p] = _starttime(p)

    def stop(self) -> None:
        if self._proc is not None:
            self._record_children()
            _terminate(self._proc, timeout=30)
            self._proc = None
        self._close_out()
        _kill_recorded(self._leftovers)

    def kill_hard(self) -> None:
        """SIGKILL supervisord only; its children survive (recorded for cleanup)."""
        if self._proc is None:
            return
        self._record_children()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=10)
        self._proc = None
        self._close_out()

    def kill_with_children(self) -> None:
        """SIGKILL supervisord and every process under it at once, as a host
        crash or the OOM killer would; no event, no shutdown, no cleanup."""
        if self._proc is None:
            return
        self._record_children()
        pids = {self._proc.pid: _starttime(self._proc.pid), **self._leftovers}
        for pid, start in pids.items():
            if start is not None and _starttime(pid) == start:  # None: gone already, the pid may be reused
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._proc.wait(timeout=10)
        self._proc = None
        self._close_out()
        _kill_recorded(self._leftovers)

    def cleanup(self) -> None:
        self.stop()
        _kill_recorded(self._leftovers)
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Supervisord:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class LoggedDaemon:
    """A helper program the tests run in the foreground (dnsmasq, haproxy): its
    output in workdir/NAME.log, started until ready() holds, stopped by pid."""

    name = "daemon"

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = pathlib.Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen | None = None
        self._log: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, cwd=str(self.workdir))
        try:
            _wait_started(self._proc, self.ready, 20, self.name, lambda: f"log tail:\n{_tail(self.log_path)}")
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LoggedDaemon:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
