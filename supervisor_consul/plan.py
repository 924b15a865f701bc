"""From desired and actual state to the few Consul operations that close the gap.

Pure: the sync loop reads supervisord and the agent, this module decides, the
agent adapter applies.  Nothing is sent that would change nothing, except the
TTL heartbeat, which is what keeps a passing check passing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from . import claim, durations, health
from .config import Configuration, ServiceSpec
from .health import CRITICAL, KEEP, PASSING, Health, ProcessStatus, Wanted

ID_PREFIX = "supervisord"
OWNER_META = "supervisor-consul-owner"
SPEC_META = "supervisor-consul-spec"
FINGERPRINT_VERSION = "1"  # bump when the meaning of a registration changes
MAINTENANCE_PREFIX = "_service_maintenance:"  # Consul's, for a service's maintenance check
HEARTBEATS_PER_TTL = 3  # a heartbeat every ttl/3: two can be lost before the check expires
# A failing check's note can churn (a crash loop's count, exit statuses): a new note
# with the same status waits this long after the last write.  Status changes never wait.
NOTE_EVERY = 1.0


def owner_id(host: str, configfile: str, identifier: str) -> str:
    """This supervisord's identity: stable across restarts, distinct per config on a host."""
    digest = hashlib.sha256(f"{host}\0{configfile}\0{identifier}".encode()).hexdigest()
    return digest[:12]


def owner_of(host: str, configuration: Configuration) -> str:
    """The owner id of the supervisord a configuration is read for.  The path is
    taken as given, symlinks kept: a release switch (`current.conf` pointed at
    another release) is the same supervisord, not a new one."""
    return owner_id(host, os.path.normpath(configuration.configfile), configuration.identifier)


def legacy_owner_of(host: str, configuration: Configuration) -> str:
    """The owner id earlier builds gave the same supervisord (the path with its
    symlinks resolved): its instances are ours to replace."""
    return owner_id(host, os.path.realpath(configuration.configfile), configuration.identifier)


def service_id(owner: str, namespec: str) -> str:
    return f"{ID_PREFIX}:{owner}:{namespec}"


def claim_id(owner: str) -> str:
    """The claim of an owner id (see claim.py): outside `service_id`'s range, so
    never taken for one of the instances."""
    return f"{ID_PREFIX}:{owner}"


def claim_check_id(owner: str) -> str:
    return f"{claim_id(owner)}:alive"


def ttl_check_id(service_id: str) -> str:
    """The process-state check of an instance."""
    return f"{service_id}:process"


def maintenance_check_id(service_id: str) -> str:
    """The check Consul adds for its maintenance mode (`consul maint -service`)."""
    return f"{MAINTENANCE_PREFIX}{service_id}"


def maintenance_reason(service_id: str, checks: list[dict[str, Any]]) -> str | None:
    """Why an instance is in maintenance (Consul keeps the reason in the check's
    Notes), or None when it is not."""
    check = next((c for c in checks if c.get("CheckID") == maintenance_check_id(service_id)), None)
    return None if check is None else (check.get("Notes") or "").strip()


def is_owned(service: dict[str, Any], owner: str) -> bool:
    """Ours only if both the ID and the meta say so: never touch anyone else's."""
    return (str(service.get("ID", "")).startswith(f"{ID_PREFIX}:{owner}:")
            and (service.get("Meta") or {}).get(OWNER_META) == owner)


@dataclass(frozen=True)
class Registration:
    """One instance as registered in Consul, without its health."""

    service_id: str
    name: str
    port: int
    address: str
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]  # with our own keys, SPEC_META excluded
    checks: tuple[tuple[tuple[str, Any], ...], ...]  # Consul check definitions, Status excluded
    ttl_check_id: str | None
    ttl_seconds: float
    fingerprint: str = field(default="", compare=False)

    @property
    def check_ids(self) -> frozenset[str]:
        return frozenset(dict(check)["CheckID"] for check in self.checks)

    def payload(self, initial: str | None) -> dict[str, Any]:
        """The body of PUT /v1/agent/service/register, the TTL check in status `initial`."""
        checks = []
        for check in self.checks:
            definition = dict(check)
            if initial is not None and definition["CheckID"] == self.ttl_check_id:
                definition["Status"] = initial
            checks.append(definition)
        return {
            "ID": self.service_id, "Name": self.name, "Port": self.port, "Address": self.address,
            "Tags": list(self.tags), "Meta": {**dict(self.meta), SPEC_META: self.fingerprint},
            "Checks": checks,
        }


def registration(spec: ServiceSpec, owner: str, host: str, claimed: bool = False) -> Registration:
    """`claimed`: this listener holds its owner's claim, so an instance with no
    check of its own can vouch for its liveness with an alias of it."""
    sid = service_id(owner, spec.namespec)
    meta = (*spec.meta,
            ("external-source", "supervisord"),
            (OWNER_META, owner),
            ("supervisord-group", spec.group),
            ("supervisord-process", spec.process),
            ("supervisord-host", host))
    checks: list[tuple[tuple[str, Any], ...]] = []
    process_check = None
    if spec.ttl_check:
        process_check = ttl_check_id(sid)
        ttl = {"CheckID": process_check, "Name": f"supervisord process {spec.namespec}", "TTL": spec.ttl}
        if spec.deregister_after is not None:
            ttl["DeregisterCriticalServiceAfter"] = spec.deregister_after
        checks.append(tuple(ttl.items()))
    if spec.check is not None:
        kind = spec.check.kind
        checks.append((("CheckID", f"{sid}:{kind}"), ("Name", f"{kind} {spec.check.target}"),
                       ("HTTP" if kind == "http" else "TCP", spec.check.target),
                       ("Interval", spec.check.interval), ("Timeout", spec.check.timeout)))
    if not spec.ttl_check and claimed:
        # Critical once the claim's heartbeat stops, and reaped after deregister_after, as a TTL check would be.
        alias = {"CheckID": f"{sid}:supervisord", "Name": f"supervisord and its listener ({owner})",
                 "AliasService": claim_id(owner)}
        if spec.deregister_after is not None:
            alias["DeregisterCriticalServiceAfter"] = spec.deregister_after
        checks.append(tuple(alias.items()))
    fields = dict(service_id=sid, name=spec.name, port=spec.port, address=spec.address,
                  tags=spec.tags, meta=meta, checks=tuple(checks), ttl_check_id=process_check,
                  ttl_seconds=spec.ttl_seconds if spec.ttl_check else 0.0)
    return Registration(**fields, fingerprint=_fingerprint(fields))


def _fingerprint(fields: dict[str, Any]) -> str:
    encoded = json.dumps({k: v for k, v in fields.items() if k != "ttl_seconds"}, sort_keys=True)
    return hashlib.sha256(f"{FINGERPRINT_VERSION}\0{encoded}".encode()).hexdigest()[:16]


def claim_registration(owner: str, host: str, configuration: Configuration, incarnation: claim.Incarnation,
                       ttl: str, deregister_after: str | None) -> Registration:
    """The claim of an owner id: an instance of the service `supervisord`, which
    `check = none` instances alias.  Its deregister_after comes after theirs,
    since an alias of a service that is gone turns passing again for a while."""
    cid = claim_id(owner)
    meta = (("external-source", "supervisord"), (OWNER_META, owner), ("supervisord-host", host),
            ("supervisord-config", os.path.normpath(configuration.configfile)),
            ("supervisord-identifier", configuration.identifier),
            ("supervisord-pid", str(incarnation.pid)), (claim.INCARNATION_META, incarnation.encode()))
    ttl_check = {"CheckID": claim_check_id(owner), "Name": f"supervisord pid {incarnation.pid} and its listener",
                 "TTL": ttl}
    if deregister_after is not None:
        ttl_check["DeregisterCriticalServiceAfter"] = deregister_after
    fields = dict(service_id=cid, name=claim.SERVICE, port=0, address="", tags=(), meta=meta,
                  checks=(tuple(ttl_check.items()),), ttl_check_id=claim_check_id(owner),
                  ttl_seconds=durations.seconds(ttl))
    return Registration(**fields, fingerprint=_fingerprint(fields))


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


def plan(desired: dict[str, Desired], actual: dict[str, Actual], now: float, complete: bool) -> list[Operation]:
    """The operations that make `actual` what `desired` says.

    `now` is monotonic time, for heartbeats.  With `complete` false the
    listener does not know every process supervisord runs, so instances
    missing from `desired` are left alone rather than removed.
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
        elif want.registration.ttl_check_id:
            operations.extend(_heartbeat(want.registration, have, wanted, now))
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
