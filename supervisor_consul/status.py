"""`supervisor-consul status`: each process with a [consul:*] section beside
what Consul shows for it, and whether the two disagree (drift).

`instances()` is pure: it takes what supervisord and the agent said and
applies the same state table the listener converges to (health.wanted), so
"in step" here means exactly what the listener would leave alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from supervisor.options import make_namespec

from . import health, instance, plan
from .logtext import escaped
from .snapshot import Snapshot
from .spec import ServiceSpec


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    note: str


@dataclass(frozen=True)
class Instance:
    namespec: str  # "-" for an instance of ours no process accounts for
    state: str  # supervisord's state, "-" for an orphan
    service: str
    service_id: str
    address: str  # address:port as registered, or as it will be
    checks: tuple[Check, ...] = ()
    drift: str = ""  # empty when Consul agrees with supervisord
    maintenance: str | None = None  # the reason, while the instance is in Consul's maintenance mode


def instances(services: dict[str, ServiceSpec], infos: list[dict[str, Any]],
              owned: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]], owner: str, host: str,
              now: float, claimed: bool) -> list[Instance]:
    """One row per configured process, then one per owned instance nothing accounts for.
    `claimed`: the owner's claim is on the agent (its instances then alias it)."""
    rows = []
    left = dict(owned)
    by_process: dict[str, list[ServiceSpec]] = {}
    for spec in services.values():
        by_process.setdefault(spec.namespec, []).append(spec)
    for info in infos:
        namespec = make_namespec(info["group"], info["name"])
        for spec in by_process.get(namespec, ()):
            registration = instance.of(spec, owner, host, claimed)
            have = left.pop(registration.service_id, None)
            maintained = have is not None and instance.maintenance_reason(registration.service_id, have[1]) is not None
            want = plan.Desired.of(registration, health.from_info(None, info, spec), spec, now).shown(maintained)
            rows.append(_row(namespec, info["statename"], registration, have, _drift(registration, have, want)))
    for sid, (service, checks) in sorted(left.items()):
        rows.append(Instance("-", "-", service.get("Service", ""), sid, _address(service),
                             _checks(checks), "registered, but supervisord runs no such process",
                             instance.maintenance_reason(sid, checks)))
    return rows


def _drift(registration: instance.Registration, have: tuple[dict[str, Any], list[dict[str, Any]]] | None,
           want: health.Wanted) -> str:
    if want is health.KEEP:
        return ""  # STARTING: the listener leaves Consul as it is, so is Consul right by definition
    if want is None:
        return "registered, should not be" if have is not None else ""
    assert isinstance(want, health.Health)
    if have is None:
        return "not registered" if want.registers else ""
    service, checks = have
    if (service.get("Meta") or {}).get(instance.SPEC_META) != registration.fingerprint:
        return "registered with another definition (the configuration changed)"
    ttl = next((c for c in checks if c.get("CheckID") == registration.ttl_check_id), None)
    if ttl is not None and _crash_loop(ttl):
        # The listener counts a loop's exits, which one reading of supervisord cannot:
        # critical until it has stayed up FLAP_HOLD is in step by its rule.
        return ""
    if registration.ttl_check_id and (ttl is None or ttl.get("Status") != want.status):
        return f"process check is {ttl.get('Status') if ttl else 'missing'}, should be {want.status}"
    return ""


def _crash_loop(check: dict[str, Any]) -> bool:
    return check.get("Status") == health.CRITICAL and (check.get("Output") or "").startswith(health.FLAPPING_NOTE)


def _row(namespec: str, state: str, registration: instance.Registration,
         have: tuple[dict[str, Any], list[dict[str, Any]]] | None, drift: str) -> Instance:
    if have is None:
        address = f"{registration.address or '<node>'}:{registration.port or '-'}"
        return Instance(namespec, state, registration.name, registration.service_id, address, (), drift)
    service, checks = have
    return Instance(namespec, state, registration.name, registration.service_id, _address(service),
                    _checks(checks), drift, instance.maintenance_reason(registration.service_id, checks))


def _address(service: dict[str, Any]) -> str:
    # No Address: Consul answers with the node's.
    return f"{service.get('Address') or '<node>'}:{service.get('Port') or '-'}"


def _checks(checks: list[dict[str, Any]]) -> tuple[Check, ...]:
    # A maintenance check has no output; its reason is in Notes.
    return tuple(Check(c.get("Name", c.get("CheckID", "")), c.get("Status", ""),
                       (c.get("Output") or c.get("Notes") or "").strip())
                 for c in sorted(checks, key=lambda c: c.get("CheckID", "")))


def report(snapshot: Snapshot, as_json: bool, now: float) -> tuple[list[str], int]:
    """What `status` prints, and its exit status: 0 in step, 1 on drift."""
    rows = instances(snapshot.configuration.services, snapshot.infos, snapshot.owned, snapshot.owner,
                     snapshot.host, now, snapshot.claimed)
    return [as_json_text(rows)] if as_json else text(rows), 1 if any(row.drift for row in rows) else 0


def text(rows: list[Instance]) -> list[str]:
    """The human view: one line per process, its checks indented below, drift marked."""
    if not rows:
        return ["no process has a [consul:*] section"]
    width = max(len(r.namespec) for r in rows)
    lines = []
    for r in rows:
        mark = (f"  MAINTENANCE: {r.maintenance}" if r.maintenance is not None else "") + \
            (f"  DRIFT: {r.drift}" if r.drift else "")
        lines.append(escaped(f"{r.namespec:<{width}}  {r.state:<9} {r.service}  {r.service_id}  {r.address}{mark}"))
        # A check's note is what the checked program answered: never raw to a terminal.
        lines.extend(escaped(f"{'':<{width}}    {c.status:<8} {c.name}: {_one_line(c.note)}") for c in r.checks)
    return lines


def _one_line(note: str, limit: int = 100) -> str:
    """An HTTP check's note carries the response body; the terminal view keeps its first line."""
    first = note.splitlines()[0] if note else ""
    return first if len(first) <= limit and first == note else first[:limit].rstrip() + " …"


def as_json_text(rows: list[Instance]) -> str:
    return json.dumps([{**asdict(r), "in_step": not r.drift} for r in rows], indent=1)

