"""Issue 12's proof with a real HAProxy: `supervisor-consul restart web --rolling --drain 2s`
over three instances drops no request that HAProxy (following Consul's DNS) passes on,
where a plain `supervisorctl restart web:*` beside it drops some.

HAProxy's backend is a server-template filled from the SRV records of the service in
the test agent's DNS (tests/haproxy.py's config_text); supervisord runs three real HTTP
servers (tests/http_probe.py), each an instance with its own port and an HTTP check.
A loop sends about 20 requests a second through HAProxy's frontend all along, and
counts the failures (a status other than 200, or no answer within its timeout).
"""
from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

from tests.haproxy import HAProxy, haproxy_version
from tests.harness import free_port_prefix, listener, run_cli, wait_for
from tests.http_probe import program_lines, read_records
from tests.test_integration import unique

RATE = 20  # requests a second, one after another
REQUEST_TIMEOUT = 2.0  # seconds: a request still unanswered then counts as failed


class RequestLoop:
    """GET url/loop/N about RATE times a second in a thread of its own, until stopped;
    counts what was sent and what failed (non-200 or an exception), each failure's reason kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="requests", daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sent += 1
            try:
                with urllib.request.urlopen(f"{self.url}/loop/{self.sent}", timeout=REQUEST_TIMEOUT) as resp:
                    resp.read()
                    if resp.status != 200:
                        self.failures.append(f"#{self.sent}: status {resp.status}")
            except urllib.error.HTTPError as exc:
                self.failures.append(f"#{self.sent}: status {exc.code}")
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever it is
                self.failures.append(f"#{self.sent}: {exc!r}")
            next_at = max(next_at + 1 / RATE, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT + 5)
        assert not self._thread.is_alive()


def pids(sv) -> list[int]:
    return [sv.info(f"web:web_{n}")["pid"] for n in (1, 2, 3)]


def steadily(predicate, seconds: float, timeout: float = 60, message: str = "") -> None:
    """Wait until predicate() has held for `seconds` in a row: a state read from HAProxy's
    stats just after a restart may be the one from before it (its resolvers and checks
    have not looked yet), so one true reading is not enough."""
    since: list[float] = []

    def held() -> bool:
        if not predicate():
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= seconds

    wait_for(held, timeout=timeout, interval=0.1, message=message)


def process_pids(agent, name: str) -> list[int]:
    """The pids the passing process checks of NAME's instances speak of (`RUNNING pid 42`)."""
    out = []
    for entry in agent.health(name):
        for check in entry["Checks"]:
            words = (check.get("Output") or "").split()
            if check["CheckID"].endswith(":process") and check["Status"] == "passing" and words[:2] == ["RUNNING",
                                                                                                   "pid"]:
                out.append(int(words[2].rstrip(",")))
    return out


def loop_requests(records: list) -> list[int]:
    """How many of the loop's requests each instance served."""
    return [sum(1 for r in read_records(path) if r["path"].startswith("/loop/")) for path in records]


def test_a_rolling_drained_restart_behind_haproxy_drops_no_request(consul_agent, supervisord_factory, tmp_path):
    name, prefix = unique("web"), free_port_prefix(3)
    ports = [int(f"{prefix}{n}") for n in (1, 2, 3)]
    records = [tmp_path / f"web_{n}.jsonl" for n in (1, 2, 3)]
    sv = supervisord_factory(f"""
[program:web]
{program_lines(f"{prefix}%(process_num)d", tmp_path / "web_%(process_num)d.jsonl")}\
process_name=%(program_name)s_%(process_num)d
numprocs=3
numprocs_start=1
[consul:web]
name={name}
port={prefix}%(process_num)d
check=http://127.0.0.1:%(port)s/
interval=1s
timeout=1s
""" + listener(consul_agent))

    def passing() -> int:
        return len(consul_agent._get(f"/v1/health/service/{name}?passing"))

    wait_for(lambda: passing() == 3, timeout=30, message="three instances passing")
    with HAProxy(tmp_path / "haproxy", consul_agent.dns_port, name) as haproxy:
        want = sorted(f"127.0.0.1:{p}" for p in ports)

        def settled() -> bool:
            return passing() == 3 and haproxy.up_addrs() == want

        # 5 s: longer than HAProxy's resolution period (1-2 s) and a health check's (2 s).
        steadily(settled, 5, message=f"HAProxy with 3 servers UP: {want}")
        # Requests really spread over the three.
        with RequestLoop(haproxy.url) as warmup:
            wait_for(lambda: all(n >= 3 for n in loop_requests(records)), timeout=10,
                     message="each instance serving the loop's requests")
        assert warmup.failures == []

        # (a) the baseline: supervisord restarts all three at once, with no word to Consul.
        before = pids(sv)
        with RequestLoop(haproxy.url) as baseline:
            time.sleep(1)
            result = sv.ctl("restart", "web:*")
            assert result.returncode == 0, result.stdout + result.stderr
            new = pids(sv)
            wait_for(lambda: sorted(process_pids(consul_agent, name)) == sorted(new), timeout=30,
                     message=f"Consul's process checks passing for the new pids {new}")
            # Consul first sees the new processes (the listener's process checks name their pids:
            # the instances' critical spell is behind us), then the loop runs on until HAProxy is
            # steadily back to three, so the baseline counts the whole outage.
            steadily(settled, 5, message="HAProxy with 3 servers UP again after the baseline")
        assert not set(before) & set(pids(sv))

        # (b) the drained rolling restart, one instance at a time.  The drain must outlast the
        # time from the maintenance to HAProxy's taking the server out: Consul's catalog sync
        # (milliseconds on this agent) plus HAProxy's resolution period, `hold valid` (1s: the
        # resolvers ask again as soon as the last valid answer is that old), plus the query.
        # Measured here: a 1.3s drain drops nothing, a 0.7s one drops requests; 2s leaves ~1s.
        # (HAProxy's health checks play no part in this: `inter` 2s, `fall` 3 would take 6s.)
        before = pids(sv)
        with RequestLoop(haproxy.url) as drained:
            time.sleep(1)
            started = time.monotonic()
            result = run_cli("restart", "web", "--rolling", "--drain", "2s", "-c", str(sv.conf),
                             "--http-addr", consul_agent.http_addr)
            took = time.monotonic() - started
            assert result.returncode == 0, result.stderr
            time.sleep(1)
        after = pids(sv)
        assert result.stderr.splitlines() == [f"web:web_{n}: {step}" for n in (1, 2, 3)
                                              for step in ("draining 2s", "stopped", "started", "passing")]
        assert len(set(after)) == 3 and not set(before) & set(after), (before, after)  # all three restarted

        # The figures (pytest -s shows them).  The baseline's are not asserted: what it drops
        # depends on timing (a request to a process as it exits: 502, or one retried against
        # a closed port past the client's timeout; and, when Consul's checks of all three turn
        # critical at once, every request for about a second: 503, no server), 1 to ~22 here.
        print(f"\n{haproxy_version()}\n"
              f"baseline `supervisorctl restart web:*`: {len(baseline.failures)} of {baseline.sent} requests failed"
              f" {baseline.failures[:3]}\n"
              f"`supervisor-consul restart web --rolling --drain 2s` ({took:.1f} s): "
              f"{len(drained.failures)} of {drained.sent} requests failed")
        assert drained.sent >= RATE * 5
        assert drained.failures == [], (drained.failures, haproxy.log_text()[-4000:])
