"""check.NAME.restart_after (issue 12, part 2): Consul health driving supervisord."""
from __future__ import annotations

import re
import time

from supervisor_consul.check_restart import Restarts
from supervisor_consul.health import CRITICAL, PASSING
from supervisor_consul.spec import CheckKind, CheckSpec
from tests import http_probe
from tests.harness import free_port, listener, wait_for
from tests.test_integration import listener_log, unique

API = CheckSpec(CheckKind.HTTP, "http://127.0.0.1:1/", "1s", "1s", "api", restart_after=3)


def looks(restarts: Restarts, statuses: list[str | None], start: float = 100.0, since: float = 0.0,
          maintenance: bool = False) -> list[int]:
    """The looks (by number) at which a restart is asked, one look a second."""
    return [n for n, status in enumerate(statuses)
            if restarts.look("c", API, "web", status, start + n, since, maintenance) is not None]


def test_three_critical_looks_in_a_row_restart():
    assert looks(Restarts(), [CRITICAL] * 3) == [2]
    assert looks(Restarts(), [CRITICAL, CRITICAL, PASSING, CRITICAL, CRITICAL]) == []
    assert looks(Restarts(), [CRITICAL, None, CRITICAL, CRITICAL]) == []  # unknown breaks the run


def test_no_restart_within_the_grace_of_a_start_and_at_most_one_per_grace():
    # grace = interval x restart_after = 3 s from the start at 100.
    assert looks(Restarts(), [CRITICAL] * 5, start=100.0, since=99.5) == [3]
    # Critical for ever: one restart per 3 s at most.
    asked = looks(Restarts(), [CRITICAL] * 12)
    assert asked == [2, 5, 8, 11]
    assert all(b - a >= API.restart_grace_seconds for a, b in zip(asked, asked[1:]))


def test_never_in_maintenance_and_looks_count_once_an_interval():
    assert looks(Restarts(), [CRITICAL] * 6, maintenance=True) == []
    restarts = Restarts()
    # Ten looks within one interval are one look.
    assert [restarts.look("c", API, "web", CRITICAL, 100 + n / 10, 0.0, False) for n in range(10)] == [None] * 10
    restart = None
    for t in (101.0, 102.0):
        restart = restarts.look("c", API, "web", CRITICAL, t, 0.0, False)
    assert restart is not None and restart.note == "restarted: check api critical 3 times"


# -- under a real supervisord and a real Consul ------------------------------------------------


def probe_program(program: str, name: str, port: int, workdir, agent, reset: bool, grace: str = "") -> str:
    """An HTTP server whose answers come from a status file; `reset`: it writes 200 there as it
    starts, as a program that a restart mends would."""
    status_file = workdir / f"{program}.status"
    status_file.write_text("200")
    lines = http_probe.program_lines(port, workdir / f"{program}.jsonl", status_file=status_file)
    command = lines.splitlines()[0][len("command="):]
    if reset:
        command = f"/bin/sh -c 'echo 200 > {status_file}; exec {command}'"
    return (f"[program:{program}]\ncommand={command}\n{lines.splitlines()[1]}\nstartsecs=0\n"
            f"[consul:{program}]\nname={name}\nport={port}\n"
            f"check.api=http://127.0.0.1:%(port)s/health\ncheck.api.interval=1s\ncheck.api.timeout=1s\n"
            f"check.api.restart_after=3\n" + (f"check.api.restart_grace={grace}\n" if grace else ""))


def api_status(agent, name: str) -> str:
    [entry] = agent.health(name)
    return next(c["Status"] for c in entry["Checks"] if c["CheckID"].endswith(":check:api"))


def test_a_failing_app_check_restarts_the_process_and_it_passes_again(consul_agent, supervisord_factory,
                                                                      tmp_path):
    name, port = unique("mend"), free_port()
    sv = supervisord_factory(probe_program("mend", name, port, tmp_path, consul_agent, reset=True)
                             + listener(consul_agent))
    wait_for(lambda: api_status(consul_agent, name) == PASSING, timeout=30, message="api passing")
    pid = sv.info("mend")["pid"]
    broke = time.monotonic()
    (tmp_path / "mend.status").write_text("500")
    new_pid = wait_for(lambda: (p := sv.info("mend")["pid"]) not in (0, pid) and p, timeout=30,
                       message="restarted by supervisord")
    took = time.monotonic() - broke
    # Consul needs up to an interval to see it, the listener 3 looks of 1 s, plus the stop.
    print(f"restarted {took:.1f} s after the check broke")
    assert took < 1 + 3 + 4, took
    wait_for(lambda: api_status(consul_agent, name) == PASSING, timeout=30, message="api passing again")
    assert re.search(r"mend: restarted: check api critical 3 times; restarting it", listener_log(sv))
    [entry] = consul_agent.health(name)
    process = next(c for c in entry["Checks"] if c["CheckID"].endswith(":process"))
    assert process["Output"] == f"RUNNING pid {new_pid}; restarted: check api critical 3 times"


def test_a_check_that_keeps_failing_is_restarted_no_more_often_than_its_grace(consul_agent, supervisord_factory,
                                                                              tmp_path):
    name, port = unique("broken"), free_port()
    sv = supervisord_factory(probe_program("broken", name, port, tmp_path, consul_agent, reset=False, grace="4s")
                             + listener(consul_agent))
    wait_for(lambda: api_status(consul_agent, name) == PASSING, timeout=30, message="api passing")
    (tmp_path / "broken.status").write_text("500")
    pids = [sv.info("broken")["pid"]]
    started = time.monotonic()
    while time.monotonic() - started < 14:  # bounded: the samples end by themselves
        pid = sv.info("broken")["pid"]
        if pid and pid != pids[-1]:
            pids.append(pid)
        time.sleep(0.05)
    line = "broken: restarted: check api critical 3 times; restarting it"

    def every_logged_restart_seen() -> bool:
        # The line is logged a moment before supervisord has the new pid: sample until they agree.
        pid = sv.info("broken")["pid"]
        if pid and pid != pids[-1]:
            pids.append(pid)
        return listener_log(sv).count(line) == len(pids) - 1
    wait_for(every_logged_restart_seen, timeout=10, message="every logged restart seen as a new pid")
    restarts = len(pids) - 1
    print(f"{restarts} restarts in 14 s with restart_grace=4s")
    assert 1 <= restarts <= 14 // 4 + 1, pids
