"""What the fault suite measures: drift between supervisord and Consul, and
how promptly the listener answered supervisord."""
from __future__ import annotations

import datetime
import os
import platform
import re
import signal
import time

from supervisor.options import make_namespec

from supervisor_consul import instance
from supervisor_consul.config import Configuration
from tests.harness import ConsulAgent, Supervisord

LISTENER = "consul"  # the [eventlistener:consul] in every test config
TRANSIENT = ("STARTING", "BACKOFF", "STOPPING", "UNKNOWN")


def owner_of(sv: Supervisord, identifier: str = "supervisor", configfile: str | None = None) -> str:
    """The owner id sv's listener gives itself: from the -c path as supervisord has it
    (configfile, where it differs from sv.conf, as in another mount namespace)."""
    return instance.owner_of(platform.node(), Configuration(configfile or str(sv.conf), identifier=identifier))


def _expected(statename: str) -> str | None:
    """The process-state check the state table gives a settled state (None: not registered)."""
    return {"RUNNING": "passing", "EXITED": "critical"}.get(statename)


def drift(agent: ConsulAgent, sv: Supervisord, owner: str | None = None) -> list[str]:
    """Every way Consul's view of sv's instances differs from supervisord's; [] is in step.

    A process in a transient state counts as drift too: the comparison is
    only made once supervisord itself has settled.
    """
    prefix = f"{instance.ID_PREFIX}:{owner or owner_of(sv)}:"
    checks = agent.checks()
    # A `check = none` instance shows its liveness (the alias of the claim) instead.
    actual = {sid[len(prefix):]: (checks.get(instance.ttl_check_id(sid)) or checks.get(f"{sid}:supervisord")
                                  or {}).get("Status", "no process check")
              for sid in agent.services() if sid.startswith(prefix)}
    problems = []
    for info in sv.rpc().supervisor.getAllProcessInfo():
        if info["group"] == LISTENER:
            continue
        namespec, state = make_namespec(info["group"], info["name"]), info["statename"]
        if state in TRANSIENT:
            problems.append(f"{namespec} is {state} in supervisord")
            actual.pop(namespec, None)
            continue
        have, want = actual.pop(namespec, None), _expected(state)
        if have != want:
            problems.append(f"{namespec}: supervisord {state}, Consul {have or 'absent'}")
    problems.extend(f"orphan {namespec} ({status})" for namespec, status in actual.items())
    return problems


def converge(agent: ConsulAgent, sv: Supervisord, timeout: float = 60.0, owner: str | None = None) -> float:
    """Seconds until there is no drift; AssertionError with the drift left at the deadline."""
    start = time.monotonic()
    left: list[str] = []
    while time.monotonic() - start < timeout:
        try:
            left = drift(agent, sv, owner)
        except Exception as exc:  # noqa: BLE001 - an agent still starting is "not yet"
            left = [repr(exc)]
        if not left:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still drifting after {timeout}s: {left[:10]} ({len(left)} in all)")


def sigkill(pid: int) -> None:
    """SIGKILL one process; never 0 or less, which would hit our own process group."""
    assert pid > 0, f"no process to kill (pid {pid})"
    os.kill(pid, signal.SIGKILL)


def listener_pid(sv: Supervisord) -> int:
    return sv.info(LISTENER)["pid"]


def overflows(sv: Supervisord) -> int:
    return sv.log_text().count(f"pool {LISTENER} event buffer overflowed")


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (.*)$")


def answer_times(sv: Supervisord) -> list[tuple[datetime.datetime, float]]:
    """(when sent, seconds until the listener answered) for every event supervisord
    sent the listener, from supervisord's debug log."""
    sent: datetime.datetime | None = None
    out = []
    for line in sv.log_text().splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        when = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
        if match[2].startswith("event ") and match[2].endswith(f" sent to listener {LISTENER}"):
            sent = when
        elif match[2] == f"{LISTENER}: event was processed" and sent is not None:
            out.append((sent, (when - sent).total_seconds()))
            sent = None
    return out


def rss_and_fds(pid: int) -> tuple[float, int]:
    """(resident set in MiB, open file descriptors) of pid."""
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def descriptors(pid: int) -> tuple[int, int, int, int]:
    """(connections, socket descriptors, pidfds, every other descriptor) open in pid.
    Kept-alive connections to the agent come and go up to the connection
    pool's size, each held by two descriptors (the watchdog's duplicate,
    transport.py); the exit watch holds a pidfd per RUNNING process; the rest
    (pipes, files) must stay as they were."""
    sockets: list[str] = []
    others = pidfds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while listed
        if target.startswith("socket:"):
            sockets.append(target)
        elif target == "anon_inode:[pidfd]":
            pidfds += 1
        else:
            others += 1
    return len(set(sockets)), len(sockets), pidfds, others
