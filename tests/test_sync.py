"""Sync: the sync loop, with a fake agent, a fake supervisord and fake clocks."""
from __future__ import annotations

import logging
import signal
from dataclasses import replace

import pytest

from supervisor_consul import claim, instance
from supervisor_consul.agent import ConsulError
from supervisor_consul.claim import Seen
from supervisor_consul.config import Configuration
from supervisor_consul.events import GroupsChanged, ProcessStateChange, SupervisorStateChange
from supervisor_consul.exit_watch import ProcessExit
from supervisor_consul.health import CRITICAL, PASSING, Health
from supervisor_consul.inbox import Inbox
from supervisor_consul.plan import Actual
from supervisor_consul.rpc import SupervisorError
from supervisor_consul.spec import Connect, ServiceSpec
from supervisor_consul.sync import Sync

CONFIGFILE = "/etc/supervisor/supervisord.conf"
HOST = "node1"
OWNER = instance.owner_id(HOST, CONFIGFILE, "supervisor")
ME = claim.Incarnation("boot-1", "4026531836", "4026531832", 4242, 777)  # the supervisord under test
UNREACHABLE = "Consul agent at http://127.0.0.1:8500 is unreachable (connection refused); is it running? retrying"


def sid(namespec: str, owner: str = OWNER) -> str:
    return instance.service_id(owner, namespec)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeAgent:
    """The agent adapter's interface; keeps what was registered and records every write."""

    endpoint = "http://127.0.0.1:8500"

    def __init__(self) -> None:
        self.services: dict[str, Actual] = {}  # what read_owned returns: our instances only
        self.foreign: dict[str, dict] = {}  # someone else's; read_owned never returns them
        self.writes: list[tuple] = []
        self.reads = 0
        self.unreachable = False
        self.token_refreshes: list[bool] = []  # force, per call
        self.token_rotated = False  # what refresh_token answers
        self.claims: dict[str, Seen] = {}  # owner id -> its claim
        self.claim_writes: list[tuple] = []
        self.refuse_claim = False  # a token that may not write `supervisord`

    def refresh_token(self, force: bool = False) -> bool:
        self.token_refreshes.append(force)
        return self.token_rotated

    def _answer(self) -> None:
        if self.unreachable:
            raise ConsulError(UNREACHABLE, unreachable=True)

    def read_owned(self, *owners: str) -> dict[str, Actual]:
        self.reads += 1
        self._answer()
        return {k: v for k, v in self.services.items() if any(k.startswith(f"supervisord:{o}:") for o in owners)}

    def read_claim(self, owner: str) -> Seen | None:
        self._answer()
        return self.claims.get(owner)

    def register(self, registration, health, initial=CRITICAL, stale_checks=frozenset()) -> None:
        self._answer()
        if registration.name == "supervisord":  # a claim: kept apart, so the tests' writes are the instances'
            if self.refuse_claim:
                raise ConsulError("refused PUT /v1/agent/service/register (supervisord): 403 Permission denied: "
                                  "Missing service:write on supervisord", status=403)
            meta = dict(registration.meta)
            self.claims[meta[instance.OWNER_META]] = Seen(claim.Incarnation.decode(meta[claim.INCARNATION_META]),
                                                      health.status, health.note)
            self.claim_writes.append(("register", registration.service_id))
            return
        self.writes.append(("register", registration.service_id, health, initial))
        checks = frozenset(dict(c)["CheckID"] for c in registration.checks)
        had = self.services.get(registration.service_id)
        self.services[registration.service_id] = Actual(
            registration.service_id, registration.fingerprint, checks,
            health.status if health else initial, health.note if health else None,
            maintenance=had.maintenance if had else None)  # registering keeps a maintenance

    def in_maintenance(self, owner: str) -> dict[str, str]:
        self._answer()
        return {sid: have.maintenance for sid, have in self.read_owned(owner).items()
                if have.maintenance is not None}

    def update_ttl(self, check_id: str, health: Health, service: str = "") -> None:
        self._answer()
        if service == "supervisord":
            owner = check_id.split(":")[1]
            self.claims[owner] = replace(self.claims[owner], status=health.status, output=health.note)
            self.claim_writes.append(("update_ttl", check_id))
            return
        self.writes.append(("update_ttl", check_id, health))
        service_id = check_id.rsplit(":", 1)[0]
        self.services[service_id] = replace(self.services[service_id], status=health.status, output=health.note)

    def deregister(self, service_id: str, service: str = "") -> None:
        self._answer()
        if service == "supervisord":
            self.claims.pop(service_id.split(":")[1], None)
            self.claim_writes.append(("deregister", service_id))
            return
        self.writes.append(("deregister", service_id))
        self.services.pop(service_id, None)


class FakeSupervisor:
    url = "unix:///run/supervisor.sock"

    def __init__(self, wall: Clock) -> None:
        self.wall = wall
        self.infos: dict[str, dict] = {}
        self.down = False
        self.stopping = False
        self.wakes = 0
        self.process_info_calls = 0

    def set(self, namespec: str, statename: str, pid: int = 0, exitstatus: int = 0) -> None:
        group, _, name = namespec.rpartition(":")
        self.infos[namespec] = {"name": name, "group": group or name, "statename": statename, "pid": pid,
                                "start": self.wall() - 10, "stop": self.wall() if pid == 0 else 0,
                                "exitstatus": exitstatus, "spawnerr": "", "description": ""}

    def _info(self, namespec: str) -> dict:
        return {**self.infos[namespec], "now": self.wall()}

    def all_process_info(self) -> list[dict]:
        if self.down:
            raise SupervisorError(f"supervisord at {self.url} cannot be reached for getAllProcessInfo: refused")
        return [self._info(namespec) for namespec in self.infos]

    def process_info(self, namespec: str) -> dict:
        self.process_info_calls += 1
        if self.down:
            raise SupervisorError(f"supervisord at {self.url} cannot be reached for getProcessInfo: refused")
        return self._info(namespec)

    def is_stopping(self) -> bool:
        return self.stopping

    def wake(self) -> None:
        self.wakes += 1


def service(namespec: str, **overrides) -> ServiceSpec:
    group, _, process = namespec.rpartition(":")
    return ServiceSpec(**{"namespec": namespec, "group": group or process, "process": process,
                          "name": group or process, **overrides})


class World:
    """A Sync wired to fakes, with helpers to drive it."""

    def __init__(self, *specs: ServiceSpec, claimed: bool = True, after: World | None = None) -> None:
        """`after`: a listener that ran before this one, under the same supervisord and agent."""
        self.wall = Clock(1_800_000_000.0) if after is None else after.wall
        self.monotonic = Clock(10_000.0) if after is None else after.monotonic
        self.agent = FakeAgent() if after is None else after.agent
        self.agent.refuse_claim = not claimed
        self.supervisor = FakeSupervisor(self.wall) if after is None else after.supervisor
        self.configuration = Configuration(CONFIGFILE, services={s.namespec: s for s in specs})
        self.sync = Sync(self.agent, CONFIGFILE, HOST, Inbox(),
                         read_config=lambda path: self.configuration,
                         supervisor_factory=lambda configuration: self.supervisor,
                         wall=self.wall, monotonic=self.monotonic, waker=lambda supervisor: supervisor.wake(),
                         incarnation=ME, workers=1,  # one at a time: the fake's writes in a fixed order
                         background_pulse=False)  # the claim beats in converge(), on the fake clock

    def round(self) -> None:
        self.sync.reconcile()
        self.sync.converge()

    def deliver(self, *hints) -> None:
        """Post hints and let Sync.run() take them: run() loops until its inbox is
        closed, so close it after the hints and run() returns once they are done."""
        self.sync.inbox = inbox = Inbox()
        for hint in hints:
            inbox.post(hint)
        inbox.close()
        self.sync.run()

    def take_writes(self) -> list[tuple]:
        writes, self.agent.writes = self.agent.writes, []
        return writes


@pytest.fixture
def world(request) -> World:
    # UNCLAIMED: a token that may not write `supervisord`, so there is no claim and every
    # instance's TTL check is its liveness check, refreshed every ttl/3.
    w = World(service("web"), claimed=getattr(request, "param", None) != UNCLAIMED)
    w.supervisor.set("web", "RUNNING", pid=42)
    return w


UNCLAIMED = "unclaimed"
unclaimed = pytest.mark.parametrize("world", [UNCLAIMED], indirect=True)
RUNNING_42 = Health(PASSING, "RUNNING pid 42")


def test_running_process_registered_once(world):
    world.round()
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]

    world.sync.converge()
    world.sync.converge()
    assert world.take_writes() == []


def test_with_the_claim_one_heartbeat_serves_every_instance():
    world = World(*(service(f"p{i}", ttl="3s") for i in range(50)), service("slow", ttl="1m"))
    for i in range(50):
        world.supervisor.set(f"p{i}", "RUNNING", pid=100 + i)
    world.supervisor.set("slow", "RUNNING", pid=99)
    world.round()
    world.take_writes()
    world.agent.claim_writes.clear()
    for _ in range(60):  # a minute, in steps of a second
        world.monotonic.advance(1)
        world.sync.converge()
    # The claim beats every 1 s (the shortest ttl / 3); the instances' checks change only with their processes.
    assert world.take_writes() == []
    assert world.agent.claim_writes == [("update_ttl", instance.claim_check_id(OWNER))] * 60
    world.monotonic.advance(8 * 3600)  # the backstop TTL's third
    world.sync.converge()
    assert len(world.take_writes()) == 51


@unclaimed
def test_heartbeat_every_third_of_the_ttl(world):
    world.round()
    world.take_writes()

    world.monotonic.advance(4.9)
    world.sync.converge()
    assert world.take_writes() == []

    world.monotonic.advance(0.1)  # 15s / 3
    world.sync.converge()
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", RUNNING_42)]

    world.sync.converge()
    assert world.take_writes() == []


@unclaimed
def test_a_reconcile_owes_no_extra_heartbeat(world):
    world.round()
    world.take_writes()
    world.monotonic.advance(1)
    world.round()  # re-reads the agent, which cannot say when the check was written
    assert world.take_writes() == []
    world.monotonic.advance(4)  # 15s / 3 since the registration
    world.sync.converge()
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", RUNNING_42)]


def test_run_reconciles_first_and_returns_when_the_inbox_is_closed(world):
    world.deliver()
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]


def test_exited_hint_makes_it_critical(world):
    world.round()
    world.take_writes()
    world.supervisor.set("web", "EXITED", exitstatus=1)

    world.deliver(ProcessStateChange("web", "EXITED", "RUNNING", 42, expected=False))

    assert world.take_writes() == [
        ("update_ttl", f"{sid('web')}:process", Health(CRITICAL, "EXITED unexpectedly with exit status 1"))]


def test_exited_then_starting_stays_critical_and_running_passes_again(world):
    world.round()
    world.take_writes()
    world.supervisor.set("web", "EXITED", exitstatus=1)
    world.deliver(ProcessStateChange("web", "EXITED", "RUNNING", 42, expected=False),
                  ProcessStateChange("web", "STARTING", "EXITED"))
    assert world.take_writes() == [
        ("update_ttl", f"{sid('web')}:process", Health(CRITICAL, "EXITED unexpectedly with exit status 1"))]

    world.supervisor.set("web", "RUNNING", pid=43)
    world.deliver(ProcessStateChange("web", "RUNNING", "STARTING", 43))
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", Health(PASSING, "RUNNING pid 43"))]


def test_exit_status_is_asked_once_per_batch_and_not_for_an_exit_a_later_hint_replaced(world):
    """getProcessInfo is a round trip to supervisord: a burst must not cost one per EXITED."""
    world.round()
    world.take_writes()
    world.supervisor.set("web", "RUNNING", pid=44, exitstatus=1)
    world.deliver(ProcessStateChange("web", "EXITED", "RUNNING", 42, expected=False),
                  ProcessStateChange("web", "STARTING", "EXITED"),
                  ProcessStateChange("web", "RUNNING", "STARTING", 43),
                  ProcessStateChange("web", "EXITED", "RUNNING", 43, expected=False),
                  ProcessStateChange("web", "STARTING", "EXITED"),
                  ProcessStateChange("web", "RUNNING", "STARTING", 44))
    assert world.supervisor.process_info_calls == 0
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", Health(PASSING, "RUNNING pid 44"))]

    world.supervisor.set("web", "EXITED", exitstatus=1)
    world.deliver(ProcessStateChange("web", "EXITED", "RUNNING", 44, expected=False),
                  ProcessStateChange("web", "STARTING", "EXITED"),
                  ProcessStateChange("web", "EXITED", "STARTING", 44, expected=False))
    assert world.supervisor.process_info_calls == 1
    assert world.take_writes() == [
        ("update_ttl", f"{sid('web')}:process", Health(CRITICAL, "EXITED unexpectedly with exit status 1"))]


def test_stopped_hint_deregisters(world):
    world.round()
    world.take_writes()
    world.deliver(ProcessStateChange("web", "STOPPING", "RUNNING", 42),
                  ProcessStateChange("web", "STOPPED", "STOPPING", 42))
    assert world.take_writes() == [("deregister", sid("web"))]


def test_agent_unreachable_is_logged_once_and_converges_when_it_answers(world, caplog):
    caplog.set_level(logging.INFO, logger="supervisor_consul")
    world.agent.unreachable = True

    for _ in range(4):
        assert world.sync.reconcile() is False  # no exception
        world.sync.converge()
        world.monotonic.advance(5)

    assert [r.getMessage() for r in caplog.records].count(UNREACHABLE) == 1
    assert world.agent.reads == 4
    assert world.take_writes() == []

    world.agent.unreachable = False
    world.round()

    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


@unclaimed
def test_agent_going_away_while_writing(world, caplog):
    world.round()
    world.take_writes()
    world.agent.unreachable = True
    world.monotonic.advance(5)

    world.sync.converge()  # the heartbeat fails: no exception
    world.sync.converge()  # the state is unknown now: nothing is tried
    assert world.sync.actual is None
    assert [r.getMessage() for r in caplog.records].count(UNREACHABLE) == 1

    world.agent.unreachable = False
    world.monotonic.advance(5)
    world.round()
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", RUNNING_42)]


def test_run_retries_the_agent_with_backoff(world):
    world.agent.unreachable = True
    world.deliver()
    assert world.agent.reads == 1

    world.agent.unreachable = False
    world.deliver(GroupsChanged("web"))  # the backoff has not passed: no reconcile yet
    assert world.agent.reads == 1

    world.monotonic.advance(1.0)
    world.deliver()
    assert world.agent.reads == 2
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]


def test_owned_instance_of_a_process_gone_is_deregistered(world):
    gone = instance.of(service("old"), OWNER, HOST)
    world.agent.services[gone.service_id] = Actual(gone.service_id, gone.fingerprint,
                                                   frozenset({f"{gone.service_id}:process"}), PASSING, "RUNNING pid 7")
    world.round()
    assert sorted(world.take_writes()) == [("deregister", sid("old")), ("register", sid("web"), RUNNING_42, CRITICAL)]


def test_instance_of_a_program_no_longer_configured_is_deregistered(world):
    world.round()
    world.take_writes()
    world.configuration = Configuration(CONFIGFILE, services={})  # [consul:web] removed

    world.round()

    assert world.take_writes() == [("deregister", sid("web"))]


def test_nothing_removed_when_supervisord_cannot_be_read(world):
    gone = instance.of(service("old"), OWNER, HOST)
    world.agent.services[gone.service_id] = Actual(gone.service_id, gone.fingerprint,
                                                   frozenset({f"{gone.service_id}:process"}), PASSING, "RUNNING pid 7")
    world.supervisor.down = True

    world.round()

    assert world.take_writes() == []


def test_foreign_instances_are_never_touched(world):
    other_owner = "fedcba987654"
    world.agent.services[sid("web", other_owner)] = Actual(sid("web", other_owner), "x", frozenset(), PASSING, "")
    world.agent.foreign["web-1"] = {"ID": "web-1", "Service": "web"}

    world.round()
    world.supervisor.set("web", "STOPPED")
    world.round()

    writes = world.take_writes()
    assert writes == [("register", sid("web"), RUNNING_42, CRITICAL), ("deregister", sid("web"))]
    assert all(w[1].startswith(f"supervisord:{OWNER}:") for w in writes)
    assert sid("web", other_owner) in world.agent.services


def test_numprocs_instances():
    w = World(service("web:web_01", port=8101), service("web:web_02", port=8102))
    w.supervisor.set("web:web_01", "RUNNING", pid=1)
    w.supervisor.set("web:web_02", "BACKOFF")
    w.supervisor.set("unregistered", "RUNNING", pid=3)  # a program without [consul:…]

    w.round()

    # BACKOFF only passes through: it never registers an instance that is not there yet.
    assert sorted(w.take_writes()) == [
        ("register", sid("web:web_01"), Health(PASSING, "RUNNING pid 1"), CRITICAL),
    ]


def test_supervisord_stopping_deregisters_everything_at_the_end(world):
    world.round()
    world.take_writes()
    world.deliver(SupervisorStateChange("STOPPING"))
    assert world.take_writes() == [("deregister", sid("web"))]


def test_a_listener_ready_only_once_supervisord_is_stopping_still_deregisters(world):
    world.round()
    world.take_writes()
    world.supervisor.down = world.supervisor.stopping = True  # getAllProcessInfo: SHUTDOWN_STATE
    restarted = World(service("web"), after=world)
    restarted.sync.prepare()  # comes up while supervisord is shutting down: no NotReady
    restarted.deliver()  # SIGTERM before any event
    assert restarted.take_writes() == [("deregister", sid("web"))]


def test_a_restarted_listener_keeps_its_supervisords_claim_without_taking_it_over(world, caplog):
    caplog.set_level(logging.INFO, logger="supervisor_consul")
    world.round()
    world.take_writes()
    restarted = World(service("web"), after=world)  # the same supervisord: the claim is its own
    restarted.sync.prepare()
    restarted.round()
    assert restarted.take_writes() == []
    assert "taking over" not in caplog.text


def test_closing_without_shutdown_leaves_instances(world):
    world.round()
    world.take_writes()
    world.deliver()
    assert world.take_writes() == []


@unclaimed
def test_a_refused_heartbeat_is_reported_once_and_retried_later(world, caplog):
    world.round()
    refused = ConsulError("Consul agent at http://127.0.0.1:8500 refused PUT /v1/agent/check/pass: 403 "
                          "Permission denied; the token needs service:write on web", status=403)

    claim_heartbeat = world.agent.update_ttl

    def update_ttl(check_id, health, service=""):
        if service == "supervisord":
            return claim_heartbeat(check_id, health, service)
        raise refused

    world.agent.update_ttl = update_ttl
    reads = world.agent.reads
    for _ in range(20):
        world.monotonic.advance(1)
        world.sync.converge()
    assert caplog.text.count("403 Permission denied; the token needs service:write on web") == 1
    assert world.agent.reads == reads  # no reconcile storm: the check is there, only refused


@unclaimed
def test_a_lost_check_is_read_afresh_quietly(world, caplog):
    world.round()

    def update_ttl(*args, **kwargs):
        raise ConsulError("... answered PUT /v1/agent/check/pass: 404 not found", status=404)

    world.agent.update_ttl = update_ttl
    world.monotonic.advance(5)
    world.sync.converge()
    assert world.sync.actual == {}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and "(supervisord)" not in r.getMessage()] == []


def test_a_bug_in_a_round_is_logged_once_and_the_loop_recovers(world, caplog):
    caplog.set_level(logging.INFO, logger="supervisor_consul")
    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) <= 2:
            raise KeyError("surprise")
        return world.configuration

    world.sync._read_config = flaky
    world.deliver()
    world.monotonic.advance(1.0)
    world.deliver()  # the same bug again: not logged again
    assert world.take_writes() == []
    assert caplog.text.count("unexpected KeyError in the sync loop") == 1

    world.monotonic.advance(2.0)
    world.deliver()
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]
    assert "reconciled again after the unexpected error" in caplog.text


def test_a_bug_after_a_good_reconcile_is_logged_once_and_backs_off(world, caplog, mocker):
    plan_ = mocker.patch("supervisor_consul.sync.plan.plan", side_effect=ValueError("bad plan"))
    world.deliver()
    for wait in (1.0, 2.0, 4.0):
        reads = world.agent.reads
        world.monotonic.advance(wait - 0.1)
        world.deliver()
        assert world.agent.reads == reads  # not yet: the delay doubles
        world.monotonic.advance(0.1)
        world.deliver()
        assert world.agent.reads == reads + 1
    assert caplog.text.count("unexpected ValueError in the sync loop") == 1
    assert "reconciled again" not in caplog.text

    plan_.side_effect = None
    plan_.return_value = []
    world.monotonic.advance(8.0)
    caplog.set_level(logging.INFO, logger="supervisor_consul")
    world.deliver()
    assert "reconciled again after the unexpected error" in caplog.text


def test_sighup_retries_a_refused_operation_at_once_other_reconciles_wait(world):
    world.agent.register = lambda *a, **k: (_ for _ in ()).throw(
        ConsulError("refused PUT /v1/agent/service/register (web): 403 Permission denied", status=403))
    world.deliver()
    del world.agent.register  # the operator fixed the policy: the fake's own method again
    world.monotonic.advance(1)

    world.sync.inbox = inbox = Inbox()
    inbox.request_reconcile()  # e.g. a poolserial gap: the refusal is still waited out
    inbox.close()
    world.sync.run()
    assert world.take_writes() == []

    world.sync.inbox = inbox = Inbox()
    inbox.request_reconcile(retry_refused=True)  # SIGHUP
    inbox.close()
    world.sync.run()
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]


def test_a_rotated_token_retries_a_refused_operation_at_once(world):
    world.agent.register = lambda *a, **k: (_ for _ in ()).throw(
        ConsulError("refused PUT /v1/agent/service/register (web): 403 ACL not found", status=403))
    world.deliver()
    del world.agent.register
    world.monotonic.advance(1)
    world.deliver()
    assert world.take_writes() == []  # the refusal is waited out while the token is the same
    assert world.agent.token_refreshes[-1] is False  # not forced: only HUP forces a read

    world.agent.token_rotated = True  # the file changed on disk
    world.deliver()
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]


def test_sighup_forces_the_token_file_to_be_read(world):
    world.sync.inbox = inbox = Inbox()
    inbox.request_reconcile(retry_refused=True)
    inbox.close()
    world.sync.run()
    assert world.agent.token_refreshes == [True]


# -- waking supervisord when a process is due to turn RUNNING -------------------------

STARTING = ProcessStateChange("web", "STARTING", "STOPPED")


def test_supervisord_is_woken_once_startsecs_have_gone_by():
    world = World(service("web", startsecs=3.0))
    world.supervisor.set("web", "STOPPED")
    world.round()
    world.deliver(STARTING)
    world.monotonic.advance(2.5)
    assert world.sync._wait() == pytest.approx(0.5005)  # the sync loop is awake for it
    world.monotonic.advance(0.5)
    world.deliver()
    assert world.supervisor.wakes == 0
    world.monotonic.advance(0.01)
    world.deliver()
    world.deliver()
    assert world.supervisor.wakes == 1


def test_no_wake_when_running_arrives_first_for_unregistered_processes_or_startsecs_0():
    world = World(service("web"), service("quick", startsecs=0.0))
    for namespec in ("web", "quick", "other"):
        world.supervisor.set(namespec, "STOPPED")
    world.round()
    world.deliver(STARTING, ProcessStateChange("other", "STARTING", "STOPPED"),
                  ProcessStateChange("quick", "STARTING", "STOPPED"))
    world.deliver(ProcessStateChange("web", "RUNNING", "STARTING", 43))
    world.monotonic.advance(5)
    world.deliver()
    assert world.supervisor.wakes == 0


def test_no_wake_when_an_event_arrived_after_it_was_due(world):
    """An event sent after the threshold means supervisord's loop is passing anyway:
    our answer to it wakes the loop again, which then sends the RUNNING event."""
    world.round()
    world.deliver(STARTING)
    world.monotonic.advance(1.5)
    world.sync.inbox = inbox = Inbox(monotonic=world.monotonic)
    inbox.heard()  # e.g. a TICK
    inbox.close()
    world.sync.run()
    assert world.supervisor.wakes == 0


def test_maintenance_set_behind_its_back_is_read_before_deregistering(world):
    """`supervisor-consul maint` (or `consul maint`) writes only to the agent: the
    listener learns of it, at the latest, just before it would deregister."""
    world.round()
    world.take_writes()
    world.agent.services[sid("web")] = replace(world.agent.services[sid("web")], maintenance="disk swap")
    world.supervisor.set("web", "STOPPED")
    world.deliver(ProcessStateChange("web", "STOPPED", "STOPPING", 42))
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process",
                                    Health("warning", "STOPPED (kept registered: in maintenance)"))]

    world.agent.services[sid("web")] = replace(world.agent.services[sid("web")], maintenance=None)
    world.round()
    assert world.take_writes() == [("deregister", sid("web"))]


def test_a_round_that_reconciled_does_not_read_maintenance_again(world):
    world.round()
    world.take_writes()
    world.supervisor.set("web", "STOPPED")
    reads = world.agent.reads
    world.sync.inbox = inbox = Inbox()
    inbox.request_reconcile()
    inbox.close()
    world.sync.run()
    assert world.take_writes() == [("deregister", sid("web"))]
    assert world.agent.reads == reads + 1  # the reconcile's own read, which saw any maintenance


def test_a_maintenance_lifted_behind_its_back_is_seen_within_one_heartbeat_period(world):
    """`consul maint -disable` tells the listener nothing: it looks again every ttl/3
    while an instance of its own is in maintenance, and only then."""
    world.round()
    world.agent.services[sid("web")] = replace(world.agent.services[sid("web")], maintenance="disk swap")
    world.supervisor.set("web", "STOPPED")
    world.deliver(ProcessStateChange("web", "STOPPED", "STOPPING", 42))  # read before deregistering: kept
    world.take_writes()

    world.agent.services[sid("web")] = replace(world.agent.services[sid("web")], maintenance=None)
    world.monotonic.advance(4.9)
    world.sync.converge()
    assert ("deregister", sid("web")) not in world.take_writes()
    world.monotonic.advance(0.1)  # 15 s / 3
    world.sync.converge()
    assert world.take_writes() == [("deregister", sid("web"))]


def test_no_maintenance_read_while_none_of_ours_is_in_maintenance(world):
    world.round()
    reads = world.agent.reads
    for _ in range(30):
        world.monotonic.advance(1)
        world.sync.converge()
    assert world.agent.reads == reads


# -- the claim: who holds this owner id -------------------------------------------------

TWIN = claim.Incarnation("boot-1", "4026531836", "4026532178", 4343, 888)  # another mount namespace


def test_the_claim_is_taken_before_anything_and_kept_beating(world):
    world.round()
    assert world.agent.claim_writes == [("register", instance.claim_id(OWNER))]
    assert world.agent.claims[OWNER].incarnation == ME
    world.agent.claim_writes.clear()
    world.monotonic.advance(5)
    world.sync.converge()
    assert world.agent.claim_writes == [("update_ttl", instance.claim_check_id(OWNER))]


def test_a_live_twin_holding_the_claim_means_touching_nothing(world, caplog, mocker):
    mocker.patch("supervisor_consul.claim.start_time", side_effect=lambda pid: {4343: 888}.get(pid))
    world.sync.holder.keeper._started = claim.start_time
    world.agent.claims[OWNER] = Seen(TWIN, "passing", "supervisord pid 4343 ...")
    theirs = Actual(sid("db"), "f", frozenset(), "passing", "RUNNING pid 9")
    world.agent.services[sid("db")] = theirs  # the twin's instance, under the same owner id
    for _ in range(3):
        world.deliver()
        world.monotonic.advance(5)
    assert world.take_writes() == [] and world.agent.claim_writes == []
    assert world.agent.services[sid("db")] == theirs
    [line] = [r.getMessage() for r in caplog.records if "another supervisord holds" in r.getMessage()]
    assert "supervisord pid 4343 in mount namespace 4026532178 is alive; touching nothing" in line
    assert "[supervisord] identifier=" in line

    world.sync.holder.keeper._started = lambda pid: None  # the twin has exited
    world.deliver()
    assert world.agent.claims[OWNER].incarnation == ME
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL), ("deregister", sid("db"))]


def test_shutdown_deregisters_the_instances_then_the_claim(world):
    world.round()
    world.take_writes()
    world.agent.claim_writes.clear()
    world.sync.statuses = {}
    world.sync.supervisord_stopping = True
    world.deliver()
    assert world.take_writes() == [("deregister", sid("web"))]
    assert world.agent.claim_writes == [("deregister", instance.claim_id(OWNER))] and world.agent.claims == {}


def test_an_instance_of_the_owner_id_an_earlier_version_gave_is_replaced(world, mocker):
    legacy = instance.owner_id(HOST, "/srv/releases/v1/supervisord.conf", "supervisor")
    mocker.patch("supervisor_consul.instance.legacy_owner_of", return_value=legacy)
    world.sync = Sync(world.agent, CONFIGFILE, HOST, Inbox(), read_config=lambda path: world.configuration,
                      supervisor_factory=lambda configuration: world.supervisor, wall=world.wall,
                      monotonic=world.monotonic, waker=lambda supervisor: None, incarnation=ME, workers=1)
    world.agent.services[sid("web", legacy)] = Actual(sid("web", legacy), "old", frozenset(), "passing", "x")
    world.round()
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL),
                                   ("deregister", sid("web", legacy))]


def test_sighup_reconciles_at_once_even_while_the_agent_is_backed_off(world):
    world.agent.unreachable = True
    world.deliver()
    world.deliver()  # backed off now: 2 s until the next try
    world.agent.unreachable = False  # a real agent answers again on that address
    reads = world.agent.reads
    world.sync.inbox = inbox = Inbox()
    inbox.request_reconcile(retry_refused=True)  # SIGHUP
    inbox.close()
    world.sync.run()
    assert world.agent.reads == reads + 1
    assert world.take_writes() == [("register", sid("web"), RUNNING_42, CRITICAL)]


def test_the_loop_wakes_when_the_next_heartbeat_is_due_and_never_spins():
    world = World(service("web", ttl="1500ms"), claimed=False)
    world.supervisor.set("web", "RUNNING", pid=42)
    world.round()
    assert world.sync._wait() == pytest.approx(0.5 + 0.05)  # ttl / 3, and the slack that batches
    world.monotonic.advance(0.2)
    assert world.sync._wait() == pytest.approx(0.3 + 0.05)
    refused = ConsulError("refused PUT /v1/agent/check/pass: 403 Permission denied", status=403)
    world.agent.update_ttl = lambda *a, **k: (_ for _ in ()).throw(refused)
    world.monotonic.advance(0.5)
    world.sync.converge()  # refused: held back for 30 s, which must not make the loop spin meanwhile
    assert world.sync._wait() == pytest.approx(1.0)
    world.agent.unreachable = True
    del world.agent.update_ttl
    world.monotonic.advance(30)
    world.sync.converge()
    assert world.sync._wait() == pytest.approx(1.0)  # the idle beat, never 0


def test_an_unknown_token_is_said_once_for_every_instance_and_its_end_too(caplog):
    world = World(*(service(f"p{i}") for i in range(5)), claimed=False)
    for i in range(5):
        world.supervisor.set(f"p{i}", "RUNNING", pid=42)
    world.round()
    caplog.set_level(logging.INFO, logger="supervisor_consul")
    unknown = "Consul agent at http://127.0.0.1:8500 answers 403 ACL not found; ..."
    fake = world.agent.update_ttl

    def update_ttl(check_id, health, service=""):
        if service != "supervisord":
            raise ConsulError(f"refused PUT /v1/agent/check/pass ({check_id}): 403 ACL not found", status=403,
                              token_unknown=unknown)
        return fake(check_id, health, service)

    world.agent.update_ttl = update_ttl
    world.monotonic.advance(5)
    world.sync.converge()
    assert caplog.text.count("403 ACL not found") == 1  # not once per instance
    del world.agent.update_ttl
    world.monotonic.advance(30)
    world.sync.converge()
    assert caplog.text.count("the Consul agent accepts the token again") == 1


# -- deaths seen by the exit watch (exit_watch.py) --------------------------------------------

def test_a_death_seen_by_the_exit_watch_is_critical_before_supervisords_event(world):
    world.round()
    world.take_writes()
    world.deliver(ProcessExit("web", 42, signal.SIGKILL))  # supervisord has not reaped it: still RUNNING
    killed = Health(CRITICAL, "EXITED unexpectedly: killed by a signal")
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", killed)]
    calls = world.supervisor.process_info_calls  # a signal was asked about: it might have been a stop
    assert world.supervisor.wakes == 1  # to reap it now rather than after its poll() times out
    world.supervisor.set("web", "EXITED", exitstatus=-1)
    world.deliver(ProcessStateChange("web", "EXITED", "RUNNING", 42, expected=False))
    assert world.take_writes() == []  # its event says what the note says already
    assert world.supervisor.process_info_calls == calls  # and the exit status is known


def test_a_death_supervisord_caused_is_the_stop_not_a_crash(world):
    world.round()
    world.take_writes()
    stopping = Health(CRITICAL, "STOPPING pid 42", registers=False)
    world.deliver(ProcessStateChange("web", "STOPPING", "RUNNING", 42), ProcessExit("web", 42, signal.SIGTERM))
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process", stopping)]
    world.deliver(ProcessStateChange("web", "STOPPED", "STOPPING", 0))
    assert world.take_writes() == [("deregister", sid("web"))]


def test_a_stop_whose_event_is_still_on_its_way_is_no_crash(world):
    world.round()
    world.take_writes()
    world.supervisor.set("web", "STOPPING", pid=42)  # supervisord sent SIGTERM; its STOPPING event comes later
    world.deliver(ProcessExit("web", 42, signal.SIGTERM))
    assert world.take_writes() == [("update_ttl", f"{sid('web')}:process",
                                    Health(CRITICAL, "STOPPING pid 42", registers=False))]


def test_a_death_of_a_pid_already_replaced_changes_nothing(world):
    world.round()
    world.take_writes()
    world.deliver(ProcessStateChange("web", "RUNNING", "STARTING", 43), ProcessExit("web", 42, signal.SIGKILL))
    assert [w[2].note for w in world.take_writes()] == ["RUNNING pid 43"]


def test_the_configuration_is_read_again_only_when_its_files_change_or_someone_says(tmp_path):
    from supervisor_consul import config
    (tmp_path / "conf.d").mkdir()
    main = tmp_path / "supervisord.conf"
    main.write_text("[supervisord]\n[unix_http_server]\nfile=%(here)s/s.sock\n[include]\nfiles=conf.d/*.conf\n"
                    "[program:web]\ncommand=sleep 1\n[consul:web]\n")
    reads = []

    def read(path):
        reads.append(path)
        return config.read(path)

    world = World()
    world.supervisor.set("web", "RUNNING", pid=42)
    world.sync = Sync(world.agent, str(main), HOST, Inbox(), read_config=read,
                      supervisor_factory=lambda configuration: world.supervisor, wall=world.wall,
                      monotonic=world.monotonic, incarnation=ME, workers=1, background_pulse=False)
    world.round()
    world.round()
    assert len(reads) == 1  # nothing changed: the 60 s reconcile costs no parse
    (tmp_path / "conf.d" / "api.conf").write_text("[program:api]\ncommand=sleep 1\n[consul:api]\n")
    world.round()
    assert len(reads) == 2 and "api" in world.sync.configuration.services  # a file added to an [include]
    main.write_text(main.read_text().replace("[consul:web]\n", "[consul:web]\ntags=v2\n"))
    world.round()
    assert len(reads) == 3 and world.sync.configuration.services["web"].tags == ("v2",)
    world.deliver(GroupsChanged("web"))  # supervisorctl update: read whatever the stamps say
    assert len(reads) == 4


def test_an_idle_round_plans_nothing_until_something_falls_due(world, mocker):
    world.round()
    world.take_writes()
    planned = mocker.spy(world.sync, "desired")
    for _ in range(30):
        world.monotonic.advance(1)
        world.sync.converge(news=False)
    assert planned.call_count == 0 and world.take_writes() == []
    world.sync.converge(news=True)  # a hint came
    assert planned.call_count == 1
    # A critical instance with deregister_after changes with the clock: every round looks.
    world.supervisor.set("web", "EXITED", exitstatus=1)
    world.deliver(ProcessStateChange("web", "EXITED", "RUNNING", 42, expected=False))
    calls = planned.call_count
    world.monotonic.advance(1)
    world.sync.converge(news=False)
    assert planned.call_count == calls + 1


def test_a_crash_loop_is_not_hurried_by_waking_supervisord(world):
    world.round()
    for pid in range(42, 48):  # six deaths within a minute: a crash loop from the fifth
        world.supervisor.set("web", "RUNNING", pid=pid)
        world.deliver(ProcessStateChange("web", "RUNNING", "STARTING", pid), ProcessExit("web", pid, signal.SIGKILL))
        world.wall.advance(1)
    assert world.supervisor.wakes == 4


def test_a_crash_loop_is_not_hurried_by_asking_supervisord_either(world):
    world.round()
    for pid in range(42, 48):  # reaped by supervisord before the exit watch read the zombie: no wait status
        world.supervisor.set("web", "RUNNING", pid=pid)
        calls = world.supervisor.process_info_calls
        world.deliver(ProcessStateChange("web", "RUNNING", "STARTING", pid), ProcessExit("web", pid, None))
        world.wall.advance(1)
    assert world.supervisor.process_info_calls == calls  # the last deaths, in the loop: nothing asked
    assert world.sync.statuses["web"].state == "EXITED" and world.sync.statuses["web"].exitstatus is None


def test_registrations_with_a_sidecar_go_one_at_a_time_before_the_rest():
    """Consul 1.8 picks each new sidecar's port among those not used yet: two sidecars
    registered in one parallel batch both got 21000."""
    sidecars = [service(f"s{i}", connect=Connect.SIDECAR) for i in range(3)]
    world = World(*sidecars, service("plain1"), service("plain2"))
    for i, spec in enumerate([*sidecars, service("plain1"), service("plain2")]):
        world.supervisor.set(spec.namespec, "RUNNING", pid=100 + i)
    batches: list[list[str]] = []
    send_all = world.sync._sender.send_all

    def recording(operations):
        batches.append(sorted(op.service_id for op in operations))
        return send_all(operations)
    world.sync._sender.send_all = recording
    world.round()
    registering = [batch for batch in batches if batch]
    assert registering[:3] == [[sid(f"s{i}")] for i in range(3)]
    assert registering[3] == sorted([sid("plain1"), sid("plain2")])
