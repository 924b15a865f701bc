"""Issue 10, item 8: a slow agent.  Healthy instances never expire because the
listener fell behind: one heartbeat, the claim's, keeps every instance alive
(issue 13), so even 200 ms a request costs nothing.  Falling behind without the
claim is said once (tests/test_sending.py)."""
from __future__ import annotations

import time

import pytest

from tests.faults import converge
from tests.harness import ConsulAgent, listener
from tests.secure_agent import CountingProxy
from tests.test_integration import instances, listener_log, unique

INSTANCES, TTL, DELAY = 200, 3, 0.020


@pytest.fixture
def own_agent(tmp_path):
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent


@pytest.mark.fault("22. a slow agent: 20 and 200 ms a request, 200 instances at ttl 3 s")
def test_a_slow_agent_expires_no_healthy_instance(own_agent, supervisord_factory, converged):
    service = unique("slow")
    with CountingProxy(own_agent.http_port) as proxy:
        stanza = listener(own_agent).replace(f"--http-addr {own_agent.http_addr}", f"--http-addr {proxy.addr}")
        sv = supervisord_factory(f"""
[program:many]
command=sleep 600
process_name=%(program_name)s_%(process_num)03d
numprocs={INSTANCES}
startsecs=1
[consul:many]
name={service}
ttl={TTL}s
""" + stanza + "stopwaitsecs=30\n")
        converge(own_agent, sv, timeout=120)

        def checks() -> list[str]:  # the process-state checks and the liveness checks (aliases of the claim)
            return [c["Status"] for c in own_agent.checks().values() if c["ServiceName"] == service]

        figures = []
        for delay in (DELAY, 0.2):  # every request waits 20 ms, then 200 ms
            before = len(listener_log(sv))
            proxy.delay = delay
            slowed = time.monotonic()
            samples = critical = 0
            while time.monotonic() - slowed < 5 * TTL:  # five TTLs through the slow agent
                statuses = checks()
                samples += len(statuses)
                critical += sum(status != "passing" for status in statuses)
                time.sleep(0.2)
            log = listener_log(sv)[before:]
            assert samples >= 2 * INSTANCES and critical == 0, f"{critical} of {samples} samples not passing"
            # One heartbeat (the claim's, every ttl/3) keeps all 200 alive: nothing to fall behind.
            writes = log.count('"PUT /v1/agent/check/')
            assert "heartbeats fall behind" not in log and writes <= 5 * TTL + 2, writes
            figures.append(f"{delay * 1000:.0f} ms: {samples} samples, {critical} not passing, {writes} writes")
        proxy.delay = 0.0
        seconds = converge(own_agent, sv, timeout=60)
        # A shutdown through the 200 ms agent: 200 deregistrations, 8 at a time, take longer
        # than a fixed 5 s; the listener has its stopwaitsecs (less a second) for them.
        proxy.delay = 0.2
        before = len(listener_log(sv))
        stopped = time.monotonic()
        sv.stop()
        took = time.monotonic() - stopped
        log = listener_log(sv)[before:]
        assert "unfinished" not in log and instances(own_agent, service) == [], log[-2000:]
        converged(seconds, f"5 ttl at each delay; {'; '.join(figures)} (one claim heartbeat a second for all); "
                           f"then a shutdown at 200 ms: all {INSTANCES} deregistered, supervisord gone in {took:.1f} s")
