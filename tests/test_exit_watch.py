"""exit_watch: real child processes, real pidfds; the watch posts each death with its wait status."""
from __future__ import annotations

import os
import queue
import select
import signal
import subprocess

import pytest

from supervisor_consul.exit_watch import ExitWatch, ProcessExit, zombie_of
from tests.harness import wait_for


@pytest.fixture
def children():
    """Children of this process (the watch's `parent`), killed and reaped by pid at the end."""
    started: list[subprocess.Popen] = []

    def start(*command: str) -> subprocess.Popen:
        started.append(subprocess.Popen(command))
        return started[-1]

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.fixture
def watch():
    posted: queue.Queue[ProcessExit] = queue.Queue()
    w = ExitWatch(posted.put, os.getpid())
    w.posted = posted
    yield w
    w.close()


def pidfds() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd") if _link(fd) == "anon_inode:[pidfd]")


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_killed_process_is_posted_at_once_with_its_wait_status(watch, children):
    child = children("sleep", "60")
    watch.follow("web", child.pid)
    os.kill(child.pid, signal.SIGKILL)
    death = watch.posted.get(timeout=5)
    assert death == ProcessExit("web", child.pid, signal.SIGKILL)  # read from the zombie, not yet reaped
    assert watch.watched == {}


def test_an_exit_status_is_read_from_the_zombie(watch, children):
    child = children("sh", "-c", "exit 3")  # may be a zombie already when the watch begins: posted all the same
    watch.follow("web", child.pid)
    death = watch.posted.get(timeout=5)
    assert death.pid == child.pid and os.waitstatus_to_exitcode(death.waitstatus) == 3


def test_only_supervisords_children_are_watched(children):
    posted: queue.Queue[ProcessExit] = queue.Queue()
    w = ExitWatch(posted.put, parent=1)  # this test is no child of pid 1's: a reused pid would look like this
    try:
        child = children("sleep", "60")
        w.follow("web", child.pid)
        assert w.watched == {}
    finally:
        w.close()


def test_follow_only_keeps_exactly_the_running_ones_and_close_leaves_no_descriptor(children):
    before = pidfds()
    posted: queue.Queue[ProcessExit] = queue.Queue()
    w = ExitWatch(posted.put, os.getpid())
    a, b, c = (children("sleep", "60") for _ in range(3))
    w.follow_only({"a": a.pid, "b": b.pid})
    assert w.watched == {"a": a.pid, "b": b.pid} and pidfds() == before + 2
    w.follow_only({"b": b.pid, "c": c.pid})
    assert w.watched == {"b": b.pid, "c": c.pid} and pidfds() == before + 2
    w.follow("b", None)
    w.follow("c", a.pid)  # restarted under another pid
    assert w.watched == {"c": a.pid}
    w.close()
    assert pidfds() == before
    assert posted.empty()


def test_a_process_gone_before_the_watch_began_is_left_to_supervisords_event(watch, children):
    child = children("true")
    child.wait()
    watch.follow("web", child.pid)
    assert watch.watched == {} and zombie_of(child.pid) is None
    wait_for(lambda: watch.posted.empty(), timeout=1)


def test_a_pidfd_number_reused_for_a_live_process_is_not_taken_for_a_death(watch, children):
    """The thread may wake for a pidfd that was dropped and whose number a new pidfd took
    meanwhile: only a readable pidfd (its process exited) is a death."""
    first, second = children("sleep", "60"), children("sleep", "60")
    watch.follow("web", first.pid)
    [fd] = list(watch._fds)
    with watch._lock:  # the thread wakes for the death, and waits here while the sync loop swaps the watch
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: select.select([fd], [], [], 0)[0], timeout=5, message="the pidfd readable")
        watch._drop("web")
        watch._open("web", second.pid)
        assert list(watch._fds) == [fd]  # the same number, now the live process's
    with pytest.raises(queue.Empty):
        watch.posted.get(timeout=0.5)
    assert watch.watched == {"web": second.pid}
