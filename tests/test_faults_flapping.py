"""The fault suite (issue 10): a crash-looping program, and the exit status of a
program supervisord respawns at once, against a real Consul agent and a real
supervisord.

Each test has its own agent, so that the agent's own log (at -dev's DEBUG it
logs every request) and its Raft index count this test's writes only.  Each
ends once its program has stopped looping and served the hold, with zero
drift.
"""
from __future__ import annotations

import datetime
import os
import re
import time
import urllib.parse

import pytest

from supervisor_consul import instance
from supervisor_consul.health import FLAP_EXITS, FLAP_HOLD, FLAPPING_NOTE
from tests.faults import converge, owner_of
from tests.harness import ConsulAgent, listener, wait_for
from tests.test_integration import unique

SAMPLE_SECONDS = 20.0
SAMPLE_EVERY = 0.1
_PUT = re.compile(r"^\s*(\S+) \[DEBUG\] agent\.http: Request finished: method=PUT url=(\S+)")


@pytest.fixture
def own_agent(tmp_path):
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent


def script(path, body: str) -> str:
    """Write an executable shell script atomically: a copy already running keeps the old one."""
    draft = path.with_suffix(".new")
    draft.write_text(f"#!/bin/sh\n{body}\n")
    draft.chmod(0o755)
    os.replace(draft, path)
    return str(path)


def looping(program: str, command: str, service: str, autorestart: str = "true") -> str:
    return (f"[program:{program}]\ncommand={command}\nstartsecs=0\nautorestart={autorestart}\n"
            f"[consul:{program}]\nname={service}\n")


def check_id(sv, namespec: str) -> str:
    return instance.ttl_check_id(instance.service_id(owner_of(sv), namespec))


def writes(agent: ConsulAgent, check: str, since: float = 0.0) -> list[tuple[float, str]]:
    """(when, note) of every write to the check the agent took, from its own log."""
    found = []
    for line in agent.log_path.read_text(errors="replace").splitlines():
        match = _PUT.match(line)
        if not match:
            continue
        when = datetime.datetime.fromisoformat(match[1]).timestamp()
        url = urllib.parse.urlsplit(match[2])
        if when >= since and url.path.startswith("/v1/agent/check/") and url.path.endswith(f"/{check}"):
            found.append((when, urllib.parse.parse_qs(url.query).get("note", [""])[0]))
    return found


def raft_index(agent: ConsulAgent) -> int:
    return int(agent._get("/v1/agent/self")["Stats"]["raft"]["last_log_index"])


def shown(agent: ConsulAgent, service: str, check: str) -> tuple[str | None, str | None]:
    """(status in the catalog, as DNS sees it; note in the agent, which has it at once)."""
    catalog = [c["Status"] for entry in agent.health(service) for c in entry["Checks"] if c["CheckID"] == check]
    note = (agent.checks().get(check) or {}).get("Output")
    return (catalog[0] if catalog else None), note


def exits(sv, program: str) -> int:
    return sv.log_text().count(f"exited: {program} (")


def stop_the_loop(sv, program: str, path) -> float:
    """Make the program stay up; the wall-clock time it started the run that stays."""
    script(path, "exec sleep 600")

    def steady():
        info = sv.info(program)
        with open(f"/proc/{info['pid']}/cmdline", "rb") as f:
            return info if info["statename"] == "RUNNING" and f.read().startswith(b"sleep") else None

    return float(wait_for(steady, timeout=30, message=f"{program} to stay up")["start"])


def passing_after_the_hold(agent: ConsulAgent, sv, service: str, check: str, started: float) -> float:
    """Wait until the check passes; it must not before FLAP_HOLD of RUNNING.  Seconds from
    the steady start to zero drift."""
    def passing():
        status, _ = shown(agent, service, check)
        return time.time() if status == "passing" else None

    passed_at = wait_for(passing, timeout=FLAP_HOLD + 30, interval=0.1, message=f"{service} passing after the hold")
    assert passed_at - started >= FLAP_HOLD, "passing before the hold was over"
    converge(agent, sv)
    return time.time() - started


@pytest.mark.fault("15. a crash-looping program")
def test_a_crash_loop_is_critical_and_costs_a_write_a_second(own_agent, supervisord_factory, converged, tmp_path):
    service = unique("loop")
    path = tmp_path / "loop.sh"
    sv = supervisord_factory(looping("loop", script(path, "exit 1"), service) + listener(own_agent))
    check = check_id(sv, "loop")
    # The first seconds: FLAP_EXITS exits, each shown passing then critical, make it a loop.
    wait_for(lambda: (shown(own_agent, service, check)[1] or "").startswith(FLAPPING_NOTE), timeout=30,
             message="the restarting note")

    started, raft_before, exits_before = time.time(), raft_index(own_agent), exits(sv, "loop")
    samples = []
    while time.time() - started < SAMPLE_SECONDS:  # bounded: stops by itself
        samples.append(shown(own_agent, service, check))
        time.sleep(SAMPLE_EVERY)
    seconds = time.time() - started
    written = writes(own_agent, check, since=started)
    raft_per_second = (raft_index(own_agent) - raft_before) / seconds
    laps = exits(sv, "loop") - exits_before
    critical = sum(status == "critical" and (note or "").startswith(FLAPPING_NOTE) for status, note in samples)
    share = critical / len(samples)

    ended = stop_the_loop(sv, "loop", path)
    took = passing_after_the_hold(own_agent, sv, service, check, ended)
    converged(took, f"{laps} exits in {seconds:.0f} s: critical with the restarting note in {share:.0%} of "
                    f"{len(samples)} samples; {len(written) / seconds:.2f} writes/s to the agent, "
                    f"{raft_per_second:.2f} Raft writes/s; passing {FLAP_HOLD:g} s after it stayed up")
    assert laps >= FLAP_EXITS, "the program did not loop: the test proves nothing"
    assert share >= 0.98, samples
    assert len(written) <= seconds + 1, written
    assert all(later - earlier >= 0.95 for (earlier, _), (later, _) in zip(written, written[1:])), written


@pytest.mark.fault("16. exit status of a respawned crash")
def test_the_note_never_claims_an_exit_status_it_does_not_know(own_agent, supervisord_factory, converged, tmp_path):
    service = unique("respawned")
    path = tmp_path / "crash.sh"
    sv = supervisord_factory(looping("crash", script(path, "sleep 0.3; exit 1"), service)
                             + looping("once", script(tmp_path / "once.sh", "sleep 0.3; exit 1"), service,
                                       autorestart="false")
                             + listener(own_agent))
    check, once = check_id(sv, "crash"), check_id(sv, "once")
    # The control: not respawned, so supervisord still has the exit status when asked.
    wait_for(lambda: (own_agent.checks().get(once) or {}).get("Output") == "EXITED unexpectedly with exit status 1",
             timeout=30, message="the control's exit status")

    started = time.time()
    notes = set()
    while time.time() - started < SAMPLE_SECONDS / 2:  # bounded: stops by itself
        notes.add(shown(own_agent, service, check)[1])
        time.sleep(SAMPLE_EVERY)
    laps = exits(sv, "crash")
    written = [note for _, note in writes(own_agent, check)]  # every note it ever had, not only those sampled
    exited = [note for note in written if "EXITED" in note]

    ended = stop_the_loop(sv, "crash", path)
    took = passing_after_the_hold(own_agent, sv, service, check, ended)
    known = sum("with exit status 1" in note for note in exited)
    converged(took, f"{laps} exits with status 1, respawned at once: {len(exited)} EXITED notes written, "
                    f"{known} with exit status 1, {len(exited) - known} unknown, none 0; "
                    f"not respawned (autorestart=false): exit status 1")
    assert laps >= 3 and exited, "the program did not crash: the test proves nothing"
    assert not [note for note in notes | set(written) if note and "exit status 0" in note]
    assert all("with exit status 1" in note or "exit status unknown" in note for note in exited), exited
