"""Issue 10, item 6: no half-working modes.  A listener that cannot read
supervisord's state or its configuration at start exits 2 (supervisorctl shows
it FATAL) with one line saying what to fix; one that loses them later keeps
what it has, logs, retries, and never lets a process it cannot see turn critical."""
from __future__ import annotations

import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile
import time

import pytest

from tests.faults import converge, drift, owner_of
from tests.harness import REPO_ROOT, Supervisord, listener, run_cli, wait_for
from tests.test_integration import listener_log, unique

# The listener as `nobody` needs a Python that user may run: this one may live under /root.
SYSTEM_PYTHON = "/usr/bin/python3"


def sleeper(name: str) -> str:
    return f"[program:app]\ncommand=sleep 300\n[consul:app]\nname={name}\nttl=3s\n"


def fatal_with(sv: Supervisord, text: str) -> str:
    """Wait until supervisord gives up on the listener; the log line holding text."""
    wait_for(lambda: sv.state("consul") == "FATAL", timeout=30, message="the listener FATAL")
    lines = [line for line in listener_log(sv).splitlines() if text in line and " CRITICAL " in line]
    assert lines, listener_log(sv)[-2000:]
    return lines[-1]


def owned(agent, sv: Supervisord) -> list[str]:
    return [sid for sid in agent.services() if owner_of(sv) in sid]


@pytest.mark.fault("6a. no XML-RPC at start: {SHA} password")
def test_a_sha_password_without_credentials_stops_the_listener_at_start(consul_agent, supervisord_factory,
                                                                       converged):
    name = unique("sha")
    sv = supervisord_factory(sleeper(name) + listener(consul_agent), auth=("admin", "s3cret"))
    line = fatal_with(sv, "refused getAllProcessInfo: 401 Unauthorized")
    assert ("the configuration stores the password as {SHA}..., which cannot be sent, so set "
            "SUPERVISOR_USERNAME and SUPERVISOR_PASSWORD in [eventlistener:consul] environment=") in line
    assert owned(consul_agent, sv) == []  # it touched nothing
    # status, run by an operator, is told what fits a command, not the listener's stanza.
    status = run_cli("status", "-c", str(sv.conf), "--http-addr", consul_agent.http_addr)
    assert status.returncode == 2
    assert "run this with SUPERVISOR_USERNAME and SUPERVISOR_PASSWORD set" in status.stderr
    assert "[eventlistener" not in status.stderr

    fixed = sv.conf.read_text().replace(
        "[eventlistener:consul]\n",
        '[eventlistener:consul]\nenvironment=SUPERVISOR_USERNAME="admin",SUPERVISOR_PASSWORD="s3cret"\n')
    sv.conf.write_text(fixed)
    started = time.monotonic()
    assert sv.ctl("update").returncode == 0
    seconds = converge(consul_agent, sv)
    converged(time.monotonic() - started, "FATAL at start with the fix named; credentials in environment= "
                                          f"+ update: converged in {seconds:.1f} s")


@pytest.mark.fault("6b. no XML-RPC at start: a user= the socket refuses")
def test_a_listener_user_the_socket_refuses_stops_at_start(consul_agent, converged):
    assert os.geteuid() == 0 and os.access(SYSTEM_PYTHON, os.X_OK), "needs root and Debian's python3"
    # A directory `nobody` can read (pytest's tmp_path is root's alone), with a socket only root may open.
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sc-nobody-"))
    workdir.chmod(0o755)
    name = unique("nobody")
    paths = os.pathsep.join([sysconfig.get_paths()["purelib"], str(REPO_ROOT)])
    stanza = listener(consul_agent).replace(f"command={sys.executable} ", f"command={SYSTEM_PYTHON} ")
    stanza = stanza.replace("[eventlistener:consul]\n",
                            f'[eventlistener:consul]\nuser=nobody\nenvironment=PYTHONPATH="{paths}"\n')
    sv = Supervisord(workdir / "sv", sleeper(name) + stanza, server="chmod=0700")
    try:
        sv.workdir.chmod(0o755)
        sv.start()
        line = fatal_with(sv, "PermissionError")
        assert "the listener runs as nobody, who may not open" in line
        assert "run it as supervisord's user (no user= in [eventlistener:consul])" in line
        assert owned(consul_agent, sv) == []

        sv.conf.write_text(sv.conf.read_text().replace("user=nobody\n", ""))
        started = time.monotonic()
        assert sv.ctl("update").returncode == 0
        seconds = converge(consul_agent, sv)
        converged(time.monotonic() - started, f"FATAL at start naming user= and chmod=; without user= "
                                              f"+ update: converged in {seconds:.1f} s")
    finally:
        sv.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.fault("6c. configuration unreadable at start")
def test_an_unreadable_configuration_stops_the_listener_at_start(consul_agent, supervisord_factory, converged):
    name = unique("unreadable")
    stanza = listener(consul_agent).replace("-c %(here)s/supervisord.conf", "-c %(here)s/listener.conf")
    sv = supervisord_factory(sleeper(name) + stanza)
    listener_conf = sv.workdir / "listener.conf"
    assert not listener_conf.exists()
    fatal_with(sv, f"{listener_conf}")
    assert owned(consul_agent, sv) == []

    listener_conf.write_text(sv.conf.read_text() + "\n[oops\n")  # there, but not a configuration
    assert sv.ctl("start", "consul").returncode != 0
    line = fatal_with(sv, "supervisord cannot read this configuration")
    assert str(listener_conf) in line and "the listener needs to read it" in line

    shutil.copy(sv.conf, listener_conf)
    started = time.monotonic()
    assert sv.ctl("start", "consul").returncode == 0
    # The owner id comes from the path the listener is given.
    seconds = converge(consul_agent, sv, owner=owner_of(sv, configfile=str(listener_conf)))
    converged(time.monotonic() - started, f"missing, then unparsable: FATAL each time naming the file; "
                                          f"fixed + start: converged in {seconds:.1f} s")


@pytest.mark.fault("6d. supervisord and the configuration lost while running")
def test_losing_supervisord_or_the_configuration_later_keeps_every_instance_passing(consul_agent,
                                                                                   supervisord_factory, converged):
    name = unique("blind")
    sv = supervisord_factory(sleeper(name).replace("[program:app]", "[program:app]\nnumprocs=3\n"
                                                   "process_name=%(program_name)s_%(process_num)d")
                             + listener(consul_agent))
    converge(consul_agent, sv)
    pid = sv.info("consul")["pid"]

    def statuses() -> list[str]:
        return sorted(c["Status"] for c in consul_agent.checks().values()
                      if c["ServiceName"] == name and c["CheckID"].endswith(":process"))

    moved = sv.sock.with_name(sv.sock.name + ".away")
    os.rename(sv.sock, moved)  # supervisord runs on, but the listener cannot reach it
    samples: list[str] = []
    try:
        os.kill(pid, 1)  # a reconcile now, so the loss is seen at once
        wait_for(lambda: "keeping what it said last" in listener_log(sv), message="the loss logged")
        broken = sv.conf.read_text()
        sv.conf.write_text(broken + "\n[oops\n")
        os.kill(pid, 1)
        wait_for(lambda: "keeping the last good configuration" in listener_log(sv), message="config loss logged")
        lost = time.monotonic()
        while time.monotonic() - lost < 3 * 3:  # three TTLs blind
            samples.extend(statuses())
            time.sleep(0.1)
        sv.conf.write_text(broken)
    finally:
        os.rename(moved, sv.sock)
    assert set(samples) == {"passing"}, samples
    restored = time.monotonic()
    os.kill(pid, 1)
    wait_for(lambda: "answers again" in listener_log(sv), message="supervisord seen again")
    seconds = converge(consul_agent, sv)
    assert sv.info("consul")["pid"] == pid and drift(consul_agent, sv) == []
    converged(time.monotonic() - restored, f"{len(samples)} samples over 3 ttl without supervisord or the "
                                           f"configuration: all passing; converged {seconds:.1f} s after")
