"""RUNNING without supervisord's extra second.

After STARTING, supervisord turns a process RUNNING in the first pass of its
main loop once startsecs have gone by.  When nothing else wakes it, that pass
comes when poll() times out, and a listener pool ordered before the program
(priority=-2) has already had its turn in that pass: the RUNNING event waits
for the next pass, a second later.  RunningWakeup notes when the pass that
finds a process RUNNING is due, and wakes supervisord then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .events import ProcessStateChange
from .rpc import Supervisor
from .spec import ServiceSpec

WAKE_MARGIN = 0.0005  # seconds past startsecs before waking supervisord: float rounding (see RunningWakeup.expect)


class RunningWakeup:
    """When each starting process is due to turn RUNNING, and the wake then.
    `waker` makes the actual call (rpc.Waker: one request, never blocking)."""

    def __init__(self, waker: Callable[[Supervisor], None], monotonic: Callable[[], float] = time.monotonic) -> None:
        self._waker = waker
        self._monotonic = monotonic
        self._wake_at: dict[str, float] = {}  # namespec -> when supervisord should find it RUNNING

    def expect(self, change: ProcessStateChange, spec: ServiceSpec | None) -> None:
        """Take in one state change of a process; `spec`: its [consul:*] section,
        None when it has none (it is not ours to hurry).  Any state but STARTING
        means the wait for RUNNING is over, one way or another."""
        if change.state != "STARTING":
            self._wake_at.pop(change.namespec, None)
            return
        if spec is not None and spec.startsecs > 0:
            # The event came after the spawn, so this is after supervisord's threshold.
            self._wake_at[change.namespec] = self._monotonic() + spec.startsecs + WAKE_MARGIN

    def wake_due(self, supervisor: Supervisor | None, heard_at: float) -> None:
        """One cheap request wakes supervisord's loop for a few passes: the first
        turns every due process RUNNING, the next sends the events.  Not needed
        when an event arrived after a process was due: each answer we give wakes
        supervisord again, so its events follow anyway (as during a burst).
        `heard_at`: monotonic time the last event arrived (Inbox.heard_at)."""
        now = self._monotonic()
        due = [at for at in self._wake_at.values() if at <= now]
        if not due:
            return
        self._wake_at = {namespec: at for namespec, at in self._wake_at.items() if at > now}
        if max(due) <= heard_at or supervisor is None:
            return
        self._waker(supervisor)

    def next_due(self) -> float:
        """Monotonic time the next wake falls due; math.inf when none is awaited."""
        return min(self._wake_at.values(), default=math.inf)
