"""The sync loop: keeps Consul in step with supervisord, in its own thread.

It holds the desired state (supervisord's processes and the parsed
configuration) and what the agent has; each round it folds in the hints the
event loop posted, plans, and applies only the differences.  A full
reconcile - re-read the configuration, getAllProcessInfo, read the agent -
runs at start, after PROCESS_GROUP events, on SIGHUP, every 60 seconds, and
with backoff until the agent answers after an outage.  Nothing depends on
remembering what failed: the next reconcile starts from fresh reads.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, assert_never

from supervisor.options import make_namespec

from . import acl_token, claim, config, health, instance, plan, sending
from .agent import REFUSED_RETRY, Agent, ConsulError
from .check_restart import Restart, Restarts
from .conditions import Conditions
from .config import Configuration
from .events import GroupsChanged, Hint, ProcessStateChange, SupervisorStateChange
from .exit_watch import ExitWatch, ProcessExit
from .health import ProcessStatus
from .holder import Holder, Standing
from .inbox import Batch, Inbox
from .instance import Registration
from .metrics import Metrics, Result
from .plan import Actual, Deregister, Desired, Operation, Register, UpdateTTL, Written
from .rpc import Supervisor, SupervisorError, Waker, for_configuration
from .script_results import ScriptChecks, ScriptResult
from .spec import CheckKind, CheckSpec, ServiceSpec
from .waking import RunningWakeup

RECONCILE_EVERY = 60.0
# The agent is local and reading it is cheap: probe often, so an agent that
# answers again is reconciled within seconds.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 5.0
IDLE_WAKEUP = 1.0  # the loop looks at least this often
HEARTBEAT_SLACK = 0.05  # seconds past the first due heartbeat: those due just after go in the same round
CLAIM_REAPED_AFTER_INSTANCES = 60  # seconds: Consul's reaper runs every 30 s
# A heartbeat is due at a third of the ttl: at two thirds one has been missed, at one the check expires.
LAG_WARNING, LAG_CLEARED = 2 / 3, 1 / 2
MAINTENANCE_POLL = 5.0  # how often to look for a lifted maintenance on instances without a TTL check

log = logging.getLogger("supervisor_consul")


class NotReady(Exception):
    """The listener cannot start: one line saying what to fix."""


class Sync:
    def __init__(self, agent: Agent, configfile: str, host: str, inbox: Inbox,
                 read_config: Callable[[str], Configuration] = config.read,
                 supervisor_factory: Callable[[Configuration], Supervisor] = lambda c: for_configuration(c, "listener"),
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 waker: Callable[[Supervisor], None] | None = None,
                 incarnation: claim.Incarnation | None = None, workers: int = sending.WORKERS,
                 exit_watch: ExitWatch | None = None, background_pulse: bool = True,
                 metrics: Metrics | None = None, metrics_endpoint: tuple[str, int] | None = None) -> None:
        """`metrics`: updated as the loop goes, served or not (cli.py); `metrics_endpoint`:
        (address, port) the claim carries, so Prometheus finds the metrics through Consul."""
        self.agent = agent
        self.metrics = metrics or Metrics()
        self.configfile = configfile
        self.host = host
        self.inbox = inbox
        self._read_config = read_config
        self._supervisor_factory = supervisor_factory
        self._wall, self._monotonic = wall, monotonic
        self.configuration: Configuration | None = None
        self.owner = ""
        self.supervisor: Supervisor | None = None
        self.registrations: dict[str, Registration] = {}  # by ServiceSpec.unit
        self.statuses: dict[str, ProcessStatus] = {}  # by namespec
        self.complete = False  # statuses cover every process supervisord runs
        self.supervisord_stopping = False  # SUPERVISOR_STATE_CHANGE_STOPPING seen: shutdown or reload
        self.actual: dict[str, Actual] | None = None  # None: unknown, read it before acting
        self.conditions = Conditions()
        self._logged_problems: set[config.Problem] = set()
        self._reconcile_at = 0.0
        self._backoff = BACKOFF_FIRST
        self._failed_rounds = 0  # in a row, each met with a bug
        self._retry_at: dict[str, float] = {}  # service ID -> when to retry a refused operation
        self._maintenance_read_at = 0.0  # monotonic time the agent's maintenance checks were last read
        self._heartbeat_due = math.inf  # monotonic time the first heartbeat falls due
        self._timed = True  # some desired state changes with the clock alone (desired() says)
        self._maintained = True  # one of ours is in maintenance, to be looked at again (converge() says)
        self._waker = waker or Waker()
        self._wakeup = RunningWakeup(self._waker, monotonic)  # RUNNING without supervisord's extra second
        self._legacy_owners: tuple[str, ...] = ()  # ids earlier versions gave this supervisord
        self._config_stamp: tuple[tuple[str, int, int, int], ...] = ()  # of the files the configuration came from
        self._read_config_anyway = True  # HUP, update, reload: read it whatever the files' stamps say
        # The listener's parent is the supervisord it serves.
        keeper = claim.Keeper(incarnation or claim.incarnation_of(os.getppid()))
        self.holder = Holder(agent, keeper, self.conditions.report, self.conditions.clear, monotonic,
                             background_pulse, agent_forgot=lambda: self.inbox.request_reconcile(),
                             metrics_endpoint=metrics_endpoint)
        self._sender = sending.Sender(self._send, workers)
        self.scripts = ScriptChecks(inbox.post)
        self.restarts = Restarts()
        self._watched: list[tuple[Registration, ServiceSpec, CheckSpec, str]] = []  # (…, check ID)
        self._restarted: dict[str, tuple[str, float]] = {}  # namespec -> (why, wall-clock time until shown)
        self.exit_watch = exit_watch  # None: crashes are known from supervisord's events only

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        while True:
            batch = self.inbox.take(self._wait())
            try:
                self._round(batch)
            except Exception as exc:  # noqa: BLE001
                self._round_failed(exc)
            if batch.closed:
                self.holder.pulse.close()
                self.scripts.close()
                if self.exit_watch is not None:
                    self.exit_watch.close()
                if self.supervisord_stopping or (self.supervisor is not None and self.supervisor.is_stopping()):
                    self._all_stopped()
                return

    def _round(self, batch: Batch) -> None:
        wants_reconcile = batch.reconcile
        # What the files say is read again when they changed, or when someone says it may have.
        self._read_config_anyway |= batch.retry_refused
        # A rotated token file is seen within a round; HUP reads it whatever its mtime says.
        token_changed = self.agent.refresh_token(force=batch.retry_refused)
        if batch.retry_refused or token_changed:
            self._retry_at.clear()
            self.holder.retry_now()
            wants_reconcile |= token_changed
        exited: set[str] = set()
        died: dict[str, ProcessExit] = {}
        for hint in batch.hints:
            if isinstance(hint, ProcessExit):
                died[hint.namespec] = hint
            else:
                wants_reconcile |= self._fold(hint, exited)
        self._take_deaths(died)
        # Asked once per process and batch, and only if a later hint did not supersede it.
        for namespec in exited:
            if self.statuses[namespec].state == "EXITED" and self.statuses[namespec].exitstatus is None:
                self.statuses[namespec] = self._with_exitstatus(namespec, self.statuses[namespec])
        self._wakeup.wake_due(self.supervisor, self.inbox.heard_at)
        if wants_reconcile and (self.actual is not None or batch.retry_refused):
            # While the agent is down the backoff decides when to try again, unless an operator says now (HUP).
            self._reconcile_at = self._monotonic()
        reconcile_due = self._monotonic() >= self._reconcile_at
        if reconcile_due and self.actual is not None and batch.hints:
            # Send what the events said before the reads: a busy supervisord (a burst) takes seconds to
            # answer getAllProcessInfo, and the instances it already told us of need not wait for that.
            self.converge()
        started = self._monotonic()
        reconciled = reconcile_due and self.reconcile()
        news = bool(batch.hints) or batch.reconcile or batch.retry_refused or token_changed
        applied = self.converge(fresh=reconciled, news=news)
        self._measure(started if reconciled else None)
        if reconciled:
            log.debug("reconcile done: %d instances owned in the agent, %d operations applied",
                      len(self.actual or {}), applied)
            if self._failed_rounds:
                self._failed_rounds = 0
                self.conditions.clear("round", "the sync loop reconciled again after the unexpected error")

    def _measure(self, reconcile_started: float | None) -> None:
        """The round's end, for the metrics: a few assignments, nothing that waits."""
        if reconcile_started is not None:
            self.metrics.reconciled(self._monotonic() - reconcile_started)
        if self.actual is None:
            return  # unknown: the last count stands, and agent_reachable says why
        self.metrics.owned(len(self.actual))
        now = self._monotonic()
        # A refused operation waits for its retry; one whose instance is gone meanwhile ages out.
        if self.configuration is not None and self.holder.standing in (Standing.HELD, Standing.UNCLAIMED) \
                and not any(at > now for at in self._retry_at.values()):
            self.metrics.in_step(self._wall())

    def _round_failed(self, exc: Exception) -> None:
        """A bug met in one round: exiting would only have supervisord restart us into
        the same bug, so forget what we believe and start again from fresh reads."""
        self.conditions.report("round", f"unexpected {type(exc).__name__} in the sync loop: {exc}; "
                                        "reading everything afresh (please report this)", logging.ERROR,
                               exc_info=exc)
        self.actual = None
        # Its own backoff: a reconcile that succeeds before the bug resets the agent's.
        self._failed_rounds += 1
        delay = min(BACKOFF_FIRST * 2 ** (self._failed_rounds - 1), RECONCILE_EVERY)
        self._reconcile_at = self._monotonic() + delay

    def _wait(self) -> float:
        now = self._monotonic()
        return max(0.0, min(IDLE_WAKEUP, self._reconcile_at - now, self._heartbeat_due + HEARTBEAT_SLACK - now,
                            self._wakeup.next_due() - now))

    # -- desired state --------------------------------------------------------

    def _take_deaths(self, died: dict[str, ProcessExit]) -> None:
        """Processes the exit watch saw die, after the batch's events: critical at once,
        as supervisord's EXITED will say, so its event then changes nothing.  supervisord
        is woken to reap them, so its own events follow within milliseconds; those
        correct a death it caused itself (STOPPING, STOPPED)."""
        deaths = [death for namespec, death in died.items() if (status := self.statuses.get(namespec)) is not None
                  and status.state == "RUNNING" and status.pid == death.pid]  # else a later word said more
        if not deaths:
            return
        assert self.configuration is not None
        now = self._wall()
        for death in deaths:
            status, spec = self.statuses[death.namespec], self.configuration.process(death.namespec)
            # A signal may be supervisord's own stop whose STOPPING event is still on its way: a
            # note written for it now would stay in the catalog (a new note with the same status
            # is synced only every few minutes), so supervisord is asked first.  Not for SIGKILL,
            # the OOM killer's and a stop's last resort (its STOPPING came long before).
            waitstatus = death.waitstatus
            exitstatus = health.exitstatus_of(waitstatus) if waitstatus is not None else None
            maybe_stop = (waitstatus is not None and os.WIFSIGNALED(waitstatus)
                          and os.WTERMSIG(waitstatus) != signal.SIGKILL)
            # Not asked in a crash loop: asking wakes supervisord, which would only respawn it sooner.
            if (waitstatus is None or maybe_stop) and not health.flapping(status, now):
                info = self._info_of(death.namespec)
                if info is not None and info.get("statename") in ("STOPPING", "STOPPED"):
                    self.statuses[death.namespec] = health.from_info(status, info, spec)
                    continue
                if waitstatus is None:  # supervisord reaped it first: it knows how it ended (unless respawned)
                    reaped = info is not None and info.get("statename") == "EXITED"
                    exitstatus = info.get("exitstatus") if reaped and info else None
            log.debug("%s: pid %d exited, seen by the exit watch", death.namespec, death.pid)
            self.statuses[death.namespec] = health.died(status, exitstatus, spec, now)
        # Not for a crash loop: waking supervisord would only make it respawn the program faster.
        if self.supervisor is not None and any(not health.flapping(self.statuses[death.namespec], now)
                                               for death in deaths):
            self._waker(self.supervisor)

    def _info_of(self, namespec: str) -> dict[str, Any] | None:
        try:
            return self.supervisor.process_info(namespec) if self.supervisor is not None else None
        except SupervisorError:
            return None

    def _fold(self, hint: Hint | ScriptResult, exited: set[str]) -> bool:
        """Take in one hint; True when it calls for a full reconcile.  `exited` collects
        the processes whose exit status to ask supervisord for."""
        if isinstance(hint, ScriptResult):
            self.scripts.take(hint)
            return False
        if isinstance(hint, ProcessStateChange):
            self._wakeup.expect(hint, self.configuration.process(hint.namespec) if self.configuration else None)
            status = health.fold(self.statuses.get(hint.namespec), hint, self._wall())
            ours = self.configuration is not None and self.configuration.process(hint.namespec) is not None
            if status.state == "EXITED" and ours:
                exited.add(hint.namespec)
            if ours and self.exit_watch is not None:
                self.exit_watch.follow(hint.namespec, status.pid if status.state == "RUNNING" else None)
            self.statuses[hint.namespec] = status
            return False
        if isinstance(hint, SupervisorStateChange):
            self.supervisord_stopping = hint.state == "STOPPING"
            self._read_config_anyway |= hint.state == "RUNNING"
            return hint.state == "RUNNING"
        self._read_config_anyway |= isinstance(hint, GroupsChanged)
        return isinstance(hint, GroupsChanged)

    def _all_stopped(self) -> None:
        """supervisord is shutting down or reloading and stops its listeners last,
        so every program has stopped by now; their last events may never reach us
        (supervisord drops listener queues at shutdown)."""
        self.statuses = self._stopped(self.statuses)
        self.converge()
        if self.actual == {}:  # every instance gone: the claim may go too
            try:
                self.holder.release()
            except ConsulError as exc:
                log.warning("%s; its TTL check expires instead", exc)

    def _stopped(self, namespecs: Iterable[str]) -> dict[str, ProcessStatus]:
        """Every one of these processes STOPPED as of now: supervisord is shutting down or reloading."""
        now = self._wall()
        return {namespec: ProcessStatus("STOPPED", since=now) for namespec in namespecs}

    def _with_exitstatus(self, namespec: str, status: ProcessStatus) -> ProcessStatus:
        # EXITED events carry no exit status (supervisor #1150); ask for it.
        assert self.supervisor is not None
        try:
            info = self.supervisor.process_info(namespec)
        except SupervisorError:
            return status
        spec = self.configuration.process(namespec) if self.configuration else None
        return health.with_exitstatus(status, info, spec)

    def prepare(self) -> None:
        """The first reading of the configuration and of supervisord, before any
        event is taken.  A listener that can see neither would only half work:
        from events alone it leaves instances behind at shutdown, and after a
        restart lets the TTLs of processes it never heard of expire.  So it
        refuses to start instead (NotReady: one line saying what to fix)."""
        configuration = self._read_config(self.configfile)
        if not configuration.readable:
            raise NotReady(f"{configuration.problems[0]}; the listener needs to read it")
        self._take_configuration(configuration)
        assert self.supervisor is not None
        try:
            self._take_process_infos(self.supervisor.all_process_info())
        except SupervisorError as exc:
            if not self.supervisor.is_stopping():
                raise NotReady(f"{exc}; the listener needs supervisord's XML-RPC to see what it runs") from exc
            # A listener slow to start, in a supervisord that began shutting down or reloading
            # meanwhile: its programs have stopped, and their instances are left for it to remove.
            log.info("supervisord is stopping already: deregistering what it ran")
            self.supervisord_stopping = True
            self.statuses = self._stopped(spec.namespec for spec in configuration.services.values())

    def _load_configuration(self) -> None:
        """Read the configuration when its files changed (editing a [consul:*] section
        gives supervisord nothing to report, so no event would say), or when asked to."""
        now = config.stamp(self.configuration.watched if self.configuration else (self.configfile,))
        if self.configuration is not None and self.configuration.files and not self._read_config_anyway \
                and now == self._config_stamp:
            return
        self._read_config_anyway = False
        before = {path: rest for path, *rest in now}
        configuration = self._read_config(self.configfile)
        after = config.stamp(configuration.watched)
        # A file changed while it was read is read again next time.
        unchanged = all(before.get(path, rest) == rest for path, *rest in after)
        self._config_stamp = after if configuration.readable and unchanged else ()
        if not configuration.readable:
            self.conditions.report("config", f"{configuration.problems[0]}; keeping the last good configuration"
                                   if self.configuration else str(configuration.problems[0]), logging.ERROR)
            return
        self.conditions.clear("config", f"{self.configfile} reads again")
        self._take_configuration(configuration)

    def _take_configuration(self, configuration: Configuration) -> None:
        new_problems = set(configuration.problems)
        for problem in configuration.problems:
            if problem not in self._logged_problems:
                log.error("%s; this program stays unregistered", problem)
        if self._logged_problems and not new_problems:
            log.info("%s: every [consul:*] section is valid now", self.configfile)
        self._logged_problems = new_problems
        if self.configuration is None:
            self.owner = instance.owner_of(self.host, configuration)
            legacy = instance.legacy_owner_of(self.host, configuration)
            self._legacy_owners = (legacy,) if legacy != self.owner else ()
            log.info("reading %s: %d processes to register; owner id %s", configuration.configfile,
                     len(configuration.services), self.owner)
        self.configuration = configuration
        self.supervisor = self._supervisor_factory(configuration)
        self.holder.configure(self.owner, self.host, configuration, _claim_deregister_after(configuration))
        self._build_registrations()

    def _build_registrations(self) -> None:
        assert self.configuration is not None
        self._built_claimed = self.holder.claimed
        self.registrations = {unit: instance.of(spec, self.owner, self.host, self._built_claimed)
                              for unit, spec in self.configuration.services.items()}
        # The checks with restart_after, once per configuration rather than every round.
        self._watched = [(registration, spec, check, instance.check_id(registration.service_id, check))
                         for unit, spec in self.configuration.services.items()
                         if (registration := self.registrations[unit])
                         for check in spec.checks if check.restart_after]
        self.restarts.keep_only({cid for _, _, _, cid in self._watched})

    def _read_supervisor(self) -> None:
        assert self.supervisor is not None
        try:
            infos = self.supervisor.all_process_info()
        except SupervisorError as exc:
            # Keep what we know and its heartbeats: a process we cannot see is not a dead one.
            self.complete = False
            self.conditions.report("supervisord", f"{exc}; keeping what it said last, removing nothing, retrying")
            return
        self.conditions.clear("supervisord", f"supervisord at {self.supervisor.url} answers again")
        self._take_process_infos(infos)

    def _take_process_infos(self, infos: list[dict[str, Any]]) -> None:
        assert self.configuration is not None
        previous = self.statuses
        self.statuses = {}
        for info in infos:
            namespec = make_namespec(info["group"], info["name"])
            self.statuses[namespec] = health.from_info(previous.get(namespec), info,
                                                       self.configuration.process(namespec))
        self.complete = True
        if self.exit_watch is not None:
            self.exit_watch.follow_only({namespec: status.pid for namespec, status in self.statuses.items()
                                         if status.state == "RUNNING" and self.configuration.process(namespec)})

    def desired(self) -> dict[str, Desired]:
        assert self.configuration is not None
        now = self._wall()
        self._restarted = {namespec: why for namespec, why in self._restarted.items() if now < why[1]}
        timed = bool(self._restarted)
        result = {}
        for unit, spec in self.configuration.services.items():
            status = self.statuses.get(spec.namespec)
            registration = self.registrations.get(unit)
            if registration is not None and status is not None:
                desired = Desired.of(registration, status, spec, now)
                # What the clock alone changes: a crash loop's hold, a critical spell's deregister_after.
                timed = timed or bool(status.flapping_since) or (
                    isinstance(desired.wanted, health.Health) and desired.wanted.status == health.CRITICAL
                    and spec.deregister_after_seconds is not None)
                result[registration.service_id] = self._with_restart_note(desired, spec.namespec, now)
        self._timed = timed
        return result

    def _with_restart_note(self, desired: Desired, namespec: str, now: float) -> Desired:
        why = self._restarted.get(namespec)
        if why is None or now >= why[1] or not isinstance(desired.wanted, health.Health) \
                or desired.wanted.status != health.PASSING:
            return desired
        return replace(desired, wanted=replace(desired.wanted, note=f"{desired.wanted.note}; {why[0]}"))

    # -- restart on failing checks (check_restart.py) -----------------------------------

    def _look_at_checks(self) -> None:
        """One look per interval at every check with restart_after, of processes
        RUNNING and registered; a restart runs in a thread of its own, since a
        stop may take stopwaitsecs."""
        assert self.configuration is not None and self.actual is not None
        now = self._wall()
        due = [w for w in self._watched if self.restarts.due(w[3], w[2], now)]
        if not due:
            return
        consul_run: dict[str, str] = {}
        if any(check.kind is not CheckKind.SCRIPT for _, _, check, _ in due):
            try:
                consul_run = self.agent.named_check_statuses(self.owner)
            except ConsulError as exc:
                self._agent_failed(exc)
                return
        for registration, spec, check, cid in due:
            status = self.statuses.get(spec.namespec)
            have = self.actual.get(registration.service_id)
            if status is None or status.state != "RUNNING" or have is None:
                continue
            result = self.scripts.results.get(cid) if check.kind is CheckKind.SCRIPT else None
            seen = result.status if result is not None else consul_run.get(cid)
            restart = self.restarts.look(cid, check, spec.namespec, seen, now, status.since,
                                         have.maintenance is not None)
            if restart is not None:
                self._restart(restart, check.restart_grace_seconds)

    def _restart(self, restart: Restart, shown_for: float) -> None:
        log.warning("%s: %s; restarting it", restart.namespec, restart.note)
        self._restarted[restart.namespec] = (restart.note, self._wall() + shown_for)
        supervisor = self.supervisor
        assert supervisor is not None

        def run() -> None:
            try:
                supervisor.restart(restart.namespec)
            except SupervisorError as exc:
                log.error("%s: restart for check %s failed: %s", restart.namespec, restart.check, exc)
        threading.Thread(target=run, name=f"restart {restart.namespec}", daemon=True).start()

    # -- converging ------------------------------------------------------------

    def reconcile(self) -> bool:
        """Read everything afresh: configuration, supervisord, the agent.

        The configuration is read every time: editing a [consul:*] section
        gives supervisord nothing to report, so no event would tell us.
        """
        self._load_configuration()
        if self.configuration is None:
            self._schedule_retry()
            return False
        self._read_supervisor()
        try:
            fresh = self.agent.read_owned(self.owner, *self._legacy_owners)
        except ConsulError as exc:
            self._agent_failed(exc)
            return False
        self.actual = {sid: self._keep_heartbeat_time(have) for sid, have in fresh.items()}
        self.metrics.agent_reachable(True)
        self.conditions.clear(acl_token.CONDITION, "the Consul agent accepts the token again")
        self.conditions.clear("agent", f"Consul agent at {self.agent.endpoint} answers again; reconciled")
        self._backoff = BACKOFF_FIRST
        self._reconcile_at = self._monotonic() + RECONCILE_EVERY
        return True

    def _keep_heartbeat_time(self, have: Actual) -> Actual:
        """The agent does not say when a TTL check was last written; when it still
        shows what we wrote, our own record of when is good, and no extra
        heartbeat is owed."""
        known = (self.actual or {}).get(have.service_id)
        if known is not None and (known.status, known.output) == (have.status, have.output):
            return replace(have, updated_at=known.updated_at)
        return have

    def converge(self, fresh: bool = False, news: bool = True) -> int:
        """Apply the plan from desired to actual; how many operations succeeded.
        `fresh`: actual was read from the agent this very round.  `news`: the round
        brought something (a hint, a reading); without it, and with nothing falling
        due, planning would find nothing to do, and is skipped."""
        self.holder.pulse.progress()  # every round comes here, whatever the agent's state
        if self.actual is None or self.configuration is None:
            return 0
        now = self._monotonic()
        try:
            may_act = self.holder.may_act(now, len(self.registrations), force=fresh)
        except ConsulError as exc:
            self._agent_failed(exc)
            return 0
        if self.holder.claimed != self._built_claimed:
            self._build_registrations()  # instances alias the claim only while we hold it
            news = True
        if not may_act:
            return 0
        if not (news or fresh or self._timed or self._maintained or now >= self._heartbeat_due
                or any(at <= now for at in self._retry_at.values())):
            self._look_at_checks()  # an idle round costs nothing per instance (1000: 20 ms a second otherwise)
            return 0
        self._heartbeat_due = math.inf  # until this round has sent what it sends
        if fresh:
            self._maintenance_read_at = now
        elif self._maintenance_due(now) and not self._read_maintenance():
            return 0
        applied = 0
        desired = self.desired()
        operations = plan.plan(desired, self.actual, now, self.complete, self.scripts.results)
        if not fresh and any(isinstance(op, Deregister) and op.service_id in desired for op in operations):
            # Compare first: an operator may just have put it into maintenance, which
            # only the agent knows, and deregistering would end that maintenance.
            if not self._read_maintenance():
                return 0
            operations = plan.plan(desired, self.actual, now, self.complete, self.scripts.results)
        ready = [op for op in operations if self._retry_at.get(op.service_id, 0) <= now]
        heartbeats = sorted((op for op in ready if isinstance(op, UpdateTTL)),
                            key=lambda op: sending.urgency(op, self.actual[op.service_id]))  # type: ignore[index]
        self._watch_lag(heartbeats, now)
        # Registrations first (in the plan's order), then the heartbeats, most urgent first.
        ready = [op for op in ready if not isinstance(op, UpdateTTL)] + heartbeats
        # Consul 1.8 picks a new sidecar's port among those its sidecars do not use yet, so two
        # registered at once get the same one: those go one at a time, before the rest.
        alone = [op for op in ready if _registers_sidecar(op)]
        together = [op for op in ready if not _registers_sidecar(op)]
        ready = alone + together
        failures = [self._sender.send_all([op])[0] for op in alone] + self._sender.send_all(together)
        for operation, failure in zip(ready, failures):
            if failure is None:
                self._record(operation, now)
                applied += 1
            elif failure.unreachable:
                self.metrics.operation(operation, Result.UNREACHABLE)
                self._agent_failed(failure)
                break
            else:
                self._operation_failed(operation, failure)
        if self.actual is None:  # the agent went away meanwhile: the backoff decides what comes next
            return applied
        self._maintained = any(have.maintenance is not None for have in self.actual.values())
        self._heartbeat_due = min(self._next_heartbeat_due(now), self._next_note_due(desired, now))
        self.scripts.want(self.configuration.services, self.registrations, self.statuses, self.actual)
        self._look_at_checks()
        return applied

    def _next_note_due(self, desired: dict[str, Desired], now: float) -> float:
        """When a note the plan held back (a failing check's new note waits NOTE_EVERY
        after the last write) falls due: a quiet round would otherwise never send it."""
        assert self.actual is not None
        due = [have.updated_at + plan.NOTE_EVERY for sid, want in desired.items()
               if (have := self.actual.get(sid)) is not None
               and isinstance(shown := want.shown(have.maintenance is not None), health.Health)
               and have.status == shown.status and have.output != shown.note]
        return max(min(due, default=math.inf), now)

    def _next_heartbeat_due(self, now: float) -> float:
        """When the next TTL check falls due: the loop wakes then, rather than on a
        1 s beat that would let heartbeats of a ttl of 3 s come up to 2 s apart.
        One already due was just sent, or is held back (refused, nothing to carry):
        waking for it would only spin."""
        assert self.actual is not None
        due = [at for r in self.registrations.values() if r.ttl_check_id
               and (have := self.actual.get(r.service_id)) is not None
               and (at := have.updated_at + r.ttl_seconds / plan.HEARTBEATS_PER_TTL) > now]
        return min(due, default=math.inf)

    def _watch_lag(self, heartbeats: list[UpdateTTL], now: float) -> None:
        """Say once when heartbeats fall behind their TTLs, and once when they catch up."""
        assert self.actual is not None
        if not heartbeats:
            return
        by_sid = {r.service_id: r for r in self.registrations.values()}
        behind = sending.lag([op for op in heartbeats if op.service_id in by_sid
                              and op.check_id == by_sid[op.service_id].ttl_check_id], self.actual, by_sid, now)
        if behind >= LAG_WARNING:
            self.conditions.report("lag", f"heartbeats fall behind: TTL checks went {LAG_WARNING:.0%} of their ttl "
                                          f"unrefreshed; the Consul agent at {self.agent.endpoint} answers too slowly "
                                          f"for {len(by_sid)} instances, and they may expire")
        elif behind < LAG_CLEARED:
            self.conditions.clear("lag", "heartbeats keep up with their TTLs again")

    def _maintenance_due(self, now: float) -> bool:
        """Anyone may lift a maintenance (`consul maint -disable`, the UI) without
        telling us: while one of ours is in maintenance, look again every
        heartbeat period of those instances, so that a process stopped meanwhile
        leaves DNS within one period of the maintenance ending."""
        assert self.actual is not None
        maintained = {sid for sid, have in self.actual.items() if have.maintenance is not None}
        if not maintained:
            return False
        assert self.configuration is not None
        periods = [spec.ttl_seconds / plan.HEARTBEATS_PER_TTL for unit, spec in self.configuration.services.items()
                   if spec.ttl_check and (r := self.registrations.get(unit)) and r.service_id in maintained]
        return now - self._maintenance_read_at >= min(periods, default=MAINTENANCE_POLL)

    def _read_maintenance(self) -> bool:
        assert self.actual is not None
        self._maintenance_read_at = self._monotonic()
        try:
            reasons = self.agent.in_maintenance(self.owner)
        except ConsulError as exc:
            self._agent_failed(exc)
            return False
        self.actual = {sid: replace(have, maintenance=reasons.get(sid)) for sid, have in self.actual.items()}
        self._maintained = bool(reasons)
        return True

    def _send(self, operation: Operation) -> None:
        """Only the call: it may run in a sending thread, so it touches none of our state."""
        match operation:
            case Register():
                self.agent.register(operation.registration, operation.health, operation.initial,
                                    operation.stale_checks)
            case UpdateTTL():
                self.agent.update_ttl(operation.check_id, operation.health, operation.service)
            case Deregister():
                self.agent.deregister(operation.service_id, operation.service)
            case _:
                assert_never(operation)

    def _record(self, operation: Operation, sent_at: float) -> None:
        """What the agent now has, once it said yes.  `sent_at`: when the round began
        sending, which is no later than the write: the next heartbeat is never late."""
        assert self.actual is not None
        sid = operation.service_id
        if isinstance(operation, Register):
            registration, wanted = operation.registration, operation.health
            had = self.actual.get(sid)
            self.actual[sid] = Actual(sid, registration.fingerprint, registration.check_ids,
                                      wanted.status if wanted else None, wanted.note if wanted else None,
                                      sent_at, had.maintenance if had else None)
            log.info("registered %s as %s%s", registration.namespec, registration.name,
                     f" ({wanted.status}: {wanted.note})" if wanted else "")
        elif isinstance(operation, UpdateTTL) and operation.check_id != instance.ttl_check_id(sid):  # a script's
            have = self.actual[sid]
            written = have.scripts.get(operation.check_id)
            if written is None or (written.status, written.note) != (operation.health.status, operation.health.note):
                log.info("%s is %s: %s", operation.check_id, operation.health.status, operation.health.note)
            self.actual[sid] = replace(have, scripts={**have.scripts, operation.check_id: Written(
                operation.health.status, operation.health.note, sent_at)})
        elif isinstance(operation, UpdateTTL):
            have = self.actual[sid]
            if (have.status, have.output) != (operation.health.status, operation.health.note):
                log.info("%s is %s: %s", sid, operation.health.status, operation.health.note)
            self.actual[sid] = replace(have, status=operation.health.status, output=operation.health.note,
                                       updated_at=sent_at)
        else:
            self.actual.pop(sid, None)
            log.info("deregistered %s", sid)
        self.metrics.operation(operation, Result.OK)
        self.metrics.agent_reachable(True)
        self._retry_at.pop(sid, None)
        self.conditions.clear(f"op:{sid}", f"{sid}: the agent accepts it again")
        self.conditions.clear(acl_token.CONDITION, "the Consul agent accepts the token again")

    def _operation_failed(self, operation: Operation, exc: ConsulError) -> None:
        """One instance refused: the others go on; this one is retried later."""
        sid = operation.service_id
        self.metrics.agent_reachable(True)
        if isinstance(operation, UpdateTTL) and exc.lost:
            self.metrics.operation(operation, Result.LOST)
            # The agent lost the check (it restarted): read it afresh, quietly.
            assert self.actual is not None
            self.actual.pop(sid, None)
            self._reconcile_at = min(self._reconcile_at, self._monotonic() + BACKOFF_FIRST)
            log.debug("%s; reconciling", exc)
            return
        self.metrics.operation(operation, Result.REFUSED)
        self._retry_at[sid] = self._monotonic() + REFUSED_RETRY
        if exc.token_unknown:
            self.conditions.report(acl_token.CONDITION, f"{exc}; retrying every {REFUSED_RETRY:g}s", once=True)
        else:
            self.conditions.report(f"op:{sid}", f"{exc}; retrying every {REFUSED_RETRY:g}s")

    def _agent_failed(self, exc: ConsulError) -> None:
        self.actual = None
        self.metrics.agent_reachable(not exc.unreachable)  # a refusal of every call (the token) is an answer
        if exc.token_unknown:
            self.conditions.report(acl_token.CONDITION, str(exc), once=True)
        else:
            self.conditions.report("agent", str(exc))
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self._reconcile_at = self._monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)


def _claim_deregister_after(configuration: Configuration) -> str | None:
    """After every instance's own: none if any instance is never reaped (`off`)."""
    limits = [spec.deregister_after_seconds for spec in configuration.services.values()]
    known = [limit for limit in limits if limit is not None]
    if len(known) < len(limits):
        return None
    return f"{int(max(known, default=0) + CLAIM_REAPED_AFTER_INSTANCES)}s"


def _registers_sidecar(operation: Operation) -> bool:
    return isinstance(operation, Register) and operation.registration.has_sidecar
