"""entry.py: a SIGTERM that comes while the commands import is held, not lost."""
from __future__ import annotations

import os
import signal

import pytest

from supervisor_consul import entry


@pytest.fixture
def restored():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)
    entry._held.clear()


def test_a_sigterm_while_held_is_noted_and_ends_a_command_that_releases_it(restored, monkeypatch):
    entry.hold_sigterm()
    assert not entry.sigterm_held()
    os.kill(os.getpid(), signal.SIGTERM)  # handled in this thread, between two bytecodes
    assert entry.sigterm_held()
    sent = []
    monkeypatch.setattr(entry.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    entry.release_sigterm()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert sent == [(os.getpid(), signal.SIGTERM)]  # what the held one would have done


def test_releasing_leaves_a_handler_of_someone_elses_alone(restored):
    def mine(signum, frame):
        pass
    signal.signal(signal.SIGTERM, mine)
    entry.release_sigterm()
    assert signal.getsignal(signal.SIGTERM) is mine
