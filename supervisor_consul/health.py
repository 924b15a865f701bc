"""How a supervisord process state shows in Consul: the state-mapping table.

| supervisord | Consul                                                    |
|-------------|-----------------------------------------------------------|
| STARTING    | nothing changes (after a crash it stays critical)         |
| RUNNING     | registered, passing, note `RUNNING pid N`                 |
| BACKOFF     | critical                                                  |
| STOPPING    | critical, so DNS stops handing it out while it shuts down |
| STOPPED     | deregistered                                              |
| EXITED      | critical, note says expected or not and the exit status   |
| FATAL       | deregistered (`on_fatal = critical`: critical)            |
| UNKNOWN     | critical                                                  |

An instance critical for longer than `deregister_after` is deregistered, as
Consul itself would, so the listener does not register it again.  With
`check = none` there is no health to carry, so only RUNNING is registered.

In maintenance (Consul's own maintenance check, which keeps the instance out
of DNS) an instance stays registered whatever its process does, and every
state but RUNNING shows as `warning` instead of critical or deregistered:
Consul reaps an instance whose process check stays critical, and the
maintenance would go with it.  A dead listener still lets the TTL expire to
critical, so a host that is gone is cleaned up as always.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from .config import ServiceSpec
from .events import ProcessStateChange

PASSING: Final = "passing"
WARNING: Final = "warning"
CRITICAL: Final = "critical"
# supervisord's states whose `since` is the moment the process last died.
_DIED_STATES = ("EXITED", "BACKOFF", "FATAL")


@dataclass(frozen=True)
class ProcessStatus:
    """What the listener knows of one supervisord process.

    `state` is the last state that decides its health: STARTING never
    replaces an earlier one, so a crashed process stays critical while
    supervisord restarts it.
    """

    state: str
    pid: int = 0
    expected: bool | None = None  # EXITED: was the exit status in exitcodes?
    exitstatus: int | None = None  # EXITED
    since: float = 0.0  # wall-clock time it entered `state`


@dataclass(frozen=True)
class Health:
    status: str
    note: str
    # False for states that only pass through (STOPPING, BACKOFF): they update an
    # instance that is registered but never register a new one.
    registers: bool = True


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()  # leave whatever Consul has
Wanted = Health | None | _Keep  # None: not registered


def fold(previous: ProcessStatus | None, change: ProcessStateChange, now: float) -> ProcessStatus:
    """The status after an event."""
    if change.state == "STARTING":
        return previous or ProcessStatus("STARTING", since=now)
    return ProcessStatus(change.state, pid=change.pid, expected=change.expected, since=now)


def from_info(previous: ProcessStatus | None, info: dict[str, Any], spec: ServiceSpec | None) -> ProcessStatus:
    """The status after reading supervisord's getProcessInfo for the process.

    What the events already told is kept when it agrees, so a reconcile
    does not rewrite notes or restart `deregister_after`'s clock.
    """
    state = info.get("statename", "UNKNOWN")
    if state == "STARTING":
        return previous or ProcessStatus("STARTING", since=info.get("now", 0))
    if previous is not None and previous.state == state and (state != "RUNNING" or previous.pid == info.get("pid")):
        if state == "EXITED" and previous.exitstatus is None:
            return with_exitstatus(previous, info, spec)
        return previous
    since = info.get("stop") if state in _DIED_STATES and info.get("stop") else info.get("now", 0)
    status = ProcessStatus(state, pid=info.get("pid", 0), since=float(since or 0))
    return with_exitstatus(status, info, spec) if state == "EXITED" else status


def with_exitstatus(status: ProcessStatus, info: dict[str, Any], spec: ServiceSpec | None) -> ProcessStatus:
    exitstatus = info.get("exitstatus")
    expected = status.expected
    if expected is None and spec is not None and exitstatus is not None:
        expected = exitstatus in spec.exitcodes
    return replace(status, exitstatus=exitstatus, expected=expected)


def wanted(status: ProcessStatus, spec: ServiceSpec, now: float) -> Wanted:
    """What Consul should show for a process."""
    health = _health(status, spec)
    if isinstance(health, Health) and health.status == CRITICAL:
        if not spec.ttl_check:
            return None
        limit = spec.deregister_after_seconds
        if limit is not None and status.since and now - status.since >= limit:
            return None
    return health


def in_maintenance(status: ProcessStatus, spec: ServiceSpec) -> Wanted:
    """What Consul should show for a process whose instance is in maintenance."""
    health = _health(status, spec)
    if health is KEEP or (isinstance(health, Health) and health.status == PASSING):
        return health
    if not spec.ttl_check or (isinstance(health, Health) and not health.registers):
        # No check to carry the state; or a state that only passes through
        # (STOPPING, BACKOFF): the agent syncs a note to the catalog lazily
        # unless the status changes with it, so the next state's warning
        # should be the change the UI sees at once.
        return KEEP
    note = health.note if isinstance(health, Health) else _GONE_NOTES.get(status.state, status.state)
    return Health(WARNING, f"{note} (kept registered: in maintenance)")


_GONE_NOTES = {"FATAL": "FATAL: supervisord gave up starting it"}  # states that otherwise deregister


def _health(status: ProcessStatus, spec: ServiceSpec) -> Wanted:
    state = status.state
    if state == "RUNNING":
        return Health(PASSING, f"RUNNING pid {status.pid}")
    if state == "STARTING":
        return KEEP
    if state == "STOPPED":
        return None
    if state == "FATAL":
        if spec.on_fatal == "critical":
            return Health(CRITICAL, _GONE_NOTES["FATAL"])
        return None
    if state == "STOPPING":
        return Health(CRITICAL, f"STOPPING pid {status.pid}", registers=False)
    if state == "BACKOFF":
        return Health(CRITICAL, "BACKOFF: exited too quickly, supervisord is retrying", registers=False)
    if state == "EXITED":
        how = "expectedly" if status.expected else "unexpectedly"
        code = f" with exit status {status.exitstatus}" if status.exitstatus is not None else ""
        if status.exitstatus == -1:
            code = ": killed by a signal"  # supervisord's exit status for any death by signal
        return Health(CRITICAL, f"EXITED {how}{code}")
    return Health(CRITICAL, f"{state}: supervisord lost track of it")
