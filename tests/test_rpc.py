"""rpc: where supervisord is, and every failure as one SupervisorError."""
from __future__ import annotations

import socket
import threading

import pytest

from supervisor_consul.config import Configuration
from supervisor_consul.rpc import Supervisor, SupervisorError, Waker, rpc_environment


def test_server_url_and_credentials_from_the_configuration():
    configuration = Configuration("/etc/s.conf", server_configs=(
        {"family": socket.AF_INET, "host": "", "port": 9001, "username": "u", "password": "p"},))
    env = rpc_environment(configuration, env={})
    assert env["SUPERVISOR_SERVER_URL"] == "http://localhost:9001"
    assert (env["SUPERVISOR_USERNAME"], env["SUPERVISOR_PASSWORD"]) == ("u", "p")


def test_hashed_password_is_not_used_and_the_environment_wins():
    configuration = Configuration("/etc/s.conf", server_configs=(
        {"family": socket.AF_UNIX, "file": "/run/s.sock", "username": "u", "password": "{SHA}abc"},))
    assert "SUPERVISOR_USERNAME" not in rpc_environment(configuration, env={})
    env = rpc_environment(configuration, env={"SUPERVISOR_SERVER_URL": "unix:///other.sock"})
    assert env["SUPERVISOR_SERVER_URL"] == "unix:///other.sock"


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "unix:///nonexistent/supervisor.sock"])
def test_every_failure_is_a_supervisor_error(url):
    with pytest.raises(SupervisorError) as raised:
        Supervisor({"SUPERVISOR_SERVER_URL": url}).all_process_info()
    assert url in str(raised.value)


class SlowSupervisor:
    """wake() blocks until released, as a real one does until supervisord answers."""

    def __init__(self) -> None:
        self.calls, self.release, self.called = 0, threading.Semaphore(0), threading.Semaphore(0)

    def wake(self) -> None:
        self.calls += 1
        self.called.release()
        self.release.acquire()
        if self.calls == 1:
            raise SupervisorError("supervisord at unix:///run/s.sock refused getState")


def test_waker_never_blocks_its_caller_and_coalesces_what_is_asked_meanwhile():
    supervisor, waker = SlowSupervisor(), Waker()
    waker(supervisor)
    assert supervisor.called.acquire(timeout=5)
    waker(supervisor)  # while the first is under way: returns at once
    waker(supervisor)
    supervisor.release.release()  # the first fails: logged, the thread goes on
    assert supervisor.called.acquire(timeout=5)
    supervisor.release.release()
    assert not supervisor.called.acquire(timeout=0.2)  # one more, not two
    assert supervisor.calls == 2
