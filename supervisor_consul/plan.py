"""From desired and actual state to the few Consul operations that close the gap.

Pure: the sync loop reads supervisord and the agent, this module decides, the
agent adapter applies.  Nothing is sent that would change nothing, except the
TTL heartbeat, which is what keeps a passing check passing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import health
from .health import CRITICAL, KEEP, PASSING, Health, ProcessStatus, Wanted
from .instance import Registration
from .spec import ServiceSpec

HEARTBEATS_PER_TTL = 3  # a heartbeat every ttl/3: two can be lost before the check expires
# A failing check's note can churn (a crash loop's count, exit statuses): a new note
# with the same status waits this long after the last write.  Status changes never wait.
NOTE_EVERY = 1.0


@dataclass(frozen=True)
class Desired:
    registration: Registration
    wanted: Wanted
    maintained: Wanted = KEEP  # what to show instead while the instance is in maintenance

    @classmethod
    def of(cls, registration: Registration, status: ProcessStatus, spec: ServiceSpec, now: float) -> Desired:
        return cls(registration, health.wanted(status, spec, now), health.in_maintenance(status, spec, now))

    def shown(self, in_maintenance: bool) -> Wanted:
        return self.maintained if in_maintenance else self.wanted


@dataclass(frozen=True)
class Actual:
    """What the agent has for one of our instances."""

    service_id: str
    fingerprint: str
    check_ids: frozenset[str]
    status: str | None = None  # of the TTL check
    output: str | None = None
    updated_at: float = 0.0  # monotonic time of our last write to the TTL check; 0: unknown
    maintenance: str | None = None  # the reason, while Consul has the instance in maintenance
    scripts: dict[str, Written] = field(default_factory=dict)  # the TTL checks script checks report to


@dataclass(frozen=True)
class Written:
    """What a script check's TTL check shows."""

    status: str
    note: str
    at: float = 0.0  # monotonic time of our write; 0: read from the agent


@dataclass(frozen=True)
class Register:
    """Register, then set the TTL check to `health`.

    `initial` is the status the TTL check is registered with.  A new
    instance starts critical: the agent syncs a note to the catalog (and
    so to the UI) at once only when the status changes with it, and a new
    instance is not in DNS yet anyway.  A re-registered one keeps its
    status, so DNS does not drop it for a moment.
    """

    registration: Registration
    health: Health | None
    initial: str = CRITICAL
    # Our own checks the new definition drops: registering keeps every check the
    # instance has, since replacing them would also end a maintenance.
    stale_checks: frozenset[str] = frozenset()

    @property
    def service_id(self) -> str:
        return self.registration.service_id


@dataclass(frozen=True)
class UpdateTTL:
    service_id: str
    check_id: str
    health: Health
    service: str = field(default="", compare=False)  # the service name, for error messages


@dataclass(frozen=True)
class Deregister:
    service_id: str
    service: str = field(default="", compare=False)


Operation = Register | UpdateTTL | Deregister


def plan(desired: dict[str, Desired], actual: dict[str, Actual], now: float, complete: bool,
         results: dict[str, Health] | None = None) -> list[Operation]:
    """The operations that make `actual` what `desired` says.

    `now` is monotonic time, for heartbeats.  With `complete` false the
    listener does not know every process supervisord runs, so instances
    missing from `desired` are left alone rather than removed.  `results`:
    the latest result of each script check (by its TTL check's ID), written
    to instances registered as desired.
    """
    operations: list[Operation] = []
    for sid, want in desired.items():
        have = actual.get(sid)
        wanted = want.shown(have is not None and have.maintenance is not None)
        if wanted is KEEP:
            if have is not None and have.status is not None and want.registration.ttl_check_id:
                kept = Health(have.status, have.output or "")
                operations.extend(_heartbeat(want.registration, have, kept, now))
            continue
        if wanted is None:
            if have is not None:
                operations.append(Deregister(sid, want.registration.name))
            continue
        assert isinstance(wanted, Health)
        if have is None and not wanted.registers:
            continue  # a passing moment (STOPPING, BACKOFF) of something never registered
        if have is None or not _same_registration(want.registration, have):
            initial = (have.status if have is not None else None) or CRITICAL
            stale = frozenset(c for c in have.check_ids if c.startswith(f"{sid}:")) if have else frozenset()
            operations.append(Register(want.registration, wanted if want.registration.ttl_check_id else None,
                                       initial, stale - want.registration.check_ids))
        else:
            if want.registration.ttl_check_id:
                operations.extend(_heartbeat(want.registration, have, wanted, now))
            # Not beside a Register: the round sends in parallel, and the check must exist first.
            operations.extend(_script_results(want.registration, have, results or {}, now))
    if complete:
        operations.extend(Deregister(sid) for sid in actual if sid not in desired)
    return operations


def _same_registration(registration: Registration, have: Actual) -> bool:
    return have.fingerprint == registration.fingerprint and registration.check_ids <= have.check_ids


def _heartbeat(registration: Registration, have: Actual, health: Health, now: float) -> list[Operation]:
    assert registration.ttl_check_id is not None
    written = now - have.updated_at
    stale = written >= registration.ttl_seconds / HEARTBEATS_PER_TTL
    # A passing check's note is its pid, new only with a restart: not worth a wait.
    note_due = have.output != health.note and (health.status == PASSING or written >= NOTE_EVERY)
    if stale or have.status != health.status or note_due:
        return [UpdateTTL(registration.service_id, registration.ttl_check_id, health, registration.name)]
    return []


def _script_results(registration: Registration, have: Actual, results: dict[str, Health],
                    now: float) -> list[Operation]:
    """A script check's result when it is news, or when its TTL check needs
    refreshing; each run brings a new result, so the runs are its heartbeat."""
    operations: list[Operation] = []
    for check_id, ttl_seconds in registration.scripts:
        result = results.get(check_id)
        if result is None:
            continue
        written = have.scripts.get(check_id)
        if (written is None or (written.status, written.note) != (result.status, result.note)
                or now - written.at >= ttl_seconds / HEARTBEATS_PER_TTL):
            operations.append(UpdateTTL(registration.service_id, check_id, result, registration.name))
    return operations
