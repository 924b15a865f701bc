"""Issue 10, item 8: a slow agent.  Healthy instances never expire because the
listener fell behind: heartbeats go out in parallel, and falling behind is said."""
from __future__ import annotations

import time

import pytest

from tests.faults import converge
from tests.harness import ConsulAgent, listener, wait_for
from tests.secure_agent import CountingProxy
from tests.test_integration import listener_log, unique

INSTANCES, TTL, DELAY = 200, 3, 0.020


@pytest.fixture
def own_agent(tmp_path):
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent




@pytest.mark.fault("22. a slow agent: 20 ms a request, 200 instances at ttl 3 s")
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
""" + stanza)
        converge(own_agent, sv, timeout=120)
        # The start-up burst may have run a heartbeat late on a loaded machine; what counts is after it.
        before = len(listener_log(sv))
        proxy.delay = DELAY  # from now on every request waits 20 ms

        def process_checks() -> list[str]:
            return [c["Status"] for c in own_agent.checks().values()
                    if c["ServiceName"] == service and c["CheckID"].endswith(":process")]

        slowed = time.monotonic()
        samples = critical = 0
        while time.monotonic() - slowed < 5 * TTL:  # five TTLs through the slow agent
            statuses = process_checks()
            samples += len(statuses)
            critical += sum(status != "passing" for status in statuses)
            time.sleep(0.2)
        assert critical == 0, f"{critical} of {samples} samples not passing"
        assert "heartbeats fall behind" not in listener_log(sv)[before:]
        before = len(listener_log(sv))

        # Far slower than parallel sending can make up for: said once, and its end.
        proxy.delay = 0.1
        wait_for(lambda: "heartbeats fall behind" in listener_log(sv)[before:], timeout=30, message="the lag warned")
        proxy.delay = 0.0
        wait_for(lambda: "heartbeats keep up with their TTLs again" in listener_log(sv)[before:], timeout=60,
                 message="the lag's end said")
        assert listener_log(sv)[before:].count("heartbeats fall behind") == 1
        seconds = converge(own_agent, sv, timeout=60)
        converged(seconds, f"{samples} samples over {5 * TTL} s through a 20 ms proxy: {critical} not passing; "
                           f"at 100 ms the lag was said once, and its end")
