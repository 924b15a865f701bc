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
| crash loop  | critical, note `restarting: N exits in 60 s; …` (below)   |

An instance critical for longer than `deregister_after` is deregistered, as
Consul itself would, so the listener does not register it again.  With
`check = none` there is no health to carry, so only RUNNING is registered.

In maintenance (Consul's own maintenance check, which keeps the instance out
of DNS) an instance stays registered whatever its process does, and every
state but RUNNING shows as `warning` instead of critical or deregistered:
Consul reaps an instance whose process check stays critical, and the
maintenance would go with it.  A dead listener still lets the TTL expire to
critical, so a host that is gone is cleaned up as always.

The flapping rule (a crash loop): a process that exited (EXITED, expectedly
or not) FLAP_EXITS (5) times within FLAP_WINDOW (60 s) shows critical, note
`restarting: N exits in 60 s; ` and its state's own note, in RUNNING, EXITED
and BACKOFF, until it has stayed RUNNING for FLAP_HOLD (30 s).  Without it a
program that dies at once and is respawned at once is RUNNING in nearly every
sample (supervisord reaps a child up to a second after it died), so DNS keeps
handing it out and every lap costs two writes.  Its deregister_after clock
runs from the exit that began the loop: Consul's own clock sees one unbroken
critical spell from there.  STOPPED and FATAL end a loop (supervisord stopped
restarting it, so a start from there is an operator's).  Only exit events add
to the history; a reconcile keeps it, but cannot tell how many exits it
missed.

An EXITED note gives the exit status only when supervisord's answer was
about that very exit (with_exitstatus); otherwise it says `exit status
unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from supervisor.options import decode_wait_status

from .events import PROCESS_STATES, ProcessStateChange
from .spec import OnFatal, ServiceSpec

PASSING: Final = "passing"
WARNING: Final = "warning"
CRITICAL: Final = "critical"
# supervisord's states whose `since` is the moment the process last died.
_DIED_STATES = ("EXITED", "BACKOFF", "FATAL")

# The flapping rule (see the module's docstring).  5 exits in 60 s is a lap
# of 12 s or less on average, far from a program that crashes now and then;
# supervisord's own respawn loop (startsecs=0) does 2 to 5 a second, and is
# caught within its first second or two.  The hold is more than twice that
# 12 s lap, so a loop at the threshold never passes between its exits.
FLAP_EXITS: Final = 5
FLAP_WINDOW: Final = 60.0  # seconds
FLAP_HOLD: Final = 30.0  # seconds RUNNING before a loop is over
# supervisord reaps a dead child within a pass of its main loop (a second at most): a pid it
# still calls RUNNING this long after the listener saw it die is alive after all.
REAP_WITHIN: Final = 5.0  # seconds
MAX_EXITS_KEPT: Final = 1000  # bounds the history of a loop faster than any supervisord
FLAPPING_NOTE: Final = "restarting: "  # how every crash-loop note begins
_LOOP_STATES = ("RUNNING", "EXITED", "BACKOFF")  # what a respawn loop passes through (STARTING keeps)
_LOOP_ENDS = ("STOPPED", "FATAL")  # supervisord stopped restarting it


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
    exitstatus: int | None = None  # EXITED; None: unknown
    since: float = 0.0  # wall-clock time it entered `state`
    # Wall-clock times of its exits within FLAP_WINDOW of the latest, oldest first.
    exits: tuple[float, ...] = ()
    flapping_since: float = 0.0  # the exit that began its crash loop; 0: in none
    seen_dead: bool = False  # EXITED as the exit watch saw it (died()), before supervisord's word on it


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
    if change.state == "EXITED" and previous is not None and previous.seen_dead and previous.pid == change.pid:
        # The exit the listener saw first (died()): supervisord's word on it, not a second exit.
        return replace(previous, expected=previous.expected if change.expected is None else change.expected,
                       seen_dead=False)
    exits, flapping_since = _history(previous, change.state, exited_at=now if change.state == "EXITED" else None)
    return ProcessStatus(change.state, pid=change.pid, expected=change.expected, since=now,
                         exits=exits, flapping_since=flapping_since)


def exitstatus_of(waitstatus: int) -> int:
    """supervisord's exit status for a wait status: -1 for any death by a signal."""
    return decode_wait_status(waitstatus)[0]


def died(previous: ProcessStatus, exitstatus: int | None, spec: ServiceSpec | None, now: float) -> ProcessStatus:
    """A RUNNING process the listener saw exit, before supervisord's event: EXITED as
    that event will say (expected when its exit status is in exitcodes), so the event
    then changes nothing.  The exit counts once, here."""
    expected = None if exitstatus is None or spec is None else exitstatus in spec.exitcodes
    exits, flapping_since = _history(previous, "EXITED", exited_at=now)
    return ProcessStatus("EXITED", pid=previous.pid, expected=expected, exitstatus=exitstatus, since=now,
                         exits=exits, flapping_since=flapping_since, seen_dead=True)


def from_info(previous: ProcessStatus | None, info: dict[str, Any], spec: ServiceSpec | None) -> ProcessStatus:
    """The status after reading supervisord's getProcessInfo for the process.

    What the events already told is kept when it agrees, so a reconcile
    does not rewrite notes or restart `deregister_after`'s clock, and the
    exit history is kept whatever the state.
    """
    # supervisord names only its own states; anything else is one it lost track of.
    state = info.get("statename", "UNKNOWN") if info.get("statename") in PROCESS_STATES else "UNKNOWN"
    if state == "STARTING":
        return previous or ProcessStatus("STARTING", since=info.get("now", 0))
    if state == "RUNNING" and previous is not None and previous.seen_dead and previous.pid == info.get("pid") \
            and info.get("now", 0) - previous.since < REAP_WITHIN:
        return previous  # seen dead by the listener (died()), not reaped by supervisord yet
    if previous is not None and previous.state == state and (state != "RUNNING" or previous.pid == info.get("pid")):
        if state == "EXITED" and previous.exitstatus is None:
            return with_exitstatus(previous, info, spec)
        return previous
    since = info.get("stop") if state in _DIED_STATES and info.get("stop") else info.get("now", 0)
    exits, flapping_since = _history(previous, state, exited_at=None)
    status = ProcessStatus(state, pid=info.get("pid", 0), since=float(since or 0), exits=exits,
                           flapping_since=flapping_since)
    return with_exitstatus(status, info, spec) if state == "EXITED" else status


def with_exitstatus(status: ProcessStatus, info: dict[str, Any], spec: ServiceSpec | None) -> ProcessStatus:
    """`status` (EXITED) with the exit status from supervisord's getProcessInfo
    answer `info`, if that answer is about the same exit; else unchanged."""
    exitstatus = info.get("exitstatus")
    if exitstatus is None or not _same_exit(status, info, spec):
        return status
    expected = status.expected
    if expected is None and spec is not None:
        expected = exitstatus in spec.exitcodes
    return replace(status, exitstatus=exitstatus, expected=expected)


def _same_exit(status: ProcessStatus, info: dict[str, Any], spec: ServiceSpec | None) -> bool:
    """Whether supervisord's answer tells the exit status of the exit `status` is about.

    supervisord 4.3 forgets the exit status when it spawns the process again
    (autorestart: right after sending EXITED, before it can answer us), and
    getProcessInfo then says 0; in EXITED it always has the status of its
    latest exit.  A stop time after `since` (when we heard of the exit) or
    an exit status that disagrees with the event's `expected` means a later
    exit, whose own event is still to come.
    """
    if info.get("statename") != "EXITED" or info.get("pid"):
        return False
    if float(info.get("stop") or 0) > status.since:
        return False
    return spec is None or status.expected is None or (info["exitstatus"] in spec.exitcodes) == status.expected


def _history(previous: ProcessStatus | None, state: str, exited_at: float | None) -> tuple[tuple[float, ...], float]:
    """The exit history and crash-loop start after entering `state`; `exited_at`:
    the time of the exit that brought it there, if one did."""
    if state in _LOOP_ENDS:
        return (), 0.0
    earlier = previous.exits if previous is not None else ()
    if exited_at is None:
        return earlier, previous.flapping_since if previous is not None else 0.0
    exits = (*(at for at in earlier if exited_at - at < FLAP_WINDOW), exited_at)[-MAX_EXITS_KEPT:]
    if len(exits) < FLAP_EXITS:
        return exits, 0.0
    if previous is not None and flapping(previous, exited_at):
        return exits, previous.flapping_since  # the same loop goes on
    return exits, exited_at  # a new loop: until now the check was passing


def flapping(status: ProcessStatus, now: float) -> bool:
    """In a crash loop at `now`: the flapping rule shows it critical."""
    if not status.flapping_since or status.state not in _LOOP_STATES:
        return False
    return status.state != "RUNNING" or now - status.since < FLAP_HOLD


def wanted(status: ProcessStatus, spec: ServiceSpec, now: float) -> Wanted:
    """What Consul should show for a process (`now`: wall-clock time)."""
    health = _health(status, spec, now)
    if isinstance(health, Health) and health.status == CRITICAL:
        if not spec.ttl_check:
            return None
        limit = spec.deregister_after_seconds
        critical_since = status.flapping_since if flapping(status, now) else status.since
        if limit is not None and critical_since and now - critical_since >= limit:
            return None
    return health


def in_maintenance(status: ProcessStatus, spec: ServiceSpec, now: float | None = None) -> Wanted:
    """What Consul should show for a process whose instance is in maintenance.
    `now` (wall-clock time) tells whether a crash loop's hold is over; without
    it the status is judged as of its last change (`since`)."""
    health = _health(status, spec, status.since if now is None else now)
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


def _health(status: ProcessStatus, spec: ServiceSpec, now: float) -> Wanted:
    health = _state_health(status, spec)
    if not flapping(status, now):
        return health
    assert isinstance(health, Health), status  # every state a loop passes through has one
    exits = f"{len(status.exits)}{'+' if len(status.exits) >= MAX_EXITS_KEPT else ''}"
    note = f"RUNNING pid {status.pid}, passing once up {FLAP_HOLD:g} s" if status.state == "RUNNING" else health.note
    return Health(CRITICAL, f"{FLAPPING_NOTE}{exits} exits in {FLAP_WINDOW:g} s; {note}", registers=health.registers)


def _state_health(status: ProcessStatus, spec: ServiceSpec) -> Wanted:
    match status.state:
        case "RUNNING":
            return Health(PASSING, f"RUNNING pid {status.pid}")
        case "STARTING":
            return KEEP
        case "STOPPED":
            return None
        case "FATAL":
            match spec.on_fatal:
                case OnFatal.CRITICAL:
                    return Health(CRITICAL, _GONE_NOTES["FATAL"])
                case OnFatal.DEREGISTER:
                    return None
        case "STOPPING":
            return Health(CRITICAL, f"STOPPING pid {status.pid}", registers=False)
        case "BACKOFF":
            return Health(CRITICAL, "BACKOFF: exited too quickly, supervisord is retrying", registers=False)
        case "EXITED":
            how = "expectedly" if status.expected else "unexpectedly"
            code = (f" with exit status {status.exitstatus}" if status.exitstatus is not None
                    else ", exit status unknown")
            if status.exitstatus == -1:
                code = ": killed by a signal"  # supervisord's exit status for any death by signal
            return Health(CRITICAL, f"EXITED {how}{code}")
        case "UNKNOWN":
            return Health(CRITICAL, "UNKNOWN: supervisord lost track of it")
    raise ValueError(f"not a supervisord state: {status.state!r}, nor on_fatal {spec.on_fatal!r}")
