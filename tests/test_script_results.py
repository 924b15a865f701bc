"""Script checks in the sync loop: which run, and when their results are written."""
from __future__ import annotations

from supervisor_consul import instance
from supervisor_consul.health import CRITICAL, PASSING, WARNING, Health, ProcessStatus
from supervisor_consul.plan import Actual, Desired, Register, UpdateTTL, Written, plan
from supervisor_consul.script_results import ScriptChecks, ScriptResult
from supervisor_consul.spec import CheckKind, CheckSpec, ServiceSpec

OWNER, HOST = "0123456789ab", "node1"
SCRIPT = CheckSpec(CheckKind.SCRIPT, "/bin/check --fast", "10s", "5s", "self")
SPEC = ServiceSpec("web", "web", "web", "web", checks=(SCRIPT,), environment=(("A", "1"),), directory="/srv")
RUNNING = ProcessStatus("RUNNING", pid=42)


class Runner:
    def __init__(self, report) -> None:
        self.report, self.wanted, self.closed = report, [], False

    def want(self, scripts) -> None:
        self.wanted.append(list(scripts))

    def close(self) -> None:
        self.closed = True


def keeping():
    posted, runners = [], []

    def factory(report):
        runners.append(Runner(report))
        return runners[-1]
    return ScriptChecks(posted.append, factory), posted, runners


def registered(registration):
    return {registration.service_id: Actual(registration.service_id, registration.fingerprint,
                                            registration.check_ids, PASSING, "RUNNING pid 42", 1.0)}


def test_no_runner_without_a_script_check_to_run():
    checks, _, runners = keeping()
    registration = instance.of(SPEC, OWNER, HOST)
    checks.want({"web": SPEC}, {"web": registration}, {"web": RUNNING}, {})  # not registered yet
    checks.want({"web": SPEC}, {"web": registration}, {"web": ProcessStatus("EXITED")}, registered(registration))
    assert runners == []


def test_a_running_registered_process_has_its_script_run_told_which_process():
    checks, posted, runners = keeping()
    registration = instance.of(SPEC, OWNER, HOST)
    checks.want({"web": SPEC}, {"web": registration}, {"web": RUNNING}, registered(registration))
    [[script]] = runners[0].wanted
    assert script.check_id == f"{registration.service_id}:check:self"
    assert (script.command, script.interval, script.timeout, script.directory) == (
        ("/bin/check", "--fast"), 10.0, 5.0, "/srv")
    assert dict(script.environment) == {"A": "1", "SUPERVISOR_GROUP_NAME": "web", "SUPERVISOR_PROCESS_NAME": "web",
                                        "SUPERVISOR_PROCESS_PID": "42"}
    runners[0].report(script.check_id, Health(PASSING, "ok"))  # from the runner's thread: only posted
    assert posted == [ScriptResult(script.check_id, Health(PASSING, "ok"))] and checks.results == {}
    checks.take(posted[0])
    assert checks.results == {script.check_id: Health(PASSING, "ok")}
    # A restart is a new pid, so a new script: it runs at once.
    checks.want({"web": SPEC}, {"web": registration}, {"web": ProcessStatus("RUNNING", pid=43)},
                registered(registration))
    assert dict(runners[0].wanted[-1][0].environment)["SUPERVISOR_PROCESS_PID"] == "43"
    # Stopped: nothing runs, the result is forgotten, a late one is dropped.
    checks.want({"web": SPEC}, {"web": registration}, {"web": ProcessStatus("STOPPED")}, registered(registration))
    assert runners[0].wanted[-1] == [] and checks.results == {}
    checks.take(ScriptResult(script.check_id, Health(CRITICAL, "late")))
    assert checks.results == {}
    checks.close()
    assert runners[0].closed


def test_the_same_scripts_again_ask_the_runner_nothing():
    checks, _, runners = keeping()
    registration = instance.of(SPEC, OWNER, HOST)
    for _ in range(3):
        checks.want({"web": SPEC}, {"web": registration}, {"web": RUNNING}, registered(registration))
    assert len(runners[0].wanted) == 1


def test_results_are_written_when_news_or_due_and_never_beside_a_register():
    registration = instance.of(SPEC, OWNER, HOST)
    cid = f"{registration.service_id}:check:self"
    desired = {registration.service_id: Desired(registration, Health(PASSING, "RUNNING pid 42"))}
    have = registered(registration)[registration.service_id]
    warn = Health(WARNING, "slow")

    def script_ops(actual, results, now=2.0):
        return [op for op in plan(desired, actual, now, True, results) if getattr(op, "check_id", "") == cid]

    assert script_ops({registration.service_id: have}, {cid: warn}) == [
        UpdateTTL(registration.service_id, cid, warn, "web")]
    written = {registration.service_id: Actual(have.service_id, have.fingerprint, have.check_ids, PASSING,
                                               "RUNNING pid 42", 2.0, scripts={cid: Written(WARNING, "slow", 2.0)})}
    assert script_ops(written, {cid: warn}, now=3.0) == []  # the same result, just written
    ttl = dict(registration.scripts)[cid]  # 10 + 5 + 15 s
    assert script_ops(written, {cid: warn}, now=2.0 + ttl / 3) != []  # due again
    # Not registered yet: the Register goes first, its results the round after.
    ops = plan(desired, {}, 2.0, True, {cid: warn})
    assert [type(op) for op in ops] == [Register]
