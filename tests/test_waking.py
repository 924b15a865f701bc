"""RunningWakeup on its own: fake clock, a waker that only counts."""
from __future__ import annotations

import math

import pytest

from supervisor_consul.events import ProcessStateChange
from supervisor_consul.rpc import Supervisor
from supervisor_consul.spec import ServiceSpec
from supervisor_consul.waking import WAKE_MARGIN, RunningWakeup
from tests.test_sync import Clock, service

STARTING = ProcessStateChange("web", "STARTING", "STOPPED")
RUNNING = ProcessStateChange("web", "RUNNING", "STARTING", 43)
SUPERVISOR: Supervisor = object()  # type: ignore[assignment]  # only passed through to the waker


class Wakes:
    def __init__(self) -> None:
        self.calls: list[Supervisor] = []

    def __call__(self, supervisor: Supervisor) -> None:
        self.calls.append(supervisor)


def wakeup(clock: Clock) -> tuple[RunningWakeup, Wakes]:
    wakes = Wakes()
    return RunningWakeup(wakes, clock), wakes


def test_due_startsecs_and_the_margin_after_starting_then_woken_once():
    clock = Clock(100.0)
    w, wakes = wakeup(clock)
    assert w.next_due() == math.inf  # nothing awaited: the sync loop need not wake for it
    w.expect(STARTING, service("web", startsecs=2.0))
    assert w.next_due() == pytest.approx(102.0 + WAKE_MARGIN)
    clock.advance(2.0)
    w.wake_due(SUPERVISOR, heard_at=0.0)
    assert wakes.calls == []  # not due yet: within the margin
    clock.advance(0.01)
    w.wake_due(SUPERVISOR, heard_at=0.0)
    w.wake_due(SUPERVISOR, heard_at=0.0)
    assert wakes.calls == [SUPERVISOR]  # once: a due wake is forgotten once done
    assert w.next_due() == math.inf


def test_one_wake_for_every_process_due_at_once():
    clock = Clock(100.0)
    w, wakes = wakeup(clock)
    w.expect(STARTING, service("web", startsecs=1.0))
    w.expect(ProcessStateChange("db", "STARTING", "STOPPED"), service("db", startsecs=1.5))
    w.expect(ProcessStateChange("slow", "STARTING", "STOPPED"), service("slow", startsecs=10.0))
    clock.advance(2)
    w.wake_due(SUPERVISOR, heard_at=0.0)
    assert len(wakes.calls) == 1
    assert w.next_due() == pytest.approx(110.0 + WAKE_MARGIN)  # still awaited


@pytest.mark.parametrize("change, spec", [
    (STARTING, None),  # no [consul:*] section: not ours
    (STARTING, service("web", startsecs=0.0)),  # RUNNING comes with the spawn
])
def test_nothing_awaited_without_a_spec_or_startsecs(change: ProcessStateChange, spec: ServiceSpec | None):
    w, _ = wakeup(Clock(100.0))
    w.expect(change, spec)
    assert w.next_due() == math.inf


def test_any_later_state_ends_the_wait():
    clock = Clock(100.0)
    w, wakes = wakeup(clock)
    w.expect(STARTING, service("web", startsecs=1.0))
    w.expect(RUNNING, service("web", startsecs=1.0))
    assert w.next_due() == math.inf
    clock.advance(5)
    w.wake_due(SUPERVISOR, heard_at=0.0)
    assert wakes.calls == []


def test_no_wake_when_an_event_was_heard_after_it_was_due_or_without_supervisord():
    clock = Clock(100.0)
    w, wakes = wakeup(clock)
    w.expect(STARTING, service("web", startsecs=1.0))
    clock.advance(1.5)
    w.wake_due(SUPERVISOR, heard_at=clock())  # supervisord's loop is passing anyway
    assert wakes.calls == [] and w.next_due() == math.inf
    w.expect(STARTING, service("web", startsecs=1.0))
    clock.advance(1.5)
    w.wake_due(None, heard_at=0.0)  # no supervisord to wake (no configuration read yet)
    assert wakes.calls == [] and w.next_due() == math.inf
