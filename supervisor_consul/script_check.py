"""Script checks (`check.NAME = exec COMMAND`): the listener runs the command
and writes its result to a TTL check.

Consul's own script checks stay disabled, as Consul recommends: an agent that
runs scripts runs them for anyone who can register a check.  So the listener
runs the command itself, without a shell (as supervisord runs a program), in
a session of its own (so a kill reaches its children too), with stdin
/dev/null, stderr into stdout, the listener's environment plus the program's
`environment=`, in the program's `directory=` or the listener's own.  It runs
as the listener's user.

The convention is Consul's and Nagios': exit status 0 is passing, 1 warning,
anything else critical.  Killed by a signal, timed out, or could not start:
critical, and the note says which, then what it printed.  Otherwise the
note is what it printed, or `exit status N` if it printed nothing.

Limits:
- A note is at most OUTPUT_LIMIT (4096) bytes of UTF-8, Consul's default
  check output limit; longer output is cut and ends in CUT_MARKER.  The rest
  is read and thrown away, so a chatty command never blocks on a full pipe.
- Past its timeout a command's whole process group is killed (SIGKILL) and
  the check is critical.  A run is over when the command has exited and its
  output is closed: a background child still holding stdout keeps the run
  going until the timeout (and is killed with the group).
- At most MAX_RUNNING (4) commands at once; a script that is due waits for a
  free slot, the longest due first.
- `interval` runs from the end of one run to the start of the next, so a
  slow command never overlaps itself.

Threads: one scheduler thread sleeps on a Condition until the next start or
timeout; each run has a thread of its own (so at most max_running of them)
that reads the output and reaps the child.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from .health import CRITICAL, PASSING, WARNING, Health

log = logging.getLogger(__name__)

OUTPUT_LIMIT: Final = 4096  # bytes of UTF-8 in a note: Consul's default check_output_max_size
CUT_MARKER: Final = f" ... (output cut at {OUTPUT_LIMIT} bytes)"
MAX_RUNNING: Final = 4  # commands at once
# After the kill, how long the output may stay open: only something that left
# the process group (setsid) can still hold it, and it must not hold the run.
PIPE_GRACE: Final = 1.0  # seconds
CLOSE_WAIT: Final = 5.0  # seconds close() waits for all its threads together
_CHUNK: Final = 65536
# macOS has no os.waitid; there a kill may race the reaping (see _reap).
_WAITID: Final = hasattr(os, "waitid")


@dataclass(frozen=True)
class Script:
    """One script check: what to run and how often."""

    check_id: str  # the Consul TTL check it reports to
    command: tuple[str, ...]  # argv, already split; run without a shell
    interval: float  # seconds from the end of one run to the start of the next
    timeout: float  # seconds; past it the process group is killed and the result is critical
    environment: tuple[tuple[str, str], ...] = ()  # added to the listener's environment
    directory: str | None = None  # None: the listener's working directory

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError(f"script check {self.check_id!r}: no command")
        # `not x > 0` also refuses NaN, which would make the scheduler spin.
        if not self.interval > 0 or not self.timeout > 0:
            raise ValueError(f"script check {self.check_id!r}: interval and timeout must be positive")


def result_of(returncode: int | None, output: bytes, timed_out: bool, timeout: float,
              error: str | None = None) -> Health:
    """The health one run shows.  `returncode` as Popen gives it (negative:
    killed by that signal), None only with `error` (could not start, e.g.
    'No such file or directory: /x') or `timed_out`; `output` as it printed it
    (more than OUTPUT_LIMIT bytes: it was cut)."""
    if error is not None:
        return Health(CRITICAL, _note(error, output))
    if timed_out:
        return Health(CRITICAL, _note(f"timed out after {timeout:g}s", output))
    if returncode is None:
        raise ValueError("a run that started and did not time out has a returncode")
    if returncode < 0:
        return Health(CRITICAL, _note(f"killed by signal {_signal_name(-returncode)}", output))
    status = PASSING if returncode == 0 else WARNING if returncode == 1 else CRITICAL
    return Health(status, _note("", output) or f"exit status {returncode}")


def _note(head: str, output: bytes) -> str:
    """`head: output` (either may be empty), at most OUTPUT_LIMIT bytes of
    UTF-8; when cut, it ends in CUT_MARKER."""
    cut = len(output) > OUTPUT_LIMIT
    # Where it was cut, a character split in two is dropped, not replaced.
    text = _decoded(output[:OUTPUT_LIMIT], final=not cut).strip()
    # errors="replace": `head` may hold a file name's undecodable bytes (as surrogates).
    encoded = ": ".join(part for part in (head, text) if part).encode(errors="replace")
    if not cut and len(encoded) <= OUTPUT_LIMIT:
        return encoded.decode()
    room = OUTPUT_LIMIT - len(CUT_MARKER.encode())
    return _decoded(encoded[:room], final=False).rstrip() + CUT_MARKER


def _decoded(data: bytes, final: bool) -> str:
    """UTF-8, bad bytes replaced; with final=False a character cut off at the end is left out."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name of its own
        return str(number)


def _error_text(exc: OSError) -> str:
    """'No such file or directory: /x', the way a shell would say it."""
    if exc.filename is None:
        return exc.strerror or str(exc)
    return f"{exc.strerror}: {os.fsdecode(exc.filename)}"


@dataclass(eq=False)  # by identity: a changed script's new run is another run
class _Run:
    """One run of a script, from the scheduler starting it to its thread reaping it."""

    script: Script
    thread: threading.Thread = field(init=False)
    proc: subprocess.Popen[bytes] | None = None  # None until it started
    deadline: float = math.inf  # when the scheduler kills it; set once it started
    killed: bool = False  # asked to die (timed out, dropped, closing); one not started yet dies as it starts
    timed_out: bool = False


class Scripts:
    """Runs script checks, each every interval, and reports each result.

    `report(check_id, health)` is called from a run's thread with this
    object's lock held: that is what makes sure nothing is reported for a
    script once `want` has dropped it.  So it must be cheap (post into a
    queue) and must not call back into this object.
    """

    def __init__(self, report: Callable[[str, Health], None], max_running: int = MAX_RUNNING,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self._report = report
        self._max_running = max_running
        self._monotonic = monotonic
        self._cond = threading.Condition()  # guards all below; only the scheduler waits on it
        self._wanted: dict[str, Script] = {}
        self._due: dict[str, float] = {}  # wanted and not running: when each starts next
        self._current: dict[str, _Run] = {}  # wanted and running: the run whose result counts
        self._running: set[_Run] = set()  # every run not yet reaped, dropped ones too: what max_running counts
        self._closed = False
        self._scheduler = threading.Thread(target=self._schedule, name="script-checks", daemon=True)
        self._scheduler.start()

    def want(self, scripts: Iterable[Script]) -> None:
        """From now on exactly these run.  A script new or changed (any field)
        is due at once; one gone or changed is not run again, and a run of it
        in flight is killed and its result dropped.  Never waits on a run.
        After close() it does nothing."""
        wanted: dict[str, Script] = {}
        for script in scripts:
            if wanted.setdefault(script.check_id, script) != script:
                raise ValueError(f"two script checks report to {script.check_id!r}")
        with self._cond:
            if self._closed:
                return
            now = self._monotonic()
            changed = False
            for check_id, script in self._wanted.items():
                if wanted.get(check_id) != script:
                    changed = True
                    self._due.pop(check_id, None)
                    run = self._current.pop(check_id, None)
                    if run is not None:
                        self._kill(run)
            for check_id, script in wanted.items():
                if self._wanted.get(check_id) != script:
                    changed = True
                    self._due[check_id] = now
            self._wanted = wanted
            if changed:
                self._cond.notify()

    def close(self) -> None:
        """Stop: nothing more starts or is reported, every command running is
        killed (its process group), and the threads are joined, waiting at
        most CLOSE_WAIT seconds in all."""
        with self._cond:
            self._closed = True
            for run in self._running:
                self._kill(run)
            threads = [self._scheduler, *(run.thread for run in self._running)]
            self._cond.notify()
        give_up = self._monotonic() + CLOSE_WAIT
        for thread in threads:
            thread.join(max(0.0, give_up - self._monotonic()))

    def _schedule(self) -> None:
        with self._cond:
            while not self._closed:
                now = self._monotonic()
                for run in self._running:
                    if not run.killed and run.deadline <= now:
                        run.timed_out = True
                        self._kill(run)
                while self._due and len(self._running) < self._max_running:
                    check_id = min(self._due, key=self._due.__getitem__)
                    if self._due[check_id] > now:
                        break
                    self._start(check_id)
                self._cond.wait(self._until_next(now))

    def _until_next(self, now: float) -> float | None:
        """Seconds until the next deadline or start (None: nothing to do until told)."""
        wakes = [run.deadline for run in self._running if not run.killed]
        if len(self._running) < self._max_running:  # when full, the end of a run wakes the scheduler
            wakes.extend(self._due.values())
        wake = min(wakes, default=math.inf)
        return None if wake == math.inf else max(0.0, wake - now)

    def _start(self, check_id: str) -> None:
        del self._due[check_id]
        run = _Run(self._wanted[check_id])
        run.thread = threading.Thread(target=self._work, args=(run,), name=f"script-check {check_id}", daemon=True)
        self._current[check_id] = run
        self._running.add(run)
        run.thread.start()

    def _kill(self, run: _Run) -> None:
        """Kill its process group (lock held)."""
        run.killed = True
        proc = run.proc
        if proc is None or proc.returncode is not None:
            return  # not started yet (it dies as it starts), or reaped: its pid may be someone else's now
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # all of the group has exited
        except PermissionError as exc:  # every process left in it changed user (a setuid program)
            log.warning("script check %s: cannot kill process group %d: %s", run.script.check_id, proc.pid, exc)

    def _work(self, run: _Run) -> None:
        check_id = run.script.check_id
        health: Health | None = None
        try:
            health = self._execute(run)
        except Exception:  # a bug, or something else reaped our child: the slot must come back all the same
            log.exception("script check %s: the run failed", check_id)
        with self._cond:
            self._running.discard(run)
            mine = self._current.get(check_id) is run
            if mine:
                del self._current[check_id]
                self._due[check_id] = self._monotonic() + run.script.interval
            self._cond.notify()
            if mine and not self._closed and health is not None:
                self._report(check_id, health)

    def _execute(self, run: _Run) -> Health:
        script = run.script
        try:
            proc = subprocess.Popen(script.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **dict(script.environment)}, cwd=script.directory)
        except OSError as exc:
            return result_of(None, b"", False, script.timeout, error=_error_text(exc))
        except ValueError as exc:  # a NUL byte in the command or the environment
            return result_of(None, b"", False, script.timeout, error=str(exc))
        with self._cond:
            run.proc = proc
            run.deadline = self._monotonic() + script.timeout
            if run.killed:  # dropped or closed while it was starting
                self._kill(run)
            self._cond.notify()  # a new deadline for the scheduler
        output = self._read(proc, give_up=run.deadline + PIPE_GRACE)
        timed_out = self._reap(run, proc)
        return result_of(proc.returncode, output, timed_out, script.timeout)

    def _read(self, proc: subprocess.Popen[bytes], give_up: float) -> bytes:
        """Its output until closed, or until `give_up`.  Keeps the first
        OUTPUT_LIMIT + 1 bytes: the one more tells result_of that it was cut."""
        assert proc.stdout is not None
        kept = bytearray()
        with proc.stdout, selectors.DefaultSelector() as selector:
            fd = proc.stdout.fileno()
            selector.register(fd, selectors.EVENT_READ)
            while True:
                left = give_up - self._monotonic()
                if left <= 0 or not selector.select(left):
                    break  # killed, yet something that left its process group holds the output open
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                kept += chunk[:OUTPUT_LIMIT + 1 - len(kept)]
        return bytes(kept)

    def _reap(self, run: _Run, proc: subprocess.Popen[bytes]) -> bool:
        """Wait for it to exit and reap it; whether the scheduler killed it for its timeout."""
        if _WAITID:
            # Wait for the exit but leave the child unreaped, so the reaping can
            # happen under the lock and _kill never signals a pid already reused.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        else:
            proc.wait()  # reaped outside the lock: the same narrow race Popen.kill has
        with self._cond:
            proc.wait()  # at once: it has exited
            return run.timed_out
