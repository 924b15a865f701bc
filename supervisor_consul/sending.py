"""Sending a round's operations to the agent without waiting on each in turn.

One after another, a slow agent (20 ms a request) keeps up with 50 a second:
200 instances at ttl 3 s would expire while the listener is still sending,
and during a burst of registrations the first instances would expire before
the last were registered.  So a round's operations go out over a few
connections in parallel, heartbeats most urgent first, and `lag` tells how
far behind the oldest heartbeat was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .agent import ConsulError
from .instance import Registration
from .plan import Actual, Operation, UpdateTTL

WORKERS = 8  # below requests' connection pool (10), so no request waits for a connection


def urgency(operation: UpdateTTL, have: Actual) -> tuple[bool, float]:
    """Sort key: a change of status first (it is news), then the longest unwritten."""
    return have.status == operation.health.status, have.updated_at


def lag(operations: Sequence[UpdateTTL], actual: dict[str, Actual], registrations: dict[str, Registration],
        now: float) -> float:
    """The largest share of its ttl any of these checks has gone unwritten (0: all fresh)."""
    shares = [(now - actual[op.service_id].updated_at) / registrations[op.service_id].ttl_seconds
              for op in operations
              if actual[op.service_id].updated_at and registrations[op.service_id].ttl_seconds]
    return max(shares, default=0.0)


class Sender:
    """Runs `send(operation)` for each operation, several at a time; results in the
    caller's order.  One operation is sent in the caller's thread: no hop for the
    common case of a single state change.  The operations of one round touch
    different instances, so their order does not matter."""

    def __init__(self, send: Callable[[Operation], None], workers: int = WORKERS) -> None:
        self._send = send
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def send_all(self, operations: Sequence[Operation]) -> list[ConsulError | None]:
        if len(operations) <= 1:
            return [self._one(op) for op in operations]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="heartbeat")
        return list(self._pool.map(self._one, operations))

    def _one(self, operation: Operation) -> ConsulError | None:
        try:
            self._send(operation)
        except ConsulError as exc:
            return exc
        return None
