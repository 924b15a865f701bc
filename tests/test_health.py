"""health: the state-mapping table, from supervisord states to what Consul shows."""
from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from supervisor_consul.events import ProcessStateChange
from supervisor_consul.health import (
    CRITICAL,
    FLAP_EXITS,
    FLAP_HOLD,
    FLAP_WINDOW,
    KEEP,
    MAX_EXITS_KEPT,
    PASSING,
    WARNING,
    Health,
    ProcessStatus,
    died,
    exitstatus_of,
    flapping,
    fold,
    from_info,
    in_maintenance,
    wanted,
    with_exitstatus,
)
from supervisor_consul.spec import ServiceSpec

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


def test_exited_note_without_exit_status_says_it_is_unknown():
    note = wanted(ProcessStatus("EXITED", expected=False, since=NOW), spec(), NOW).note
    assert note == "EXITED unexpectedly, exit status unknown"


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


# -- the flapping rule (a crash loop) ------------------------------------------------------

def laps(count: int, start: float = NOW, every: float = 0.2, status: ProcessStatus | None = None,
         pid: int = 100) -> tuple[ProcessStatus, float]:
    """`count` laps of supervisord's respawn loop (EXITED, STARTING, RUNNING), one every
    `every` seconds from `start`; the status after the last RUNNING, and its time."""
    at = start
    for lap in range(count):
        status = fold(status, change("EXITED", "RUNNING", pid=pid + lap, expected=False), at)
        status = fold(status, change("STARTING", "EXITED"), at + every / 4)
        at += every / 2
        status = fold(status, change("RUNNING", "STARTING", pid=pid + lap + 1), at)
        at += every / 2
    return status, at - every / 2


def test_fewer_exits_than_the_threshold_pass_as_before():
    status, at = laps(FLAP_EXITS - 1)
    assert not flapping(status, at)
    assert wanted(status, spec(), at) == Health(PASSING, f"RUNNING pid {status.pid}")


def test_a_crash_loop_is_critical_while_running_with_the_count_in_the_note():
    status, at = laps(FLAP_EXITS)
    assert flapping(status, at)
    assert wanted(status, spec(), at) == Health(
        CRITICAL, f"restarting: 5 exits in 60 s; RUNNING pid {status.pid}, passing once up 30 s")


def test_a_crash_loop_is_critical_while_exited_with_the_exit_note():
    status, at = laps(FLAP_EXITS + 2)
    exited = fold(status, change("EXITED", "RUNNING", pid=status.pid, expected=False), at + 0.1)
    exited = replace(exited, exitstatus=1)
    assert wanted(exited, spec(), at + 0.1) == Health(
        CRITICAL, "restarting: 8 exits in 60 s; EXITED unexpectedly with exit status 1")


def test_every_sample_of_a_loop_after_the_threshold_is_critical():
    """Sampled at every event and between them, as a poll of Consul would."""
    status, at = None, NOW
    shown = []
    for lap in range(50):
        for state, offset in (("EXITED", 0.0), ("STARTING", 0.01), ("RUNNING", 0.02)):
            status = fold(status, change(state, "", pid=lap, expected=False), at + offset)
            shown.append((lap, wanted(status, spec(), at + offset + 0.005)))
        shown.append((lap, wanted(status, spec(), at + 0.15)))
        at += 0.2
    after = [w for lap, w in shown if lap >= FLAP_EXITS - 1]
    assert after and all(w.status == CRITICAL and w.note.startswith("restarting: ") for w in after)


def test_a_loop_passes_once_it_stayed_running_for_the_hold():
    status, at = laps(12)
    assert wanted(status, spec(), at + FLAP_HOLD - 0.1).status == CRITICAL
    assert wanted(status, spec(), at + FLAP_HOLD) == Health(PASSING, f"RUNNING pid {status.pid}")


def test_the_hold_counts_from_the_last_running_not_the_first():
    status, at = laps(6)
    later, at = laps(1, start=at + FLAP_HOLD - 1, status=status, pid=500)  # crashed again just before
    assert wanted(later, spec(), at + FLAP_HOLD - 0.1).status == CRITICAL
    assert wanted(later, spec(), at + FLAP_HOLD).status == PASSING


def test_exits_older_than_the_window_do_not_count():
    status, at = laps(FLAP_EXITS - 1, every=16)  # exits at 0, 16, 32 and 48 s
    status, at = laps(1, start=NOW + FLAP_WINDOW, status=status)  # the first is 60 s old by the next
    assert len(status.exits) == FLAP_EXITS - 1
    assert not flapping(status, at)


def test_a_relapse_after_the_hold_is_a_new_loop_at_once():
    status, at = laps(FLAP_EXITS)
    first = status.flapping_since
    relapse_at = at + FLAP_HOLD + 1  # passing in between; the earlier exits still within the window
    status = fold(status, change("EXITED", "RUNNING", pid=status.pid, expected=False), relapse_at)
    assert flapping(status, relapse_at)
    assert status.flapping_since == relapse_at != first


@pytest.mark.parametrize("end", ["STOPPED", "FATAL"])
def test_stopped_and_fatal_end_a_loop(end):
    status, at = laps(10)
    status = fold(status, change(end, "RUNNING", pid=status.pid), at + 1)
    assert (status.exits, status.flapping_since) == ((), 0.0)
    started = fold(fold(status, change("STARTING", end), at + 2), change("RUNNING", "STARTING", pid=9), at + 3)
    assert wanted(started, spec(), at + 3) == Health(PASSING, "RUNNING pid 9")


def test_backoff_in_a_loop_shows_the_loop_but_still_never_registers():
    status, at = laps(FLAP_EXITS)
    backoff = fold(status, change("BACKOFF", "STARTING"), at + 0.1)
    health_ = wanted(backoff, spec(), at + 0.1)
    assert health_.status == CRITICAL and health_.note.startswith("restarting: 5 exits in 60 s; BACKOFF")
    assert health_.registers is False


def test_stopping_and_unknown_keep_their_own_notes_during_a_loop():
    status, at = laps(FLAP_EXITS)
    stopping = fold(status, change("STOPPING", "RUNNING", pid=status.pid), at + 0.1)
    assert wanted(stopping, spec(), at + 0.1) == Health(CRITICAL, f"STOPPING pid {status.pid}", registers=False)


def test_a_loop_without_a_check_is_not_registered():
    status, at = laps(FLAP_EXITS)
    assert wanted(status, spec(ttl_check=False), at) is None
    assert wanted(status, spec(ttl_check=False), at + FLAP_HOLD) == Health(PASSING, f"RUNNING pid {status.pid}")


def test_the_history_is_bounded():
    status, at = laps(MAX_EXITS_KEPT + 50, every=0.01)
    assert len(status.exits) == MAX_EXITS_KEPT
    assert wanted(status, spec(), at).note.startswith(f"restarting: {MAX_EXITS_KEPT}+ exits in 60 s")


# -- the flapping rule and deregister_after ----------------------------------------------------


def test_a_loop_is_deregistered_deregister_after_from_its_first_exit_and_not_registered_again():
    one_minute = spec(deregister_after="1m")
    status, at = laps(FLAP_EXITS)
    began = status.flapping_since
    assert began == pytest.approx(NOW + (FLAP_EXITS - 1) * 0.2)  # the exit that made it a loop
    # It goes on: every event is recent, but the check has been critical all along.
    status, at = laps(300, start=at + 0.1, status=status)
    assert at - began >= 60 and flapping(status, at)
    assert wanted(status, one_minute, at) is None
    assert wanted(status, one_minute, at + FLAP_HOLD) == Health(PASSING, f"RUNNING pid {status.pid}")


def test_a_loop_shorter_than_deregister_after_stays_registered():
    status, at = laps(100)
    assert wanted(status, spec(deregister_after="1m"), at).status == CRITICAL


# -- the flapping rule in maintenance ------------------------------------------------------------


def test_a_loop_in_maintenance_is_a_warning_until_the_hold_is_over():
    status, at = laps(FLAP_EXITS)
    shown = in_maintenance(status, spec(), at)
    assert shown.status == WARNING
    assert shown.note == f"restarting: 5 exits in 60 s; RUNNING pid {status.pid}, passing once up 30 s " \
                         "(kept registered: in maintenance)"
    assert in_maintenance(status, spec(), at + FLAP_HOLD) == Health(PASSING, f"RUNNING pid {status.pid}")
    # Without a clock: as of its last change, when the hold had just begun.
    assert in_maintenance(status, spec()).status == WARNING


# -- from_info keeps the exit history -------------------------------------------------------------


def test_a_reconcile_keeps_the_history():
    status, at = laps(FLAP_EXITS)
    same = from_info(status, info("RUNNING", pid=status.pid, now=at + 1), spec())
    assert same is status
    other_pid = from_info(status, info("RUNNING", pid=status.pid + 1, now=at + 1), spec())
    assert (other_pid.exits, other_pid.flapping_since) == (status.exits, status.flapping_since)
    assert wanted(other_pid, spec(), at + 1).status == CRITICAL
    exited = from_info(status, info("EXITED", stop=at + 1, exitstatus=1, now=at + 1), spec())
    assert (exited.exits, exited.flapping_since) == (status.exits, status.flapping_since)
    assert wanted(exited, spec(), at + 1).note == "restarting: 5 exits in 60 s; EXITED unexpectedly with exit status 1"


@pytest.mark.parametrize("end", ["STOPPED", "FATAL"])
def test_a_reconcile_that_finds_it_stopped_ends_the_loop(end):
    status, at = laps(FLAP_EXITS)
    ended = from_info(status, info(end, now=at + 1, stop=at + 1), spec())
    assert (ended.exits, ended.flapping_since) == ((), 0.0)


# -- the exit status of an exit (issue 10, item 13) ------------------------------------------------

EXITED_AT = NOW - 0.3  # when the listener folded the EXITED event


def exited_event() -> ProcessStatus:
    return fold(fold(None, change("RUNNING", "STARTING", pid=42), NOW - 5),
                change("EXITED", "RUNNING", pid=42, expected=False), EXITED_AT)


@pytest.mark.parametrize("answer", [
    # supervisord spawned it again before answering: spawn() forgets the exit status, getProcessInfo says 0.
    {"statename": "STARTING", "pid": 43, "start": int(NOW), "stop": int(EXITED_AT - 0.1), "exitstatus": 0},
    {"statename": "RUNNING", "pid": 43, "start": int(NOW), "stop": int(EXITED_AT - 0.1), "exitstatus": 0},
    {"statename": "BACKOFF", "pid": 0, "start": int(NOW), "stop": int(NOW), "exitstatus": 0},
    # Stopped meanwhile: the status is the stop's.
    {"statename": "STOPPED", "pid": 0, "start": int(NOW - 5), "stop": int(NOW), "exitstatus": 0},
    # EXITED again, after a later lap: its stop is after we heard of ours.
    {"statename": "EXITED", "pid": 0, "start": int(NOW), "stop": int(NOW) + 1, "exitstatus": 1},
    # EXITED again within the same second, with an outcome the event did not tell.
    {"statename": "EXITED", "pid": 0, "start": int(NOW), "stop": int(EXITED_AT), "exitstatus": 0},
])
def test_an_answer_about_another_moment_leaves_the_exit_status_unknown(answer):
    status = with_exitstatus(exited_event(), info(**answer), spec())
    assert status.exitstatus is None
    assert wanted(status, spec(), NOW).note == "EXITED unexpectedly, exit status unknown"


def test_an_answer_still_exited_gives_the_exit_status():
    answer = info("EXITED", pid=0, start=int(NOW - 5), stop=int(EXITED_AT), exitstatus=1)
    status = with_exitstatus(exited_event(), answer, spec())
    assert wanted(status, spec(), NOW).note == "EXITED unexpectedly with exit status 1"


def test_an_unknown_exit_status_is_filled_in_by_a_reconcile_that_finds_it_still_exited():
    unknown = with_exitstatus(exited_event(), info("STARTING", pid=43, exitstatus=0), spec())
    assert unknown.exitstatus is None
    later = from_info(unknown, info("EXITED", pid=0, stop=int(EXITED_AT), exitstatus=1), spec())
    assert later.exitstatus == 1 and later.since == EXITED_AT
    # ... and never by one about a later exit.
    assert from_info(unknown, info("EXITED", stop=int(NOW) + 2, exitstatus=0), spec()).exitstatus is None


def test_a_reconcile_of_an_exit_never_heard_of_takes_its_own_answer():
    status = from_info(None, info("EXITED", stop=NOW - 10, exitstatus=0), spec())
    assert (status.exitstatus, status.expected) == (0, True)
    assert wanted(status, spec(), NOW).note == "EXITED expectedly with exit status 0"


# -- an exit the listener saw before supervisord reaped it (exit_watch.py) ------------------

def test_a_death_seen_first_shows_as_supervisords_exited_will():
    running = after(change("RUNNING", "STARTING", 42))
    killed = died(running, exitstatus_of(signal.SIGKILL), spec(), NOW + 1)  # a SIGKILL's wait status
    assert (killed.state, killed.pid, killed.exitstatus, killed.expected) == ("EXITED", 42, -1, False)
    assert wanted(killed, spec(), NOW + 1) == Health(CRITICAL, "EXITED unexpectedly: killed by a signal")
    assert killed.exits == (NOW + 1,)
    # supervisord's own event for the same exit then changes nothing, and is not a second exit.
    told = fold(killed, change("EXITED", "RUNNING", 42, expected=False), NOW + 2)
    assert told == replace(killed, seen_dead=False)  # the same exit, now told by supervisord too


def test_a_clean_exit_seen_first_is_expected_by_exitcodes():
    running = after(change("RUNNING", "STARTING", 42))
    assert wanted(died(running, 0, spec(), NOW), spec(), NOW) == Health(CRITICAL, "EXITED expectedly with exit "
                                                                                  "status 0")
    assert wanted(died(running, exitstatus_of(3 << 8), spec(exitcodes=(0, 3)), NOW), spec(), NOW).note == \
        "EXITED expectedly with exit status 3"
    assert wanted(died(running, None, spec(), NOW), spec(), NOW).note == "EXITED unexpectedly, exit status unknown"


def test_supervisord_still_saying_running_for_the_dead_pid_keeps_the_death():
    killed = died(after(change("RUNNING", "STARTING", 42)), -1, spec(), NOW)
    assert from_info(killed, {"statename": "RUNNING", "pid": 42, "now": NOW}, spec()) is killed
    respawned = from_info(killed, {"statename": "RUNNING", "pid": 43, "now": NOW + 1}, spec())
    assert (respawned.state, respawned.pid) == ("RUNNING", 43)


def test_a_death_supervisord_still_denies_seconds_later_was_no_death():
    killed = died(after(change("RUNNING", "STARTING", 42)), -1, spec(), NOW)
    alive = from_info(killed, {"statename": "RUNNING", "pid": 42, "now": NOW + 10}, spec())
    assert (alive.state, alive.pid) == ("RUNNING", 42)


def test_two_exited_events_of_one_pid_are_two_exits_unless_the_listener_saw_the_first():
    first = after(change("RUNNING", "STARTING", 42), change("EXITED", "RUNNING", 42, expected=False))
    again = fold(first, change("EXITED", "RUNNING", 42, expected=False), NOW + 1)
    assert len(again.exits) == 2 and again.since == NOW + 1
