"""`supervisor-consul stop` and `restart`: take a process out of DNS before
supervisord stops it, and (restart) put it back only once Consul finds it passing.

Draining is Consul's own maintenance mode (maintenance.py): the instance
leaves DNS and the `?passing` health answers at once while supervisord still
runs it, so clients finish with it and stop picking it.  After the drain
supervisord stops it.  Then:

- stop: the maintenance is lifted and the listener told (SIGHUP), which then
  deregisters the stopped instance.  Lifted only after the stop, so the
  instance never re-enters DNS while it still runs.
- restart: the maintenance stays on while supervisord starts the process and
  until every other check of each of its instances passes for the new pid;
  only then is it lifted, so the instance re-enters DNS healthy, and without
  being deregistered and registered again in between.

A maintenance the operator set before (`maint on`) is the operator's: it is
neither replaced nor lifted.

The plan (which processes, in which batches, which steps) is pure; `run`
carries it out against supervisord and the agent.
"""

from __future__ import annotations

import getpass
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from supervisor.options import make_namespec
from supervisor.xmlrpc import Faults

from . import durations, instance, maintenance
from .agent import ConsulError
from .rpc import SupervisorError
from .snapshot import Snapshot
from .spec import ServiceSpec

DEFAULT_WAIT_PASSING = "60s"
POLL = 0.25  # seconds between reads of the agent while waiting for passing: local and cheap
RUNNING_STATES = ("RUNNING", "STARTING", "BACKOFF")  # what stopProcess can stop
STOPPED_STATES = ("STOPPED", "EXITED", "FATAL")
# supervisord always ends a stop (SIGKILL after stopwaitsecs); this only bounds a wedged one.
STOP_DEADLINE = 600.0
STATE_POLL = 0.1  # seconds; supervisord tells when a stop or start is done only through events
# startProcess's faults that mean the program itself did not come up (not that supervisord refused).
_DID_NOT_START = (Faults.SPAWN_ERROR, Faults.ABNORMAL_TERMINATION)

Say = Callable[[str], None]


class Control(Protocol):
    """supervisord, as far as stop and restart need it."""

    def all_process_info(self) -> list[dict[str, Any]]: ...

    def signal(self, namespec: str, signal: str) -> None: ...

    def stop(self, namespec: str, wait: bool = True) -> None: ...

    def start(self, namespec: str, wait: bool = True) -> None: ...


# -- the pure parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """One supervisord process and every service of it: they drain together."""

    namespec: str
    specs: tuple[ServiceSpec, ...]
    drain_seconds: float


def drain_of(specs: Sequence[ServiceSpec], override: float | None) -> float:
    """--drain wins; else the longest `drain` of the process's services, since one
    process stops for all of them."""
    if override is not None:
        return override
    return max((durations.seconds(spec.drain) for spec in specs), default=0.0)


def processes(specs: Sequence[ServiceSpec], override: float | None = None) -> list[Process]:
    """The units select() chose, one Process per namespec, in their order."""
    by_process: dict[str, list[ServiceSpec]] = {}
    for spec in specs:
        by_process.setdefault(spec.namespec, []).append(spec)
    return [Process(namespec, tuple(group), drain_of(group, override)) for namespec, group in by_process.items()]


def batches(items: Sequence[Process], rolling: bool, size: int = 1) -> list[list[Process]]:
    """All at once, or --rolling: SIZE at a time, the next batch only once this one passes."""
    if not items:
        return []
    if not rolling:
        return [list(items)]
    if size < 1:
        raise ValueError("a batch holds at least one process")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


DRAIN, STOP, START, PASSING, LIFT = "drain", "stop", "start", "passing", "lift"


def steps(restart: bool) -> tuple[str, ...]:
    """What happens to each batch, in order.  stop lifts the maintenance right after
    the stop (the listener then deregisters); restart keeps it until passing."""
    return (DRAIN, STOP, START, PASSING, LIFT) if restart else (DRAIN, STOP, LIFT)


def drain_line(process: Process) -> str:
    return f"{process.namespec}: draining {process.drain_seconds:g}s"


def drain_reason(user: str, host: str, restart: bool) -> str:
    return f"draining: {'restart' if restart else 'stop'} requested by {user}@{host}"


def passing(checks: list[dict[str, Any]], sid: str, spec: ServiceSpec, pid: int) -> bool:
    """Every check of the instance passes, but Consul's maintenance check (ours to lift).
    The process check must speak of the new pid: until the listener has written the
    restart, it may still show the old process passing."""
    theirs = [c for c in checks if c.get("CheckID") != instance.maintenance_check_id(sid)]
    if not theirs or any(c.get("Status") != "passing" for c in theirs):
        return False
    if not spec.ttl_check:
        return True
    ttl = next((c for c in theirs if c.get("CheckID") == instance.ttl_check_id(sid)), None)
    return ttl is not None and (ttl.get("Output") or "") == f"RUNNING pid {pid}"


# -- carrying it out --------------------------------------------------------------------


class _Failed(Exception):
    """One step could not be done; code 1 (the process) or 2 (supervisord or Consul)."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


@dataclass
class _Run:
    snapshot: Snapshot
    supervisor: Control
    say: Say
    reason: str
    wait_passing: float
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def sid(self, spec: ServiceSpec) -> str:
        return instance.instance_id(self.snapshot.owner, spec)

    def drain(self, batch: list[Process]) -> set[str]:
        """Into maintenance every registered instance not in it already; the ids we put there."""
        ours: set[str] = set()
        for process in batch:
            for spec in process.specs:
                sid = self.sid(spec)
                have = self.snapshot.owned.get(sid)
                if have is None or instance.maintenance_reason(sid, have[1]) is not None:
                    continue  # nothing in DNS to take out, or the operator's maintenance already does
                self.consul(lambda: self.snapshot.agent.maintenance(sid, True, self.reason, spec.name), spec.unit)
                ours.add(sid)
            self.say(drain_line(process))
        longest = max(p.drain_seconds for p in batch)
        if longest > 0:
            self.sleep(longest)
        return ours

    def stop(self, batch: list[Process], states: dict[str, str]) -> None:
        # Not stopProcess(wait=True): its answer would come only after stopwaitsecs, past the
        # XML-RPC timeout; asked without waiting, then watched.
        for process in batch:
            if states.get(process.namespec) in RUNNING_STATES:
                self.supervisord(lambda: self.supervisor.stop(process.namespec, False), process.namespec, "stop")
                deadline = self.clock() + STOP_DEADLINE
                while self.state(process.namespec) not in STOPPED_STATES:
                    if self.clock() >= deadline:
                        raise _Failed(f"{process.namespec}: still not stopped after {STOP_DEADLINE:g}s", 2)
                    self.sleep(STATE_POLL)
            self.say(f"{process.namespec}: stopped")

    def start(self, batch: list[Process]) -> None:
        # As stop: asked without waiting (startsecs may be longer than the XML-RPC timeout), then
        # watched until RUNNING, within --wait-passing.
        for process in batch:
            try:
                self.supervisor.start(process.namespec, False)
            except SupervisorError as exc:
                fault = exc.__cause__
                code = 1 if isinstance(fault, xmlrpc.client.Fault) and fault.faultCode in _DID_NOT_START else 2
                raise _Failed(f"{process.namespec}: did not start: {exc}", code) from exc
            deadline = self.clock() + self.wait_passing
            while (state := self.state(process.namespec)) != "RUNNING":
                if state in ("FATAL", "EXITED", "STOPPED"):
                    raise _Failed(f"{process.namespec}: did not start: {state}", 1)
                if self.clock() >= deadline:
                    raise _Failed(f"{process.namespec}: not RUNNING within {self.wait_passing:g}s ({state})", 1)
                self.sleep(STATE_POLL)
            self.say(f"{process.namespec}: started")

    def state(self, namespec: str) -> str:
        return self.infos().get(namespec, {}).get("statename", "UNKNOWN")

    def await_passing(self, batch: list[Process]) -> None:
        pids = {process.namespec: pid for process in batch
                if (pid := self.pids().get(process.namespec))}
        waiting = {p.namespec: p for p in batch}
        deadline = self.clock() + self.wait_passing
        while True:
            owned = self.consul(lambda: self.snapshot.agent.owned(self.snapshot.owner), "waiting for passing")
            for namespec, process in list(waiting.items()):
                if all(self.sid(spec) in owned and passing(owned[self.sid(spec)][1], self.sid(spec), spec,
                                                           pids.get(namespec, 0))
                       for spec in process.specs):
                    del waiting[namespec]
                    self.say(f"{namespec}: passing")
            if not waiting:
                return
            if self.clock() >= deadline:
                raise _Failed(f"{', '.join(waiting)}: not passing within {self.wait_passing:g}s", 1)
            self.sleep(POLL)

    def lift(self, batch: list[Process], ours: set[str]) -> None:
        lifted = False
        for process in batch:
            for spec in process.specs:
                if self.sid(spec) in ours:
                    self.consul(lambda: self.snapshot.agent.maintenance(self.sid(spec), False, "", spec.name),
                                spec.unit)
                    lifted = True
        if lifted:
            # The listener reconciles at once: a stopped instance leaves Consul now, not within 60 s.
            for line in maintenance._tell_listeners(self.snapshot):
                self.say(line)

    def pids(self) -> dict[str, int]:
        return {namespec: int(info.get("pid") or 0) for namespec, info in self.infos().items()}

    def infos(self) -> dict[str, dict[str, Any]]:
        # getAllProcessInfo: the one call supervisorctl's connection (the plugin) and ours share.
        infos = self.supervisord(self.supervisor.all_process_info, "supervisord", "getAllProcessInfo")
        return {make_namespec(i["group"], i["name"]): i for i in infos}

    def consul(self, call: Callable[[], Any], what: str) -> Any:
        try:
            return call()
        except ConsulError as exc:
            raise _Failed(f"{what}: {exc}", 2) from exc

    def supervisord(self, call: Callable[[], Any], what: str, verb: str) -> Any:
        try:
            return call()
        except SupervisorError as exc:
            raise _Failed(f"{what}: could not {verb}: {exc}", 2) from exc


def run(snapshot: Snapshot, supervisor: Control, names: Sequence[str], restart: bool, say: Say,
        drain: str | None = None, rolling: bool = False, batch: int = 1,
        wait_passing: str = DEFAULT_WAIT_PASSING, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic) -> int:
    """Stop (or restart) the processes NAMES mean, draining each first; progress through SAY.
    0 done, 1 a name means nothing or a process did not come back passing (the rest
    left untouched), 2 supervisord or Consul could not be asked or refused."""
    specs, unknown = maintenance.select(snapshot.configuration.services, names)
    for name in unknown:
        say(f"{name}: no process with a [consul:*] section has that name")
    if unknown:
        return 1  # nothing done: a typo must not stop the rest half-way
    todo = batches(processes(specs, None if drain is None else durations.seconds(drain)), rolling, batch)
    states = {make_namespec(i["group"], i["name"]): i.get("statename", "UNKNOWN") for i in snapshot.infos}
    doing = _Run(snapshot, supervisor, say, drain_reason(getpass.getuser(), snapshot.host, restart),
                 durations.seconds(wait_passing), sleep, clock)
    for number, current in enumerate(todo):
        ours: set[str] = set()
        try:
            ours = doing.drain(current)
            doing.stop(current, states)
            if restart:
                doing.start(current)
                doing.await_passing(current)
        except _Failed as exc:
            say(str(exc))
            _lift_anyway(doing, current, ours, say)
            left = [p.namespec for later in todo[number + 1:] for p in later]
            if left:
                say(f"stopped there; untouched: {', '.join(left)}")
            return exc.code
        try:
            doing.lift(current, ours)
        except _Failed as exc:
            say(str(exc))
            return exc.code
    return 0


def _lift_anyway(doing: _Run, batch: list[Process], ours: set[str], say: Say) -> None:
    """After a failure our maintenance goes too: the listener then shows the process as it
    is (critical, or deregistered when FATAL) instead of keeping it registered for ever."""
    try:
        doing.lift(batch, ours)
    except _Failed as exc:
        say(str(exc))
