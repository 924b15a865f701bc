"""Fault suite (issue 10, item 2): an endpoint that trickles or floods, where the
Consul agent should be, against a real listener under a real supervisord.
Every call is bounded in time and size (supervisor_consul/transport.py): the
log names the bound, events are still answered, memory stays flat, and once
a real agent is on that address the listener converges to zero drift.
"""
from __future__ import annotations

import datetime
import re
import time

import pytest

from supervisor_consul.agent import TIMEOUT
from supervisor_consul.transport import MAX_BODY, MiB
from tests.faults import answer_times, converge, listener_pid, rss_and_fds
from tests.harness import ConsulAgent, listener, wait_for
from tests.test_faults import ctl, programs
from tests.test_integration import listener_log, unique
from tests.test_transport import Endpoint, flood, trickle_headers

NAMES = ["p1", "p2", "p3"]
RSS_BOUND = 150.0  # MiB; unbounded, a 600 MiB body took the listener to 1.8 GiB


def logged(sv, text: str) -> datetime.datetime | None:
    """When the listener first logged a line containing text (its log's own timestamp)."""
    for line in listener_log(sv).splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if match and text in line:
            return datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
    return None


def peak_rss(pid: int) -> float:
    """The process's resident high-water mark in MiB (VmHWM): every peak, even between samples."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@pytest.fixture
def agent_later(tmp_path):
    """A Consul agent with its ports chosen but not started: an endpoint takes its
    HTTP port first, and the test starts the real agent there afterwards."""
    agent = ConsulAgent(tmp_path / "consul")
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.fault("13. a trickling endpoint")
def test_a_trickling_endpoint_is_cut_at_the_deadline(agent_later, supervisord_factory, converged):
    agent, service = agent_later, unique("trickle")
    deadline_text = f"did not answer GET /v1/agent/services within {TIMEOUT:g}s (the whole response); retrying"
    with Endpoint(trickle_headers(every=1.0), port=agent.http_port) as trickle:  # one byte a second
        sv = supervisord_factory(programs(service, NAMES) + listener(agent))
        pid = listener_pid(sv)
        wait_for(lambda: trickle.first_request_at, timeout=30, message="the listener's first call")
        since = datetime.datetime.fromtimestamp(trickle.first_request_wall)

        # Events keep coming while the sync thread waits on the trickle.
        until = time.monotonic() + 3 * TIMEOUT
        while logged(sv, deadline_text) is None and time.monotonic() < until:
            ctl(sv, "restart", *NAMES)
        when = logged(sv, deadline_text)
        assert when is not None, f"no line naming the deadline; log:\n{listener_log(sv)[-2000:]}"
        named_after = (when - since).total_seconds()
        assert named_after < TIMEOUT + 2
        answers = [took for sent, took in answer_times(sv) if sent >= since]
        assert answers and max(answers) < 2.0, "an event waited on the trickling endpoint"

        # The trickle's listening socket goes and a real agent takes the address, while
        # the connection the listener had open may go on trickling: it ends by its deadline.
        trickle.stop_listening()
        agent.start()
        ctl(sv, "signal", "HUP", "consul")
        hup = time.monotonic()
        seconds = converge(agent, sv)
        assert time.monotonic() - hup < 3 * TIMEOUT
    converged(seconds, f"the {TIMEOUT:g} s deadline logged {named_after:.1f} s after the first call; "
                       f"{len(answers)} events answered meanwhile, slowest {max(answers) * 1000:.0f} ms; "
                       f"from HUP with a real agent on the address")
    assert listener_pid(sv) == pid


@pytest.mark.fault("14. a huge response body")
def test_a_huge_body_is_cut_at_the_size_bound(agent_later, supervisord_factory, converged):
    agent, service = agent_later, unique("flood")
    size_text = f"answered GET /v1/agent/services with more than {MAX_BODY / MiB:g} MiB"
    with Endpoint(flood(600 * MiB, "chunked"), port=agent.http_port) as huge:
        sv = supervisord_factory(programs(service, NAMES) + listener(agent))
        pid = listener_pid(sv)
        sampled = [rss_and_fds(pid)[0]]

        def three_calls_cut() -> bool:
            sampled.append(rss_and_fds(pid)[0])
            return len(huge.responses) >= 3 and logged(sv, size_text) is not None

        wait_for(three_calls_cut, timeout=60, interval=0.02, message="three calls cut at the size bound")
        calls, most = len(huge.responses), max(huge.responses)
    during, high = max(sampled), peak_rss(pid)
    assert high < RSS_BOUND, f"listener RSS peaked at {high:.0f} MiB"
    assert most < 2 * MAX_BODY  # each call stopped reading near the cap (what socket buffers took besides)

    agent.start()
    seconds = converge(agent, sv)
    after, fds = rss_and_fds(pid)
    assert after < RSS_BOUND and peak_rss(pid) < RSS_BOUND
    converged(seconds, f"{calls} calls answered with 600 MiB bodies, each cut after at most {most / MiB:.0f} MiB "
                       f"sent; listener RSS peak {high:.0f} MiB ({during:.0f} sampled), "
                       f"{after:.0f} MiB after; after the agent answered (1-5 s backoff)")
    assert listener_pid(sv) == pid
