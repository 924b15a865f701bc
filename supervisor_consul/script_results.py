"""Which script checks run now, and their latest results, for the sync loop.

A script check (`check.NAME = exec COMMAND`) runs while its process is
RUNNING and its instance is registered; its results come back as hints
through the inbox, so the sync loop writes them in its own rounds (plan.py
decides when).  The runner itself (script_check.py) starts with the first
script wanted: a listener without script checks has no thread for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import durations, instance
from .health import Health, ProcessStatus
from .instance import Registration
from .plan import Actual
from .script_check import Script, Scripts
from .spec import CheckKind, CheckSpec, ServiceSpec


@dataclass(frozen=True)
class ScriptResult:
    """A run of a script check ended: news for the sync loop, posted like a hint."""

    check_id: str
    health: Health


class ScriptChecks:
    def __init__(self, post: Callable[[ScriptResult], None],
                 runner: Callable[[Callable[[str, Health], None]], Scripts] = Scripts) -> None:
        self._post = post
        self._runner_factory = runner
        self._runner: Scripts | None = None
        self._wanted: dict[str, Script] = {}
        self.results: dict[str, Health] = {}  # by TTL check ID

    def take(self, result: ScriptResult) -> None:
        # A result of a run since stopped is old news: the next run's will come.
        if result.check_id in self._wanted:
            self.results[result.check_id] = result.health

    def want(self, specs: dict[str, ServiceSpec], registrations: dict[str, Registration],
             statuses: dict[str, ProcessStatus], actual: dict[str, Actual] | None) -> None:
        """Run exactly the script checks of RUNNING processes whose instances are registered."""
        wanted: dict[str, Script] = {}
        for unit, spec in specs.items():
            registration = registrations.get(unit)
            status = statuses.get(spec.namespec)
            if registration is None or status is None or status.state != "RUNNING" \
                    or actual is None or registration.service_id not in actual:
                continue
            for check in spec.checks:
                if check.kind is CheckKind.SCRIPT:
                    script = script_of(instance.check_id(registration.service_id, check), check, spec, status)
                    wanted[script.check_id] = script
        if wanted == self._wanted:
            return
        self._wanted = wanted
        self.results = {cid: result for cid, result in self.results.items() if cid in wanted}
        if self._runner is None and wanted:
            self._runner = self._runner_factory(lambda cid, health: self._post(ScriptResult(cid, health)))
        if self._runner is not None:
            self._runner.want(wanted.values())

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


def script_of(check_id: str, check: CheckSpec, spec: ServiceSpec, status: ProcessStatus) -> Script:
    """The run of one script check for one process: in the program's environment=
    and directory=, told which process it checks.  The pid is part of it, so a
    restarted process has its script run at once, not an interval later."""
    told = (("SUPERVISOR_GROUP_NAME", spec.group), ("SUPERVISOR_PROCESS_NAME", spec.process),
            ("SUPERVISOR_PROCESS_PID", str(status.pid)))
    return Script(check_id, check.command, durations.seconds(check.interval), durations.seconds(check.timeout),
                  (*spec.environment, *told), spec.directory)
