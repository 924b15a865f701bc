"""health: the state-mapping table, from supervisord states to what Consul shows."""
from __future__ import annotations

import pytest

from supervisor_consul.config import ServiceSpec
from supervisor_consul.events import ProcessStateChange
from supervisor_consul.health import CRITICAL, KEEP, PASSING, Health, ProcessStatus, fold, from_info, wanted

NOW = 1_800_000_000.0


def spec(**overrides) -> ServiceSpec:
    return ServiceSpec(**{"namespec": "web", "group": "web", "process": "web", "name": "web", **overrides})


def change(state: str, from_state: str = "", pid: int = 0, expected: bool | None = None) -> ProcessStateChange:
    return ProcessStateChange("web", state, from_state, pid, expected)


def after(*changes: ProcessStateChange, at: float = NOW) -> ProcessStatus | None:
    status = None
    for c in changes:
        status = fold(status, c, at)
    return status


# -- fold + wanted: the table -------------------------------------------------------


def test_running_is_passing_with_pid():
    status = after(change("RUNNING", "STARTING", pid=4242))
    assert status == ProcessStatus("RUNNING", pid=4242, since=NOW)
    assert wanted(status, spec(), NOW) == Health(PASSING, "RUNNING pid 4242")


def test_starting_with_no_previous_keeps_what_consul_has():
    status = after(change("STARTING", "STOPPED"))
    assert status.state == "STARTING"
    assert wanted(status, spec(), NOW) is KEEP


def test_starting_after_running_keeps_the_running_status():
    running = after(change("RUNNING", "STARTING", pid=1))
    assert fold(running, change("STARTING", "STOPPED"), NOW + 5) is running


def test_starting_after_exited_stays_critical():
    status = after(change("RUNNING", "STARTING", pid=1), change("EXITED", "RUNNING", pid=1, expected=False),
                   change("STARTING", "EXITED"))
    assert status.state == "EXITED"
    health = wanted(status, spec(), NOW)
    assert health.status == CRITICAL
    assert "unexpectedly" in health.note


@pytest.mark.parametrize("state, from_state, pid, expected, note_part", [
    ("BACKOFF", "STARTING", 0, None, "BACKOFF"),
    ("STOPPING", "RUNNING", 42, None, "STOPPING pid 42"),
    ("EXITED", "RUNNING", 42, False, "EXITED"),
    ("EXITED", "RUNNING", 42, True, "EXITED"),
    ("UNKNOWN", "RUNNING", 0, None, "UNKNOWN"),
])
def test_critical_states(state, from_state, pid, expected, note_part):
    health = wanted(after(change(state, from_state, pid, expected)), spec(), NOW)
    assert health.status == CRITICAL
    assert note_part in health.note


def test_stopped_is_deregistered():
    assert wanted(after(change("STOPPED", "STOPPING", pid=42)), spec(), NOW) is None


def test_fatal_is_deregistered_by_default():
    assert wanted(after(change("FATAL", "BACKOFF")), spec(), NOW) is None


def test_fatal_with_on_fatal_critical():
    health = wanted(after(change("FATAL", "BACKOFF")), spec(on_fatal="critical"), NOW)
    assert health.status == CRITICAL
    assert "FATAL" in health.note


@pytest.mark.parametrize("expected, word", [(False, "unexpectedly"), (True, "expectedly")])
def test_exited_note_says_how_and_exit_status(expected, word):
    status = ProcessStatus("EXITED", pid=42, expected=expected, exitstatus=3, since=NOW)
    note = wanted(status, spec(), NOW).note
    assert note.split()[1] == word
    assert "exit status 3" in note


def test_exited_note_without_exit_status():
    note = wanted(ProcessStatus("EXITED", expected=False, since=NOW), spec(), NOW).note
    assert note == "EXITED unexpectedly"


# -- check = none ----------------------------------------------------------------------


def test_check_none_registers_only_running():
    no_check = spec(ttl_check=False)
    assert wanted(after(change("RUNNING", "STARTING", pid=7)), no_check, NOW) == Health(PASSING, "RUNNING pid 7")
    for state in ("BACKOFF", "STOPPING", "EXITED", "UNKNOWN", "STOPPED", "FATAL"):
        assert wanted(after(change(state, "RUNNING", pid=7)), no_check, NOW) is None, state
    assert wanted(after(change("FATAL", "BACKOFF")), spec(ttl_check=False, on_fatal="critical"), NOW) is None


# -- deregister_after ------------------------------------------------------------------


def test_critical_longer_than_deregister_after_is_deregistered():
    status = ProcessStatus("EXITED", expected=False, exitstatus=1, since=NOW)
    five_minutes = spec(deregister_after="5m")
    assert wanted(status, five_minutes, NOW + 299).status == CRITICAL
    assert wanted(status, five_minutes, NOW + 300) is None


def test_deregister_after_off_keeps_it_critical():
    status = ProcessStatus("EXITED", expected=False, exitstatus=1, since=NOW)
    assert wanted(status, spec(deregister_after=None), NOW + 10 * 86400).status == CRITICAL


def test_passing_is_never_deregistered_by_age():
    status = ProcessStatus("RUNNING", pid=1, since=NOW)
    assert wanted(status, spec(deregister_after="1s"), NOW + 86400).status == PASSING


# -- from_info ---------------------------------------------------------------------------


def info(statename: str, **fields) -> dict:
    return {"name": "web", "group": "web", "statename": statename, "pid": 0, "start": NOW - 100,
            "stop": 0, "now": NOW, "exitstatus": 0, **fields}


def test_from_info_without_previous():
    assert from_info(None, info("RUNNING", pid=42), spec()) == ProcessStatus("RUNNING", pid=42, since=NOW)


def test_from_info_keeps_previous_when_state_agrees():
    previous = ProcessStatus("RUNNING", pid=42, since=NOW - 500)
    assert from_info(previous, info("RUNNING", pid=42), spec()) is previous

    exited = ProcessStatus("EXITED", pid=42, expected=False, exitstatus=1, since=NOW - 50)
    assert from_info(exited, info("EXITED", pid=0, stop=NOW - 40, exitstatus=1), spec()) is exited


def test_from_info_replaces_previous_when_state_changed():
    previous = ProcessStatus("RUNNING", pid=42, since=NOW - 500)
    status = from_info(previous, info("EXITED", stop=NOW - 10, exitstatus=1), spec())
    assert status == ProcessStatus("EXITED", pid=0, expected=False, exitstatus=1, since=NOW - 10)


def test_from_info_replaces_running_with_another_pid():
    previous = ProcessStatus("RUNNING", pid=42, since=NOW - 500)
    assert from_info(previous, info("RUNNING", pid=43), spec()) == ProcessStatus("RUNNING", pid=43, since=NOW)


def test_from_info_starting_keeps_previous():
    previous = ProcessStatus("EXITED", pid=42, expected=False, exitstatus=1, since=NOW - 5)
    assert from_info(previous, info("STARTING"), spec()) is previous
    assert from_info(None, info("STARTING"), spec()) == ProcessStatus("STARTING", since=NOW)


@pytest.mark.parametrize("exitstatus, expected", [(0, True), (2, True), (1, False)])
def test_from_info_exited_computes_expected_from_exitcodes(exitstatus, expected):
    status = from_info(None, info("EXITED", stop=NOW - 10, exitstatus=exitstatus), spec(exitcodes=(0, 2)))
    assert status.expected is expected
    assert status.exitstatus == exitstatus
    assert status.since == NOW - 10


def test_from_info_adds_exit_status_to_an_exited_event():
    from_event = fold(None, change("EXITED", "RUNNING", pid=42, expected=False), NOW - 3)
    status = from_info(from_event, info("EXITED", stop=NOW - 3, exitstatus=9), spec())
    assert status.exitstatus == 9
    assert status.expected is False  # the event said so
    assert status.since == NOW - 3


def test_death_by_signal_is_named_not_shown_as_exit_status_minus_one():
    # supervisord records -1 as the exit status of any process a signal ended.
    status = ProcessStatus("EXITED", pid=42, expected=False, exitstatus=-1, since=NOW)
    assert wanted(status, spec(), NOW).note == "EXITED unexpectedly: killed by a signal"
