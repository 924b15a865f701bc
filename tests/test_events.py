"""events.hint_for: what each supervisord event tells the sync loop."""
from __future__ import annotations

import io

import pytest

from supervisor_consul.events import GroupsChanged, ProcessStateChange, SupervisorStateChange, hint_for
from supervisor_consul.protocol import read_event


def event(eventname: str, payload: str = ""):
    text = (f"ver:3.0 server:supervisor serial:1 pool:consul poolserial:1 "
            f"eventname:{eventname} len:{len(payload)}\n{payload}")
    return read_event(io.StringIO(text, newline=""))


# Payloads as supervisord 4.3.0 builds them (supervisor/events.py): no trailing newline but GROUP's.
@pytest.mark.parametrize("eventname, payload, expected", [
    ("PROCESS_STATE_STARTING", "processname:web groupname:web from_state:STOPPED tries:0",
     ProcessStateChange("web", "STARTING", "STOPPED", 0, None)),
    ("PROCESS_STATE_RUNNING", "processname:web groupname:web from_state:STARTING pid:4242",
     ProcessStateChange("web", "RUNNING", "STARTING", 4242, None)),
    ("PROCESS_STATE_BACKOFF", "processname:web groupname:web from_state:STARTING tries:3",
     ProcessStateChange("web", "BACKOFF", "STARTING", 0, None)),
    ("PROCESS_STATE_STOPPING", "processname:web groupname:web from_state:RUNNING pid:4242",
     ProcessStateChange("web", "STOPPING", "RUNNING", 4242, None)),
    ("PROCESS_STATE_STOPPED", "processname:web groupname:web from_state:STOPPING pid:4242",
     ProcessStateChange("web", "STOPPED", "STOPPING", 4242, None)),
    ("PROCESS_STATE_STOPPED", "processname:web groupname:web from_state:BACKOFF pid:0",
     ProcessStateChange("web", "STOPPED", "BACKOFF", 0, None)),
    ("PROCESS_STATE_EXITED", "processname:web groupname:web from_state:RUNNING expected:0 pid:4242",
     ProcessStateChange("web", "EXITED", "RUNNING", 4242, False)),
    ("PROCESS_STATE_EXITED", "processname:web groupname:web from_state:RUNNING expected:1 pid:4242",
     ProcessStateChange("web", "EXITED", "RUNNING", 4242, True)),
    ("PROCESS_STATE_FATAL", "processname:web groupname:web from_state:BACKOFF",
     ProcessStateChange("web", "FATAL", "BACKOFF", 0, None)),
    ("PROCESS_STATE_UNKNOWN", "processname:web groupname:web from_state:RUNNING",
     ProcessStateChange("web", "UNKNOWN", "RUNNING", 0, None)),
])
def test_process_state_events(eventname, payload, expected):
    assert hint_for(event(eventname, payload)) == expected


def test_exited_expected_is_a_bool():
    hint = hint_for(event("PROCESS_STATE_EXITED",
                          "processname:web groupname:web from_state:RUNNING expected:1 pid:1"))
    assert hint.expected is True
    hint = hint_for(event("PROCESS_STATE_EXITED",
                          "processname:web groupname:web from_state:RUNNING expected:0 pid:1"))
    assert hint.expected is False


def test_namespec_with_numprocs():
    hint = hint_for(event("PROCESS_STATE_RUNNING", "processname:web_01 groupname:web from_state:STARTING pid:7"))
    assert hint.namespec == "web:web_01"


def test_namespec_of_a_single_process():
    hint = hint_for(event("PROCESS_STATE_RUNNING", "processname:netcat groupname:netcat from_state:STARTING pid:7"))
    assert hint.namespec == "netcat"


def test_namespec_in_a_group_section():
    hint = hint_for(event("PROCESS_STATE_RUNNING", "processname:a groupname:g from_state:STARTING pid:7"))
    assert hint.namespec == "g:a"


def test_process_state_without_names_gives_none():
    assert hint_for(event("PROCESS_STATE_RUNNING", "from_state:STARTING pid:7")) is None


def test_unreadable_pid_is_zero():
    hint = hint_for(event("PROCESS_STATE_RUNNING", "processname:web groupname:web from_state:STARTING pid:x"))
    assert hint.pid == 0


@pytest.mark.parametrize("eventname", ["PROCESS_GROUP_ADDED", "PROCESS_GROUP_REMOVED"])
def test_process_group_events(eventname):
    assert hint_for(event(eventname, "groupname:web\n")) == GroupsChanged("web")


@pytest.mark.parametrize("state", ["RUNNING", "STOPPING"])
def test_supervisor_state_change(state):
    assert hint_for(event(f"SUPERVISOR_STATE_CHANGE_{state}")) == SupervisorStateChange(state)


@pytest.mark.parametrize("eventname, payload", [
    ("TICK_5", "when:1795542420"),
    ("TICK_60", "when:1795542420"),
    ("TICK_3600", "when:1795542420"),
])
def test_ticks_carry_nothing(eventname, payload):
    assert hint_for(event(eventname, payload)) is None


@pytest.mark.parametrize("eventname, payload", [
    ("PROCESS_LOG_STDOUT", "processname:web groupname:web channel:stdout\nhello"),
    ("REMOTE_COMMUNICATION", "type:x\ndata"),
    ("SOMETHING_NEW", "a:b"),
])
def test_unknown_events_carry_nothing(eventname, payload):
    assert hint_for(event(eventname, payload)) is None


@pytest.mark.parametrize("eventname", ["PROCESS_STATE_", "PROCESS_STATE_CRASHED", "PROCESS_STATE_running",
                                       "SUPERVISOR_STATE_CHANGE_", "SUPERVISOR_STATE_CHANGE_PAUSED"])
def test_states_supervisord_does_not_have_carry_nothing(eventname):
    # A state outside supervisord's would otherwise reach the state mapping as "lost track of it".
    assert hint_for(event(eventname, "processname:web groupname:web from_state:RUNNING pid:7")) is None
