"""pulse: the claim's heartbeat, on its own clock, only while the sync loop makes progress."""
from __future__ import annotations

import logging
import threading

from supervisor_consul.agent import ConsulError
from supervisor_consul.health import PASSING, Health
from supervisor_consul.pulse import STALL_AFTER, Pulse
from tests.harness import wait_for
from tests.test_sync import Clock

NOTE = Health(PASSING, "supervisord pid 1 serves 3 process(es) in Consul")


def test_it_beats_every_period_and_at_once_when_the_note_changes():
    clock, beats = Clock(100.0), []
    pulse = Pulse(lambda cid, health: beats.append((cid, health.note)), lambda: None, clock, background=False)
    pulse.keep("c:alive", NOTE, 5.0, written=True)
    pulse.beat_if_due()
    assert beats == []
    clock.advance(5)
    pulse.beat_if_due()
    pulse.beat_if_due()
    assert beats == [("c:alive", NOTE.note)]
    pulse.keep("c:alive", Health(PASSING, "supervisord pid 1 serves 4 process(es) in Consul"), 5.0)
    pulse.beat_if_due()
    assert beats[-1] == ("c:alive", "supervisord pid 1 serves 4 process(es) in Consul")
    pulse.stop()
    clock.advance(50)
    pulse.beat_if_due()
    assert len(beats) == 2


def test_a_stalled_sync_loop_stops_the_heartbeat_said_once_and_its_end(caplog):
    clock, beats = Clock(100.0), []
    pulse = Pulse(lambda cid, health: beats.append(cid), lambda: None, clock, background=False)
    pulse.keep("c:alive", NOTE, 5.0, written=True)
    for _ in range(20):  # 100 s without a round
        clock.advance(5)
        pulse.beat_if_due()
    assert len(beats) == STALL_AFTER // 5 - 1
    assert caplog.text.count("the sync loop has made no progress") == 1
    caplog.set_level(logging.INFO, logger="supervisor_consul")
    pulse.progress()
    pulse.beat_if_due()
    assert "the claim's heartbeat goes on" in caplog.text and len(beats) == STALL_AFTER // 5


def test_a_forgotten_claim_is_handed_back_to_be_registered_again():
    clock, lost = Clock(100.0), []

    def beat(cid, health):
        raise ConsulError("... answered PUT /v1/agent/check/pass: 404 not found", status=404)

    pulse = Pulse(beat, lambda: lost.append(True), clock, background=False)
    pulse.keep("c:alive", NOTE, 5.0)
    pulse.beat_if_due()
    assert lost == [True]


def test_in_the_background_it_beats_on_its_own():
    beats = threading.Semaphore(0)
    pulse = Pulse(lambda cid, health: beats.release(), lambda: None)
    try:
        pulse.keep("c:alive", NOTE, 0.05)
        for _ in range(3):
            assert beats.acquire(timeout=5)
        pulse.stop()
        wait_for(lambda: not beats.acquire(timeout=0.2), message="no beat once stopped")
    finally:
        pulse.close()
