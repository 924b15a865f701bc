"""`supervisor-consul maint`: Consul's maintenance mode for a program's instances.

The maintenance lives in the agent as Consul's own maintenance check, the one
`consul maint -service=ID` sets: it takes the instance out of DNS, the UI
shows it with its reason, and it survives the listener and the agent
restarting.  The listener reads it like everything else and plans around it
(health.in_maintenance): an instance in maintenance stays registered while
supervisord stops, restarts or reloads it, until maintenance is turned off.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Sequence

from supervisor.options import make_namespec

from . import instance
from .agent import ConsulError
from .rpc import SupervisorError
from .snapshot import Snapshot
from .spec import ServiceSpec


def select(services: dict[str, ServiceSpec], names: Sequence[str]) -> tuple[list[ServiceSpec], list[str]]:
    """The processes NAMES mean, in supervisorctl's words: `group:name` one process,
    `group:*` or `group` (a program's name) every process of it, `all` all; and the
    names that mean none."""
    chosen: dict[str, ServiceSpec] = {}
    unknown = []
    for name in names:
        group = name[:-2] if name.endswith(":*") else name
        matches = [spec for spec in services.values()
                   if name in ("all", spec.namespec) or spec.group == group]
        if not matches:
            unknown.append(name)
        chosen.update((spec.unit, spec) for spec in matches)  # every service of a process, further ones too
    return sorted(chosen.values(), key=lambda spec: spec.unit), unknown


def default_reason(user: str, host: str, now: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))
    return f"supervisor-consul maint by {user}@{host} at {when}"


def turn(snapshot: Snapshot, names: Sequence[str], enable: bool, reason: str | None) -> tuple[list[str], int]:
    """Put the instances NAMES mean into maintenance (or out of it), with REASON or
    else default_reason(), then ask the listener to reconcile, so that a stopped program leaves Consul at once when
    its maintenance ends.  The lines to print, and the exit status: 0 done, 1
    when a name means nothing or a process has no instance to put into
    maintenance, 2 when the agent refused."""
    reason = reason or default_reason(getpass.getuser(), snapshot.host, time.time())
    specs, unknown = select(snapshot.configuration.services, names)
    lines = [f"{name}: no process with a [consul:*] section has that name" for name in unknown]
    code = 1 if unknown else 0
    states = {make_namespec(info["group"], info["name"]): info.get("statename", "UNKNOWN") for info in snapshot.infos}
    changed = False
    for spec in specs:
        sid = instance.instance_id(snapshot.owner, spec)
        have = snapshot.owned.get(sid)
        current = instance.maintenance_reason(sid, have[1]) if have is not None else None
        if have is None:
            if enable:
                code = max(code, 1)
            lines.append(f"{spec.unit}: not registered in Consul ({states.get(spec.namespec, 'not running')})"
                         + ("; start it first, then put it into maintenance" if enable else ""))
        elif enable and current is not None:
            lines.append(f"{spec.unit}: already in maintenance: {current}")
        elif not enable and current is None:
            lines.append(f"{spec.unit}: not in maintenance")
        else:
            try:
                snapshot.agent.maintenance(sid, enable, reason, spec.name)
            except ConsulError as exc:
                lines.append(f"{spec.unit}: {exc}")
                code = 2
                continue
            changed = True
            lines.append(f"{spec.unit}: in maintenance ({sid}): {reason}" if enable
                         else f"{spec.unit}: out of maintenance ({sid})")
    if changed:
        lines.extend(_tell_listeners(snapshot))
    return lines, code


def _tell_listeners(snapshot: Snapshot) -> list[str]:
    """SIGHUP makes a listener reconcile now rather than within 60 s."""
    listeners = snapshot.configuration.listeners
    if not listeners:
        return [f"no [eventlistener:*] in {snapshot.configuration.configfile} runs `supervisor-consul listen`; "
                f"nothing else was told"]
    lines = []
    for namespec in listeners:
        try:
            snapshot.supervisor.signal(namespec, "HUP")
        except SupervisorError as exc:
            lines.append(f"the listener {namespec} was not told ({exc}); it reconciles within 60 s of running")
    return lines
