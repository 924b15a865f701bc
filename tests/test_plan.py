"""plan: registrations, ownership, and the operations that close the gap."""
from __future__ import annotations

import pytest

from supervisor_consul import health
from supervisor_consul.events import ProcessStateChange
from supervisor_consul.health import CRITICAL, KEEP, PASSING, Health
from supervisor_consul.instance import is_owned, owner_id
from supervisor_consul.instance import of as registration
from supervisor_consul.plan import NOTE_EVERY, Actual, Deregister, Desired, Register, UpdateTTL, plan
from supervisor_consul.spec import CheckKind, CheckSpec, ServiceSpec

OWNER = "0123456789ab"
HOST = "node1"
PASS = Health(PASSING, "RUNNING pid 42")
FAIL = Health(CRITICAL, "EXITED unexpectedly with exit status 1")


def spec(**overrides) -> ServiceSpec:
    return ServiceSpec(**{"namespec": "web:web_01", "group": "web", "process": "web_01", "name": "web",
                          "port": 8101, **overrides})


def check_ids(reg) -> frozenset[str]:
    return frozenset(dict(c)["CheckID"] for c in reg.checks)


def actual_for(reg, status=PASSING, output="RUNNING pid 42", updated_at=100.0, fingerprint=None, checks=None):
    return Actual(reg.service_id, reg.fingerprint if fingerprint is None else fingerprint,
                  check_ids(reg) if checks is None else checks, status, output, updated_at)


# -- registration ----------------------------------------------------------------------


def test_registration_payload_shape():
    reg = registration(spec(tags=("a", "b"), meta=(("Version", "1"),)), OWNER, HOST)
    sid = f"supervisord:{OWNER}:web:web_01"

    payload = reg.payload(PASSING)

    assert reg.service_id == sid
    assert payload["ID"] == sid
    assert payload["Name"] == "web"
    assert payload["Port"] == 8101
    assert payload["Address"] == ""
    assert payload["Tags"] == ["a", "b"]
    assert payload["Meta"] == {
        "Version": "1",
        "external-source": "supervisord",
        "supervisor-consul-owner": OWNER,
        "supervisord-group": "web",
        "supervisord-process": "web_01",
        "supervisord-host": HOST,
        "supervisor-consul-spec": reg.fingerprint,
    }
    assert payload["Checks"] == [{
        "CheckID": f"{sid}:process",
        "Name": "supervisord process web:web_01",
        "TTL": "15s",
        "DeregisterCriticalServiceAfter": "5m",
        "Status": PASSING,
    }]
    assert reg.ttl_check_id == f"{sid}:process"
    assert reg.ttl_seconds == 15


def test_payload_status_is_the_initial_status():
    reg = registration(spec(), OWNER, HOST)
    assert reg.payload(CRITICAL)["Checks"][0]["Status"] == CRITICAL
    assert "Status" not in reg.payload(None)["Checks"][0]


def test_no_deregister_critical_service_after_when_off():
    reg = registration(spec(deregister_after=None), OWNER, HOST)
    assert "DeregisterCriticalServiceAfter" not in reg.payload(PASSING)["Checks"][0]


def test_http_check():
    check = CheckSpec(CheckKind.HTTP, "http://127.0.0.1:8101/health", "10s", "5s")
    reg = registration(spec(checks=(check,)), OWNER, HOST)
    sid = reg.service_id

    checks = reg.payload(PASSING)["Checks"]

    assert [c["CheckID"] for c in checks] == [f"{sid}:process", f"{sid}:http"]
    assert checks[1] == {"CheckID": f"{sid}:http", "Name": "http http://127.0.0.1:8101/health",
                         "HTTP": "http://127.0.0.1:8101/health", "Interval": "10s", "Timeout": "5s"}


def test_tcp_check():
    reg = registration(spec(checks=(CheckSpec(CheckKind.TCP, "127.0.0.1:8101", "10s", "5s"),)), OWNER, HOST)
    tcp = reg.payload(PASSING)["Checks"][1]
    assert tcp["CheckID"] == f"{reg.service_id}:tcp"
    assert tcp["TCP"] == "127.0.0.1:8101"


def test_check_none_has_no_ttl_check():
    reg = registration(spec(ttl_check=False), OWNER, HOST)
    assert reg.ttl_check_id is None
    assert reg.payload(PASSING)["Checks"] == []


# -- fingerprint -------------------------------------------------------------------------


def test_fingerprint_is_stable():
    assert registration(spec(), OWNER, HOST).fingerprint == registration(spec(), OWNER, HOST).fingerprint


@pytest.mark.parametrize("change", [
    {"port": 8102},
    {"tags": ("x",)},
    {"meta": (("Version", "2"),)},
    {"checks": (CheckSpec(CheckKind.HTTP, "http://127.0.0.1:8101/health", "10s", "5s"),)},
    {"ttl_check": False},
    {"ttl": "30s"},
    {"deregister_after": "10m"},
    {"address": "10.0.0.5"},
    {"name": "api"},
])
def test_fingerprint_changes_with_the_registration(change):
    assert registration(spec(**change), OWNER, HOST).fingerprint != registration(spec(), OWNER, HOST).fingerprint


@pytest.mark.parametrize("change", [{"on_fatal": "critical"}, {"exitcodes": (0, 2)}, {"startsecs": 5.0}])
def test_fingerprint_ignores_what_is_not_registered(change):
    assert registration(spec(**change), OWNER, HOST).fingerprint == registration(spec(), OWNER, HOST).fingerprint


# -- ownership ----------------------------------------------------------------------------


def test_owner_id():
    assert owner_id("node1", "/etc/supervisord.conf", "supervisor") == owner_id("node1", "/etc/supervisord.conf",
                                                                                   "supervisor")
    assert owner_id("node1", "/etc/supervisord.conf", "supervisor") != owner_id("node1", "/srv/supervisord.conf",
                                                                                   "supervisor")
    assert owner_id("node1", "/etc/supervisord.conf", "supervisor") != owner_id("node2", "/etc/supervisord.conf",
                                                                                   "supervisor")


def test_a_sidecar_of_ours_is_never_ours_to_reconcile():
    # Consul gives a sidecar its instance's meta; it adds and removes the sidecar with the instance.
    sidecar = {"ID": f"supervisord:{OWNER}:api-sidecar-proxy", "Kind": "connect-proxy",
               "Meta": {"supervisor-consul-owner": OWNER}}
    assert not is_owned(sidecar, OWNER)


def test_is_owned_needs_id_and_meta():
    ours = {"ID": f"supervisord:{OWNER}:web", "Meta": {"supervisor-consul-owner": OWNER}}
    assert is_owned(ours, OWNER)
    assert not is_owned({**ours, "Meta": {}}, OWNER)
    assert not is_owned({**ours, "Meta": None}, OWNER)
    assert not is_owned({**ours, "Meta": {"supervisor-consul-owner": "someone"}}, OWNER)
    assert not is_owned({**ours, "ID": "web"}, OWNER)
    assert not is_owned({**ours, "ID": f"supervisord:{OWNER}x:web"}, OWNER)
    assert not is_owned({**ours, "ID": "supervisord:other:web"}, OWNER)


# -- plan --------------------------------------------------------------------------------------


def desired(reg, wanted) -> dict[str, Desired]:
    return {reg.service_id: Desired(reg, wanted)}


def test_missing_is_registered():
    reg = registration(spec(), OWNER, HOST)
    assert plan(desired(reg, PASS), {}, 100.0, complete=True) == [Register(reg, PASS, CRITICAL)]


def test_missing_without_ttl_check_registers_without_health():
    reg = registration(spec(ttl_check=False), OWNER, HOST)
    assert plan(desired(reg, PASS), {}, 100.0, complete=True) == [Register(reg, None, CRITICAL)]


def test_in_step_sends_nothing_until_the_heartbeat_is_due():
    reg = registration(spec(), OWNER, HOST)  # ttl 15s: a heartbeat every 5s
    actual = {reg.service_id: actual_for(reg, updated_at=100.0)}

    assert plan(desired(reg, PASS), actual, 100.0, complete=True) == []
    assert plan(desired(reg, PASS), actual, 104.9, complete=True) == []
    assert plan(desired(reg, PASS), actual, 105.0, complete=True) == [
        UpdateTTL(reg.service_id, reg.ttl_check_id, PASS)]


def test_no_heartbeat_without_ttl_check():
    reg = registration(spec(ttl_check=False), OWNER, HOST)
    actual = {reg.service_id: actual_for(reg, status=None, output=None, updated_at=0.0)}
    assert plan(desired(reg, PASS), actual, 10_000.0, complete=True) == []


@pytest.mark.parametrize("status, output", [(CRITICAL, "RUNNING pid 42"), (PASSING, "RUNNING pid 41"),
                                            (None, None)])
def test_status_or_note_change_is_an_update_only(status, output):
    reg = registration(spec(), OWNER, HOST)
    actual = {reg.service_id: actual_for(reg, status=status, output=output)}
    assert plan(desired(reg, PASS), actual, 100.0, complete=True) == [
        UpdateTTL(reg.service_id, reg.ttl_check_id, PASS)]


def test_changed_fingerprint_registers_again_keeping_the_status():
    reg = registration(spec(), OWNER, HOST)
    actual = {reg.service_id: actual_for(reg, status=PASSING, fingerprint="old")}
    assert plan(desired(reg, PASS), actual, 100.0, complete=True) == [Register(reg, PASS, PASSING)]


def test_missing_check_registers_again():
    reg = registration(spec(checks=(CheckSpec(CheckKind.HTTP, "http://127.0.0.1:8101/", "10s", "5s"),)), OWNER, HOST)
    actual = {reg.service_id: actual_for(reg, checks=frozenset({reg.ttl_check_id}))}
    assert plan(desired(reg, PASS), actual, 100.0, complete=True) == [Register(reg, PASS, PASSING)]


def test_unwanted_is_deregistered_only_if_present():
    reg = registration(spec(), OWNER, HOST)
    assert plan(desired(reg, None), {}, 100.0, complete=True) == []
    actual = {reg.service_id: actual_for(reg)}
    assert plan(desired(reg, None), actual, 100.0, complete=True) == [Deregister(reg.service_id)]
    assert plan(desired(reg, None), actual, 100.0, complete=False) == [Deregister(reg.service_id)]


def test_keep_heartbeats_with_what_consul_has():
    reg = registration(spec(), OWNER, HOST)
    actual = {reg.service_id: actual_for(reg, status=CRITICAL, output="EXITED unexpectedly", updated_at=100.0)}

    assert plan(desired(reg, KEEP), actual, 101.0, complete=True) == []
    assert plan(desired(reg, KEEP), actual, 105.0, complete=True) == [
        UpdateTTL(reg.service_id, reg.ttl_check_id, Health(CRITICAL, "EXITED unexpectedly"))]


def test_keep_never_registers():
    reg = registration(spec(), OWNER, HOST)
    assert plan(desired(reg, KEEP), {}, 100.0, complete=True) == []
    stale = {reg.service_id: actual_for(reg, fingerprint="old", updated_at=100.0)}
    assert all(not isinstance(op, Register) for op in plan(desired(reg, KEEP), stale, 1000.0, complete=True))
    unknown_status = {reg.service_id: actual_for(reg, status=None, output=None)}
    assert plan(desired(reg, KEEP), unknown_status, 1000.0, complete=True) == []


def test_complete_removes_owned_instances_not_desired():
    reg = registration(spec(), OWNER, HOST)
    gone = registration(spec(namespec="old", group="old", process="old", name="old"), OWNER, HOST)
    actual = {reg.service_id: actual_for(reg), gone.service_id: actual_for(gone)}

    assert plan(desired(reg, PASS), actual, 101.0, complete=True) == [Deregister(gone.service_id)]
    assert plan(desired(reg, PASS), actual, 101.0, complete=False) == []


def test_several_instances():
    one = registration(spec(), OWNER, HOST)
    two = registration(spec(namespec="web:web_02", process="web_02", port=8102), OWNER, HOST)
    wanted = {one.service_id: Desired(one, PASS), two.service_id: Desired(two, FAIL)}
    actual = {one.service_id: actual_for(one, updated_at=100.0)}

    assert plan(wanted, actual, 101.0, complete=True) == [Register(two, FAIL, CRITICAL)]


def test_passing_states_update_but_never_register():
    reg = registration(spec(), OWNER, HOST)
    stopping = Health(CRITICAL, "STOPPING pid 42", registers=False)
    desired = {reg.service_id: Desired(reg, stopping)}
    assert plan(desired, {}, 0.0, complete=True) == []
    have = Actual(reg.service_id, reg.fingerprint, check_ids(reg), PASSING, "RUNNING pid 42", 0.0)
    assert plan(desired, {reg.service_id: have}, 0.0, complete=True) == [
        UpdateTTL(reg.service_id, reg.ttl_check_id, stopping)]


# -- how often a check is written (issue 10: a crash loop) ----------------------------------------

def test_a_failing_checks_new_note_waits_a_second_after_the_last_write():
    reg = registration(spec(), OWNER, HOST)
    loop = Health(CRITICAL, "restarting: 6 exits in 60 s; EXITED unexpectedly with exit status 1")
    actual = {reg.service_id: actual_for(reg, status=CRITICAL, output="restarting: 5 exits in 60 s; …",
                                         updated_at=100.0)}
    assert plan(desired(reg, loop), actual, 100.0 + NOTE_EVERY - 0.01, complete=True) == []
    assert plan(desired(reg, loop), actual, 100.0 + NOTE_EVERY, complete=True) == [
        UpdateTTL(reg.service_id, reg.ttl_check_id, loop)]


def test_a_status_change_never_waits():
    reg = registration(spec(), OWNER, HOST)
    for have, want in ((PASSING, FAIL), (CRITICAL, PASS)):
        actual = {reg.service_id: actual_for(reg, status=have, output="x", updated_at=100.0)}
        assert plan(desired(reg, want), actual, 100.0, complete=True) == [
            UpdateTTL(reg.service_id, reg.ttl_check_id, want)]


def test_desired_in_maintenance_sees_a_crash_loops_hold_end():
    status, at = None, 0.0
    for lap in range(health.FLAP_EXITS):
        at = float(lap)
        status = health.fold(status, ProcessStateChange("web:web_01", "EXITED", "RUNNING", lap, False), at)
        status = health.fold(status, ProcessStateChange("web:web_01", "RUNNING", "STARTING", lap + 1), at + 0.5)
    reg = registration(spec(), OWNER, HOST)
    assert Desired.of(reg, status, spec(), at + 0.5).maintained.status == health.WARNING
    assert Desired.of(reg, status, spec(), at + 0.5 + health.FLAP_HOLD).maintained.status == PASSING


def simulate(laps: int, every: float, spec_: ServiceSpec) -> tuple[list[tuple[float, Health]], list[float]]:
    """A crash loop as supervisord runs it (EXITED, STARTING, RUNNING each lap) folded, planned and
    "applied" after every event, as the sync loop does, and once a second between them; what
    Consul showed after each step, and when a TTL write was made."""
    reg = registration(spec_, OWNER, HOST)
    actual = {reg.service_id: Actual(reg.service_id, reg.fingerprint, check_ids(reg), PASSING, "RUNNING pid 1", 0.0)}
    status = health.ProcessStatus("RUNNING", pid=1, since=0.0)
    shown, writes = [], []
    steps = [(lap * every + offset, ProcessStateChange("web:web_01", state, "", 1000 + lap, False))
             for lap in range(laps)
             for state, offset in (("EXITED", 0.0), ("STARTING", every / 4), ("RUNNING", every / 2))]
    ticks = [(float(t), None) for t in range(int(laps * every) + 40)]
    for at, change in sorted(steps + ticks, key=lambda step: step[0]):
        if change is not None:
            status = health.fold(status, change, at)
            if change.state == "EXITED":
                status = health.with_exitstatus(status, {"statename": "STARTING", "exitstatus": 0}, spec_)
        for operation in plan({reg.service_id: Desired.of(reg, status, spec_, at)}, actual, at, complete=True):
            assert isinstance(operation, UpdateTTL), operation
            writes.append(at)
            actual[reg.service_id] = Actual(reg.service_id, reg.fingerprint, check_ids(reg),
                                            operation.health.status, operation.health.note, at)
        have = actual[reg.service_id]
        shown.append((at, Health(have.status, have.output)))
    return shown, writes


def test_a_crash_loop_costs_at_most_a_write_a_second_and_shows_critical():
    # supervisord's own respawn loop: about 5 laps a second, for 60 s.
    shown, writes = simulate(300, 0.2, spec())
    settled = [h for at, h in shown if 2.0 <= at < 60.0]
    assert all(h.status == CRITICAL and h.note.startswith("restarting: ") for h in settled)
    in_loop = [at for at in writes if 2.0 <= at < 60.0]
    assert len(in_loop) <= 58  # one a second
    assert all(b - a >= NOTE_EVERY for a, b in zip(in_loop, in_loop[1:]))
    # It stops: passing once RUNNING for the hold, with one write.
    last_running = max(at for at, h in shown if at < 60.0)
    passing = [at for at, h in shown if h.status == PASSING and at > 60.0]
    assert passing and passing[0] >= last_running + health.FLAP_HOLD - 0.2


def test_a_slower_loop_is_critical_too_with_fewer_writes():
    # Crashing 3 s after each start (startsecs=1): 20 exits a minute.
    shown, writes = simulate(20, 3.0, spec())
    settled = [h for at, h in shown if 3.0 * health.FLAP_EXITS <= at < 60.0]
    assert settled and all(h.status == CRITICAL for h in settled)
    assert len([at for at in writes if 15.0 <= at < 60.0]) <= 45 / 3 * 2 + 1  # note changes twice a lap at most
