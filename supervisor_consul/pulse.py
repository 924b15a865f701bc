"""The claim's heartbeat, from a thread of its own.

Every instance aliases the claim (claim.py), so one late heartbeat of it
would turn all of them critical at once.  A round of the sync loop can take
seconds (a supervisord busy starting a thousand processes answers slowly), so
the heartbeat does not wait for rounds: it beats on its own clock, as long as
the sync loop shows it is alive.  A sync loop that has made no progress for
STALL_AFTER is no longer keeping Consul in step, and then the heartbeat
stops, so the instances turn critical as they would if the listener had died.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from .agent import ConsulError
from .health import Health

log = logging.getLogger("supervisor_consul")
# Far longer than any round takes (each call to supervisord or Consul has its own deadline).
STALL_AFTER = 60.0


class Pulse:
    """Beats one TTL check every `period` while kept.  `background`: beat from a
    thread; without it only `beat_if_due()` beats (the tests' clocks are fakes)."""

    def __init__(self, beat: Callable[[str, Health], None], on_lost: Callable[[], None],
                 monotonic: Callable[[], float] = time.monotonic, background: bool = True) -> None:
        self._beat, self._on_lost, self._monotonic = beat, on_lost, monotonic
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._kept: tuple[str, Health] | None = None  # (check ID, what to write)
        self._period = math.inf
        self._beaten_at = -math.inf
        self._news = False  # what to write changed: beat at once
        self._progress_at = monotonic()
        self._stalled = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="claim heartbeat", daemon=True)
            self._thread.start()

    def keep(self, check_id: str, health: Health, period: float, written: bool = False) -> None:
        """Beat `check_id` with `health` every `period` seconds; `written`: the caller
        just wrote it, so the next beat is a period away."""
        with self._lock:
            news = self._kept != (check_id, health)
            self._kept, self._period = (check_id, health), period
            if written:
                self._beaten_at, self._news = self._monotonic(), False
            elif news:
                self._news = True
        self._wake.set()

    def stop(self) -> None:
        with self._lock:
            self._kept = None

    def progress(self) -> None:
        """The sync loop is alive: it began or ended a round."""
        self._progress_at = self._monotonic()

    def beat_if_due(self) -> None:
        with self._lock:
            now = self._monotonic()
            if self._kept is None or not (self._news or now >= self._beaten_at + self._period):
                return
            if now - self._progress_at >= STALL_AFTER:
                if not self._stalled:
                    self._stalled = True
                    log.error("the sync loop has made no progress for %.0f s: the claim's heartbeat stops, so every "
                              "instance turns critical, as if the listener were gone (please report this)",
                              now - self._progress_at)
                return
            if self._stalled:
                self._stalled = False
                log.info("the sync loop makes progress again: the claim's heartbeat goes on")
            check_id, health = self._kept
            self._beaten_at, self._news = now, False
        try:
            self._beat(check_id, health)
        except ConsulError as exc:
            # The sync loop says what is wrong with the agent; only a forgotten claim is ours to act on.
            log.debug("the claim's heartbeat was not written (%s)", exc.status or "no answer")
            if exc.lost:
                self._on_lost()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            self.beat_if_due()
            with self._lock:
                wait = self._beaten_at + self._period - self._monotonic() if self._kept and not self._news else 1.0
            self._wake.wait(min(max(wait, 0.01), 1.0))  # at least once a second: a stall may end
