"""Consul health driving supervisord: `check.NAME.restart_after = N`.

After N critical results of an app check in a row, the listener has
supervisord restart the process, as Nomad's check_restart and superlance's
httpok do.  A result is one look per check interval: the listener's own
result for a script check, the agent's status for a check Consul runs (the
listener cannot see Consul's single runs, so it looks once an interval).

Never within `restart_grace` (default interval × restart_after) of the
process starting, so a slow starter is not restarted before it could pass;
at most one restart per grace; never for the process-state check, and never
while the instance is in maintenance (which is also how a drain shows).
Pure: the sync loop looks, this module counts and says when to restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import durations
from .health import CRITICAL
from .spec import CheckSpec


@dataclass
class _Count:
    critical: int = 0  # critical looks in a row
    looked_at: float = 0.0  # wall-clock time of the last look that counted
    restarted_at: float = 0.0


@dataclass(frozen=True)
class Restart:
    """Why the listener restarts a process: shown in its process-state check's note."""

    namespec: str
    check: str
    times: int

    @property
    def note(self) -> str:
        return f"restarted: check {self.check} critical {self.times} times"


class Restarts:
    def __init__(self) -> None:
        self._counts: dict[str, _Count] = {}  # by check ID

    def due(self, check_id: str, check: CheckSpec, now: float) -> bool:
        """Whether one check interval has passed since the last look that counted."""
        count = self._counts.get(check_id)
        return count is None or now - count.looked_at >= durations.seconds(check.interval)

    def look(self, check_id: str, check: CheckSpec, namespec: str, status: str | None, now: float,
             running_since: float, in_maintenance: bool) -> Restart | None:
        """Count one look at a check (status None: not known yet) of a process RUNNING
        since `running_since` (wall-clock); a Restart when it is time for one."""
        if not check.restart_after or not self.due(check_id, check, now):
            return None
        count = self._counts.setdefault(check_id, _Count())
        count.looked_at = now
        if in_maintenance or status is None or status != CRITICAL:
            count.critical = 0
            return None
        count.critical += 1
        grace = check.restart_grace_seconds
        if count.critical < check.restart_after or now - running_since < grace or now - count.restarted_at < grace:
            return None
        count.critical, count.restarted_at = 0, now
        return Restart(namespec, check.name, check.restart_after)

    def keep_only(self, check_ids: set[str]) -> None:
        """Forget checks no longer configured."""
        self._counts = {cid: count for cid, count in self._counts.items() if cid in check_ids}
