"""Crashes seen in milliseconds: the listener watches the pid of each RUNNING
process itself.

supervisord learns of a death only when it reaps the child, after every
pool's turn in its main loop: up to a second after the process died.  A pidfd
(Linux 5.3 and later) turns readable the moment the process exits, while it
is still a zombie, and the zombie's /proc/PID/stat still holds its wait status:
so the listener can mark the instance critical at once, with the note
supervisord's own EXITED event would give.  Elsewhere (no pidfd_open, or no
file descriptors left) the listener does without, and crashes reach Consul
with supervisord's event as before.

The watch runs in a thread of its own and only posts: what a death means is
decided in the sync loop, which asks supervisord first (a stop it asked for
is no crash).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .procfs import stat_fields

log = logging.getLogger("supervisor_consul")


@dataclass(frozen=True)
class ProcessExit:
    """A watched process has exited (supervisord may not know yet)."""

    namespec: str
    pid: int
    waitstatus: int | None  # as waitpid(2) reports it; None once reaped, or unreadable


def zombie_of(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, exit_code): fields 3, 4 and 52; None when there is no such process."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 50 or not fields[1].isdigit() or not fields[49].lstrip("-").isdigit():
        return None
    return fields[0], int(fields[1]), int(fields[49])


class ExitWatch:
    """One pidfd per watched process, polled by one thread; `post` gets each exit."""

    def __init__(self, post: Callable[[ProcessExit], None], parent: int) -> None:
        self._post = post
        self._parent = parent  # supervisord: a pid is watched only while it is one of its children
        self._lock = threading.Lock()
        self._fds: dict[int, tuple[str, int]] = {}  # pidfd -> (namespec, pid)
        self._by_namespec: dict[str, tuple[int, int]] = {}  # namespec -> (pid, pidfd)
        self._full = False  # out of file descriptors: said once
        self.available = hasattr(os, "pidfd_open") and hasattr(select, "epoll")
        if not self.available:
            log.info("no pidfd on this system: crashes reach Consul with supervisord's own event (up to 1 s later)")
            return
        _raise_fd_limit()
        self._epoll = select.epoll()
        self._stop_r, self._stop_w = os.pipe()
        self._epoll.register(self._stop_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="exit watch", daemon=True)
        self._thread.start()

    @property
    def watched(self) -> dict[str, int]:
        with self._lock:
            return {namespec: pid for namespec, (pid, _) in self._by_namespec.items()}

    def follow(self, namespec: str, pid: int | None) -> None:
        """`namespec` is RUNNING as `pid` (None or 0: not running): watch that pid only."""
        if not self.available:
            return
        with self._lock:
            current = self._by_namespec.get(namespec)
            if current is not None and current[0] == pid:
                return
            if current is not None:
                self._drop(namespec)
            if pid:
                self._open(namespec, pid)

    def follow_only(self, running: dict[str, int]) -> None:
        """Exactly these processes (namespec -> pid) are RUNNING: after a full reading of supervisord."""
        if not self.available:
            return
        for namespec in set(self.watched) - set(running):
            self.follow(namespec, None)
        for namespec, pid in running.items():
            self.follow(namespec, pid)

    def close(self) -> None:
        if not self.available:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            for namespec in list(self._by_namespec):
                self._drop(namespec)
        self._epoll.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    # -- under the lock --------------------------------------------------------

    def _open(self, namespec: str, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                if not self._full:
                    self._full = True
                    log.warning("out of file descriptors after watching %d processes for exits: the crashes of "
                                "the others reach Consul with supervisord's event (raise supervisord's minfds= "
                                "to watch them all)", len(self._fds))
                return
            if exc.errno == errno.ESRCH:
                return
            self.available = False
            log.info("pidfd_open refused (%s): crashes reach Consul with supervisord's own event", exc)
            return
        seen = zombie_of(pid)
        if seen is None or seen[1] != self._parent:
            os.close(fd)  # not supervisord's child (a reused pid): its event will tell
            return
        self._fds[fd] = (namespec, pid)
        self._by_namespec[namespec] = (pid, fd)
        self._epoll.register(fd, select.EPOLLIN)

    def _drop(self, namespec: str) -> None:
        _, fd = self._by_namespec.pop(namespec)
        self._fds.pop(fd, None)
        self._epoll.unregister(fd)
        os.close(fd)

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                ready = self._epoll.poll()
            except OSError:
                return  # closed
            for fd, _ in ready:
                if fd == self._stop_r:
                    return
                with self._lock:
                    watched = self._fds.get(fd)
                    # Dropped meanwhile, or dropped and its number reused for a live process's pidfd.
                    if watched is None or not _readable(fd):
                        continue
                    namespec, pid = watched
                    self._drop(namespec)
                # Read at once: the zombie, and its wait status, last only until supervisord reaps it.
                seen = zombie_of(pid)
                waitstatus = seen[2] if seen is not None and seen[0] == "Z" and seen[1] == self._parent else None
                self._post(ProcessExit(namespec, pid, waitstatus))


def _readable(fd: int) -> bool:
    """A pidfd is readable once its process has exited."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _raise_fd_limit() -> None:
    """supervisord hands its children its own soft limit (minfds, 1024 by default):
    a pidfd per process needs more once there are many processes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass  # kept as it is: watching stops, said once, where the descriptors run out
