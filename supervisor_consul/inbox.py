"""Hints from the event loop to the sync loop.

The event loop posts; the sync loop takes everything posted so far as one
Batch each round.  Posting never waits on I/O, so a slow agent never stalls
supervisord's event pool.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .events import Hint
from .exit_watch import ProcessExit
from .script_results import ScriptResult

MAX_PENDING_HINTS = 100_000  # past this, hints are dropped for one reconcile


@dataclass
class Batch:
    hints: list[Hint | ScriptResult | ProcessExit] = field(default_factory=list)
    reconcile: bool = False
    retry_refused: bool = False  # an operator asked (SIGHUP): retry refused operations now too
    closed: bool = False


class Inbox:
    """Hints from the event loop to the sync loop.  Posting never waits on I/O."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ready = threading.Condition()
        self._hints: deque[Hint | ScriptResult | ProcessExit] = deque()
        self._reconcile = False
        self._retry_refused = False
        self._closed = False
        self._monotonic = monotonic
        self.heard_at = 0.0  # monotonic time the last event of any kind arrived

    def heard(self) -> None:
        """An event arrived: supervisord's main loop is awake."""
        self.heard_at = self._monotonic()

    def post(self, hint: Hint | ScriptResult | ProcessExit) -> None:
        with self._ready:
            if len(self._hints) >= MAX_PENDING_HINTS:
                self._hints.clear()
                self._reconcile = True
            self._hints.append(hint)
            self._ready.notify()

    def request_reconcile(self, retry_refused: bool = False) -> None:
        """retry_refused: the operator may just have fixed what the agent refused
        (a policy, a token), so don't wait out REFUSED_RETRY."""
        with self._ready:
            self._reconcile = True
            self._retry_refused |= retry_refused
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def take(self, timeout: float) -> Batch:
        with self._ready:
            if not (self._hints or self._reconcile or self._closed):
                self._ready.wait(timeout)
            batch = Batch(list(self._hints), self._reconcile, self._retry_refused, self._closed)
            self._hints.clear()
            self._reconcile = self._retry_refused = False
            return batch
