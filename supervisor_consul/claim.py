"""The claim: one instance of the service `supervisord` per supervisord, which
says who holds an owner id.

Two supervisords that look identical (the same host name, `-c` path and
`identifier`: two containers with host networking, two mount namespaces) get
the same owner id, and would deregister each other's instances for ever.  So
before it touches anything a listener registers the claim, recording which
running supervisord it serves (its incarnation), and keeps its TTL check
passing.  A listener that finds the claim held by another supervisord that
is still alive touches nothing and says how to tell the two apart.

The claim also vouches for every instance: each gets an alias check of it,
so all of them turn critical the moment its one TTL check lapses, and are
reaped after their deregister_after, when their supervisord or listener is
gone.  That one heartbeat is the whole steady-state cost: an instance's own
process-state check changes only when its process does.

Deciding is pure (Keeper.decide); reading /proc is `incarnation_of`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass

from .procfs import stat_fields

SERVICE = "supervisord"
INCARNATION_META = "supervisord-incarnation"


@dataclass(frozen=True)
class Incarnation:
    """One running supervisord: a pid means something only within its pid
    namespace and boot, and the start time tells a reused pid apart."""

    boot: str  # /proc/sys/kernel/random/boot_id
    pid_ns: str  # the inode of /proc/PID/ns/pid
    mnt_ns: str  # the inode of /proc/PID/ns/mnt: only for messages
    pid: int
    start: int  # /proc/PID/stat starttime, in clock ticks since boot

    def encode(self) -> str:
        return f"{self.boot}/{self.pid_ns}/{self.mnt_ns}/{self.pid}/{self.start}"

    @classmethod
    def decode(cls, text: str) -> Incarnation | None:
        parts = text.split("/")
        if len(parts) != 5 or not (parts[3].isdigit() and parts[4].isdigit()):
            return None
        return cls(parts[0], parts[1], parts[2], int(parts[3]), int(parts[4]))


def start_time(pid: int) -> int | None:
    """A process's start time (field 22), or None when there is no such process here."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 and fields[19].isdigit() else None


def incarnation_of(pid: int) -> Incarnation:
    """The incarnation of a process of this machine (the listener's supervisord)."""
    def read(path: str) -> str:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except OSError:
            return ""

    def namespace(kind: str) -> str:
        try:
            return os.readlink(f"/proc/{pid}/ns/{kind}").partition("[")[2].rstrip("]")
        except OSError:
            return ""

    return Incarnation(read("/proc/sys/kernel/random/boot_id"), namespace("pid"), namespace("mnt"), pid,
                       start_time(pid) or 0)


@dataclass(frozen=True)
class Seen:
    """What the agent has of a claim."""

    incarnation: Incarnation | None  # None: not one we can read
    status: str | None  # of its TTL check
    output: str | None


class Verdict(enum.Enum):
    HOLD = "hold"  # ours: act, keep its check passing
    TAKE = "take"  # free, or its holder is gone: register ours, then act
    YIELD = "yield"  # another live supervisord holds it: touch nothing


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: str  # for the log, when it is not HOLD


class Keeper:
    """Decides from what the agent shows whether this listener may act.

    A holder in our own pid namespace is alive when its pid still has its
    start time.  One in another (a container) cannot be seen from here, so
    its claim's TTL check speaks for it: passing while it keeps the
    heartbeat, critical within the claim's TTL once it stops.
    """

    def __init__(self, me: Incarnation, started: Callable[[int], int | None] = start_time) -> None:
        self.me = me
        self._started = started

    def decide(self, seen: Seen | None) -> Decision:
        holder = seen.incarnation if seen is not None else None
        if seen is None or holder is None:
            return Decision(Verdict.TAKE, "unclaimed")
        if holder == self.me:
            return Decision(Verdict.HOLD, "")
        if holder.boot != self.me.boot:
            return Decision(Verdict.TAKE, "its supervisord ran before this machine booted")
        if seen.status == "critical":
            return Decision(Verdict.TAKE, "its heartbeat has stopped")
        if holder.pid_ns == self.me.pid_ns:
            if self._started(holder.pid) == holder.start:
                return Decision(Verdict.YIELD, f"supervisord pid {holder.pid}{self._where(holder)} is alive")
            return Decision(Verdict.TAKE, f"its supervisord pid {holder.pid} has exited")
        return Decision(Verdict.YIELD, f"a supervisord in pid namespace {holder.pid_ns}{self._where(holder)} keeps "
                                       f"its heartbeat (the claim's TTL check is {seen.status})")

    def _where(self, holder: Incarnation) -> str:
        return f" in mount namespace {holder.mnt_ns}" if holder.mnt_ns != self.me.mnt_ns else ""
