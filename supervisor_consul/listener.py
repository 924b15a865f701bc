"""The event loop: answers supervisord at once and hands hints to the sync loop.

Nothing here waits on Consul or on supervisord's XML-RPC: each event is
turned into a hint, posted, and acknowledged with `RESULT 2\\nOK`, so a slow
or dead agent never stalls supervisord's event pool.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TextIO

from .events import hint_for
from .inbox import Inbox
from .protocol import READY, RESULT_OK, Unreadable, read_event, send

log = logging.getLogger("supervisor_consul")
RECENT_SERIALS = 1024
MAX_POOLS = 16  # supervisord sends one pool name per listener; more is garbage to forget


class Listener:
    def __init__(self, stdin: TextIO, stdout: TextIO, inbox: Inbox) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.inbox = inbox
        self._recent: deque[str] = deque(maxlen=RECENT_SERIALS)
        self._poolserials: dict[str, int] = {}  # pool -> the last poolserial seen
        self.events = 0
        self.skipped = 0  # unreadable header lines and oversized events, answered and dropped
        self.lost = 0  # events supervisord dropped before they reached us (poolserial gaps)

    def run(self) -> None:
        """Until supervisord closes our stdin."""
        send(self.stdout, READY)
        while True:
            try:
                event = read_event(self.stdin)
            except Unreadable as exc:
                self.inbox.heard()
                # supervisord waits for a result whatever it sent; answer so it goes on.
                log.warning("%s; skipped, reconciling instead", exc)
                self.skipped += 1
                if exc.event is not None:
                    self._notice_gap(exc.event)
                self.inbox.request_reconcile()
                send(self.stdout, RESULT_OK + READY)
                continue
            if event is None:
                log.info("supervisord closed the event stream; stopping")
                return
            self.events += 1
            self.inbox.heard()
            self._take(event)
            send(self.stdout, RESULT_OK + READY)

    def _take(self, event) -> None:
        self._notice_gap(event)
        # supervisord redelivers an event another listener rejected, into every pool of its priority.
        if event.serial and event.serial in self._recent:
            log.debug("event %s seen before; skipped", event.serial)
            return
        if event.serial:
            self._recent.append(event.serial)
        try:
            hint = hint_for(event)
        except Exception:  # a hint we cannot read must never cost supervisord its answer
            log.exception("cannot read event %s %r; skipped", event.name, event.payload[:200])
            return
        if hint is not None:
            self.inbox.post(hint)
        elif not event.name.startswith("TICK_"):
            log.debug("event %s carries nothing for us", event.name)

    def _notice_gap(self, event) -> None:
        """A skipped poolserial means supervisord dropped events (a full buffer
        drops the oldest, which already had its poolserial): what they said is
        unknown, so ask for a reconcile instead.  A smaller poolserial is an
        event redelivered after a rejection, not a loss.  (A reload restarts the
        listener, so a new pool's serials start with a new listener.)"""
        pool, number = event.headers.get("pool", ""), event.pool_serial
        if number is None:
            return
        last = self._poolserials.get(pool)
        if last is None and len(self._poolserials) >= MAX_POOLS:
            self._poolserials.clear()
        self._poolserials[pool] = max(number, last) if last is not None and number <= last + 1 else number
        if last is not None and number > last + 1:
            missed = number - last - 1
            self.lost += missed
            log.info("supervisord dropped %d event(s) for pool %s before they reached us (buffer_size too "
                     "small for this burst?); reconciling", missed, pool or "?")
            self.inbox.request_reconcile()
