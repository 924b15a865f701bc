"""The listener under a real supervisord against a real Consul agent."""

from __future__ import annotations

import os
import signal
import sys
import uuid

import pytest

from tests.harness import ConsulAgent, free_port, free_port_prefix, listener, run_cli, wait_for


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def instances(agent: ConsulAgent, name: str) -> list[dict]:
    return agent.health(name)


def process_check(entry: dict) -> dict:
    return next(c for c in entry["Checks"] if c["CheckID"].endswith(":process"))


def status_of(agent: ConsulAgent, name: str) -> list[tuple[str, str]]:
    """(status, note) of the process-state check of every instance."""
    return sorted((process_check(e)["Status"], process_check(e)["Output"]) for e in instances(agent, name))


def wait_passing(agent: ConsulAgent, name: str, count: int = 1, timeout: float = 20.0) -> None:
    wait_for(lambda: [status for status, _ in status_of(agent, name)] == ["passing"] * count,
             timeout=timeout, message=f"{count} {name} instance(s) passing")


def start_sleeper(agent: ConsulAgent, make, program: str, consul_keys: str = "", stanza: str | None = None,
                  numprocs: int = 1):
    """A supervisord running `sleep 300` as PROGRAM, registered and passing; (supervisord, service name)."""
    name = unique(program)
    processes = f"process_name=%(program_name)s_%(process_num)d\nnumprocs={numprocs}\n" if numprocs > 1 else ""
    sv = make(f"[program:{program}]\ncommand=sleep 300\n{processes}[consul:{program}]\nname={name}\n{consul_keys}\n"
              + (stanza if stanza is not None else listener(agent)))
    wait_passing(agent, name, numprocs)
    return sv, name


def listener_log(sv) -> str:
    path = sv.workdir / "listener.log"
    return path.read_text() if path.exists() else ""


def test_reference_scenario_nc_found_through_dns(consul_agent, supervisord_factory):
    name, port = unique("netcat"), free_port()
    sv = supervisord_factory(f"""
[program:netcat]
command=nc -l 127.0.0.1 {port}
autorestart=true
[consul:netcat]
name={name}
port={port}
tags=reference
""" + listener(consul_agent))
    info = sv.wait_state("netcat", "RUNNING")
    wait_for(lambda: status_of(consul_agent, name) == [("passing", f"RUNNING pid {info['pid']}")],
             message="netcat passing in Consul")
    # No wrapper: the pid supervisord watches is nc itself.
    assert os.readlink(f"/proc/{info['pid']}/exe").split("/")[-1].startswith("nc")
    assert wait_for(lambda: consul_agent.dns(f"{name}.service.consul", "A"), message="A record") == ["127.0.0.1"]
    srv = wait_for(lambda: consul_agent.dns(f"{name}.service.consul", "SRV"), message="SRV record")
    assert [int(record.split()[2]) for record in srv] == [port]
    [entry] = instances(consul_agent, name)
    assert entry["Service"]["Tags"] == ["reference"]
    assert entry["Service"]["Meta"]["supervisord-process"] == "netcat"


def test_stop_removes_and_start_brings_back(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "sleeper", "port=7000")
    assert sv.ctl("stop", "sleeper").returncode == 0
    wait_for(lambda: instances(consul_agent, name) == [], message="deregistered after stop")
    assert consul_agent.dns(f"{name}.service.consul", "A") == []
    assert sv.ctl("start", "sleeper").returncode == 0
    pid = sv.info("sleeper")["pid"]
    wait_for(lambda: status_of(consul_agent, name) == [("passing", f"RUNNING pid {pid}")], message="passing again")
    assert consul_agent.dns(f"{name}.service.consul", "A") == ["127.0.0.1"]


def test_crash_with_autorestart_goes_critical_then_passing(consul_agent, supervisord_factory):
    name = unique("crasher")
    sv = supervisord_factory(f"""
[program:crasher]
command=sleep 300
autorestart=true
startsecs=3
[consul:crasher]
name={name}
""" + listener(consul_agent))
    old = sv.wait_state("crasher", "RUNNING")["pid"]
    wait_for(lambda: status_of(consul_agent, name) == [("passing", f"RUNNING pid {old}")], message="passing")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: status_of(consul_agent, name) == [("critical", "EXITED unexpectedly: killed by a signal")]
             or status_of(consul_agent, name)[0][0] == "critical", message="critical after the crash")
    assert consul_agent.dns(f"{name}.service.consul", "A") == []
    new = sv.wait_state("crasher", "RUNNING")["pid"]
    assert new != old
    wait_for(lambda: status_of(consul_agent, name) == [("passing", f"RUNNING pid {new}")], message="passing again")


def test_crash_loop_to_fatal_deregisters(consul_agent, supervisord_factory, tmp_path):
    name, marker = unique("flaky"), tmp_path / "broken"
    sv = supervisord_factory(f"""
[program:flaky]
command=sh -c 'test -e {marker} && exit 3; exec sleep 300'
autorestart=true
startsecs=1
startretries=1
[consul:flaky]
name={name}
""" + listener(consul_agent))
    pid = sv.wait_state("flaky", "RUNNING")["pid"]
    wait_passing(consul_agent, name)
    marker.touch()
    os.kill(pid, signal.SIGKILL)
    sv.wait_state("flaky", "FATAL", timeout=30)
    wait_for(lambda: instances(consul_agent, name) == [], message="deregistered at FATAL")


def test_numprocs_three_instances_with_ports_and_http_checks(consul_agent, supervisord_factory):
    name, prefix = unique("web"), free_port_prefix(3)
    sv = supervisord_factory(f"""
[program:web]
command={sys.executable} -m http.server {prefix}%(process_num)d --bind 127.0.0.1
process_name=%(program_name)s_%(process_num)02d
numprocs=3
numprocs_start=1
[consul:web]
name={name}
port={prefix}%(process_num)d
tags=instance-%(process_num)d
check=http://127.0.0.1:%(port)s/
interval=1s
timeout=1s
""" + listener(consul_agent))
    for n in (1, 2, 3):
        sv.wait_state(f"web:web_0{n}", "RUNNING")

    def all_passing():
        entries = instances(consul_agent, name)
        return len(entries) == 3 and all(c["Status"] == "passing" for e in entries for c in e["Checks"]) and entries

    entries = wait_for(all_passing, message="three instances, every check passing")
    assert sorted(e["Service"]["Port"] for e in entries) == [int(f"{prefix}{n}") for n in (1, 2, 3)]
    assert len({e["Service"]["ID"] for e in entries}) == 3
    assert sorted(e["Service"]["Tags"][0] for e in entries) == ["instance-1", "instance-2", "instance-3"]
    assert all({c["CheckID"].rsplit(":", 1)[1] for c in e["Checks"] if c["ServiceID"]} == {"process", "http",
                                                                                             "supervisord"}
               for e in entries)
    srv = consul_agent.dns(f"{name}.service.consul", "SRV")
    assert sorted(int(r.split()[2]) for r in srv) == [int(f"{prefix}{n}") for n in (1, 2, 3)]


def test_update_adds_and_removes_a_program_from_an_include_file(consul_agent, supervisord_factory):
    first, second = unique("alpha"), unique("beta")
    sv = supervisord_factory(f"""
[include]
files=conf.d/*.conf
[program:alpha]
command=sleep 300
[consul:alpha]
name={first}
""" + listener(consul_agent))
    (sv.workdir / "conf.d").mkdir(exist_ok=True)
    wait_passing(consul_agent, first)
    include = sv.workdir / "conf.d" / "beta.conf"
    include.write_text(f"[program:beta]\ncommand=sleep 300\n[consul:beta]\nname={second}\nport=7100\n")
    assert "beta: added" in sv.ctl("update").stdout
    wait_passing(consul_agent, second)
    include.unlink()
    assert "beta: stopped" in sv.ctl("update").stdout
    wait_for(lambda: instances(consul_agent, second) == [], message="beta deregistered")
    assert [s for s, _ in status_of(consul_agent, first)] == ["passing"]


def test_listener_restart_makes_no_duplicates_and_no_rewrites(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "steady", numprocs=2)
    ids = sorted(e["Service"]["ID"] for e in instances(consul_agent, name))
    notes = status_of(consul_agent, name)
    # supervisord copies the listener's stderr to the file a moment after the write it tells of.
    wait_for(lambda: listener_log(sv).count(" registered ") >= 2, message="the first listener's registrations logged")
    before = len(listener_log(sv))
    assert sv.ctl("restart", "consul").returncode == 0
    wait_for(lambda: "reconcile done" in listener_log(sv)[before:], message="the new listener's first reconcile")
    assert sorted(e["Service"]["ID"] for e in instances(consul_agent, name)) == ids
    new_log = listener_log(sv)[before:]
    # A fresh listener refreshes the TTL checks once (it cannot know when they were
    # last refreshed) but registers nothing again.
    assert " registered " not in new_log and "deregistered" not in new_log
    assert status_of(consul_agent, name) == notes


def test_agent_restart_reregisters_everything(supervisord_factory, tmp_path):
    with ConsulAgent(tmp_path / "own-agent") as agent:
        sv, name = start_sleeper(agent, supervisord_factory, "survivor", "ttl=3s", numprocs=2)
        wait_for(lambda: listener_log(sv).count(" registered ") >= 2, message="the registrations logged")
        before = listener_log(sv).count(" registered ")
        agent.restart()  # a -dev agent comes back empty; the catalog stays so only until the next heartbeat
        wait_passing(agent, name, 2, timeout=30)
        wait_for(lambda: listener_log(sv).count(" registered ") >= before + 2, message="both registered again")


def test_bad_section_is_reported_and_the_rest_works(consul_agent, supervisord_factory):
    good, bad = unique("good"), unique("bad")
    sv = supervisord_factory(f"""
[program:good]
command=sleep 300
[consul:good]
name={good}
[program:bad]
command=sleep 300
[consul:bad]
name={bad}
port=eighty
""" + listener(consul_agent))
    wait_passing(consul_agent, good)
    line = wait_for(lambda: next((ln for ln in listener_log(sv).splitlines() if "port = 'eighty'" in ln), None),
                    message="the problem in the listener's log")
    assert f"{sv.conf}: [consul:bad] port = 'eighty': port must be a number" in line
    assert listener_log(sv).count("port = 'eighty'") == 1
    assert instances(consul_agent, bad) == []
    assert sv.state("consul") == "RUNNING"


def test_supervisord_shutdown_deregisters_and_listener_stop_does_not(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "worker")
    # Stopping only the listener leaves the programs running: their instances stay.
    assert sv.ctl("stop", "consul").returncode == 0
    assert [s for s, _ in status_of(consul_agent, name)] == ["passing"]
    before = len(listener_log(sv))
    assert sv.ctl("start", "consul").returncode == 0
    # RUNNING comes after startsecs, ready or not; a shutdown while it starts is the next test's.
    wait_for(lambda: "reconcile done" in listener_log(sv)[before:], message="the new listener's first reconcile")
    sv.stop()
    wait_for(lambda: instances(consul_agent, name) == [], message="deregistered at supervisord shutdown")


# A listener that takes 2 s to read supervisord at start, as a loaded host may.
# SIGTERM held before the heavy imports, as the console script's entry point holds it.
SLOW_PREPARE = ('-c "import supervisor_consul.entry as e; e.hold_sigterm(); '
                'import sys, time, supervisor_consul.sync as s, supervisor_consul.cli as c; p = s.Sync.prepare; '
                's.Sync.prepare = lambda self: (time.sleep(2), p(self))[1]; sys.exit(c.main())"')


def test_a_shutdown_while_the_listener_starts_still_deregisters(consul_agent, supervisord_factory):
    """supervisord calls the listener RUNNING after startsecs, ready or not: a shutdown
    then finds it still reading supervisord, which by then refuses every call."""
    sv, name = start_sleeper(consul_agent, supervisord_factory, "worker",
                             stanza=listener(consul_agent, module=SLOW_PREPARE) + "startsecs=0\n")
    assert sv.ctl("stop", "consul").returncode == 0
    assert sv.ctl("start", "consul").returncode == 0  # at once: startsecs=0
    sv.stop()
    wait_for(lambda: instances(consul_agent, name) == [], message="deregistered at supervisord shutdown")
    assert "supervisord is stopping already: deregistering what it ran" in listener_log(sv)


def test_listener_finds_the_configuration_supervisord_runs_with(consul_agent, supervisord_factory):
    stanza = listener(consul_agent).replace(" -c %(here)s/supervisord.conf", "")
    assert " -c " not in stanza
    sv, _ = start_sleeper(consul_agent, supervisord_factory, "found", stanza=stanza)
    assert f"configuration {sv.conf}" in listener_log(sv)


@pytest.mark.integration
def test_check_command_exit_codes(tmp_path):
    good, bad = tmp_path / "good.conf", tmp_path / "bad.conf"
    good.write_text("[supervisord]\n[program:a]\ncommand=sleep 1\n[consul:a]\nport=80\n")
    bad.write_text("[supervisord]\n[program:a]\ncommand=sleep 1\n[consul:a]\nport=80x\ncolour=red\n")

    def run(path):
        return run_cli("check", "-c", str(path))

    ok = run(good)
    assert ok.returncode == 0 and "OK" in ok.stdout
    failed = run(bad)
    assert failed.returncode == 1
    assert f"{bad}: [consul:a] port = '80x'" in failed.stdout
    assert f"{bad}: [consul:a] colour = 'red': unknown key" in failed.stdout
    # Nothing could be checked: 2, as for a file that is not there.
    unreadable = tmp_path / "unreadable.conf"
    unreadable.write_text("[program:a]\ncommand=sleep 1\n")  # no [supervisord]: supervisord refuses it
    cannot = run(unreadable)
    assert cannot.returncode == 2 and f"cannot check {unreadable}" in cannot.stderr
    assert run(tmp_path / "missing.conf").returncode == 2


def test_two_supervisords_on_one_agent_touch_only_their_own(consul_agent, supervisord_factory):
    name = unique("shared")
    conf = f"""
[program:app]
command=sleep 300
[consul:app]
name={name}
""" + listener(consul_agent)
    first, second = supervisord_factory(conf), supervisord_factory(conf)
    entries = wait_for(lambda: len(instances(consul_agent, name)) == 2 and instances(consul_agent, name),
                       message="one instance per supervisord")
    owners = {e["Service"]["Meta"]["supervisor-consul-owner"] for e in entries}
    assert len(owners) == 2
    first.ctl("stop", "app")
    wait_for(lambda: len(instances(consul_agent, name)) == 1, message="only the first's instance gone")
    [left] = instances(consul_agent, name)
    assert left["Service"]["Meta"]["supervisord-host"] and process_check(left)["Status"] == "passing"
    assert f"pid {second.info('app')['pid']}" in process_check(left)["Output"]


def test_exit_fatal_tcp_and_no_check_as_documented(consul_agent, supervisord_factory):
    once, doomed, plain, tcp = (unique(n) for n in ("once", "doomed", "plain", "tcp"))
    port = free_port()
    sv = supervisord_factory(f"""
[program:once]
command=sh -c 'sleep 2; exit 0'
autorestart=false
startsecs=1
[consul:once]
name={once}
[program:doomed]
command=false
startsecs=1
startretries=0
[consul:doomed]
name={doomed}
on_fatal=critical
[program:plain]
command=sleep 300
[consul:plain]
name={plain}
check=none
[program:tcp]
command={sys.executable} -m http.server {port} --bind 127.0.0.1
[consul:tcp]
name={tcp}
port={port}
check=tcp://127.0.0.1:%(port)s
interval=1s
""" + listener(consul_agent))
    # An expected exit is still critical, with what happened in the note.
    wait_for(lambda: status_of(consul_agent, once) == [("critical", "EXITED expectedly with exit status 0")],
             message="once critical after its expected exit")
    # FATAL with on_fatal = critical stays registered, critical (BACKOFF alone never registered it).
    # Registered critical from the start, its note is an output-only change, which the agent
    # passes on to the catalog only lazily: read the note from the agent itself.
    # An event older than the listener's first reading (BACKOFF) may show for a moment first.
    wait_for(lambda: [s for s, _ in status_of(consul_agent, doomed)] == ["critical"], message="doomed critical")
    wait_for(lambda: [c["Output"] for c in consul_agent.checks().values()
                      if c["ServiceName"] == doomed and c["CheckID"].endswith(":process")]
             == ["FATAL: supervisord gave up starting it"], timeout=10, message="doomed's note says FATAL")
    # check = none: registered while RUNNING with no check of its own, only its liveness (the
    # alias of its supervisord's claim), and gone when stopped.
    [entry] = wait_for(lambda: instances(consul_agent, plain), message="plain registered")
    assert [(c["CheckID"].rsplit(":", 1)[-1], c["Status"]) for c in entry["Checks"] if c["ServiceID"]] == \
        [("supervisord", "passing")]
    sv.ctl("stop", "plain")
    wait_for(lambda: instances(consul_agent, plain) == [], message="plain deregistered")
    # A TCP check runs beside the process-state check, and passes.
    wait_for(lambda: sorted((c["CheckID"].rsplit(":", 1)[1], c["Status"]) for e in instances(consul_agent, tcp)
                            for c in e["Checks"] if c["ServiceID"])
             == [("process", "passing"), ("supervisord", "passing"), ("tcp", "passing")],
             message="tcp, process and liveness checks passing")


def test_non_ascii_program_names_keep_the_event_stream_in_step(consul_agent, supervisord_factory):
    # supervisord counts `len` in characters; a reader counting bytes would lose step here.
    accented, after = unique("accent"), unique("after")
    sv = supervisord_factory(f"""
[program:wéb]
command=sleep 300
[consul:wéb]
name={accented}
[program:after]
command=sleep 300
[consul:after]
name={after}
""" + listener(consul_agent))
    wait_passing(consul_agent, accented)
    wait_passing(consul_agent, after)
    for _ in range(3):
        sv.ctl("restart", "wéb")
    sv.ctl("stop", "after")
    wait_for(lambda: instances(consul_agent, after) == [], message="events after the accented ones still read")
    wait_passing(consul_agent, accented)
    assert "unreadable event header" not in listener_log(sv)


def test_a_killed_process_is_critical_before_supervisord_reaps_it_with_supervisords_note(consul_agent,
                                                                                        supervisord_factory):
    """The listener watches each RUNNING pid (exit_watch.py): even with supervisord frozen,
    so that only the watch can tell, the instance turns critical, with the note
    supervisord's EXITED event gives once it thaws; so the catalog (the UI) shows it
    right too."""
    name = unique("victim")
    sv = supervisord_factory(f"[program:victim]\ncommand=sleep 300\nautorestart=false\n"
                             f"[consul:victim]\nname={name}\n" + listener(consul_agent))
    wait_passing(consul_agent, name)
    pid, listener_pid = sv.wait_state("victim", "RUNNING")["pid"], sv.info("consul")["pid"]
    wait_for(lambda: pidfds(listener_pid) == 1, message="the listener watching the pid")
    os.kill(sv.pid, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        killed = [("critical", "EXITED unexpectedly: killed by a signal")]
        wait_for(lambda: status_of(consul_agent, name) == killed, message="critical while supervisord is frozen")
    finally:
        os.kill(sv.pid, signal.SIGCONT)
    assert sv.wait_state("victim", "EXITED")["exitstatus"] == -1
    assert f"victim: pid {pid} exited, seen by the exit watch" in listener_log(sv)
    # The catalog has the very note: supervisord's event brought nothing new to write.
    wait_for(lambda: [(process_check(e)["Status"], process_check(e)["Output"]) for e in consul_agent.health(name)]
             == killed, message="the catalog with the same note")
    wait_for(lambda: pidfds(listener_pid) == 0, message="no descriptor left for the dead pid")


def pidfds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[pidfd]"
        except OSError:
            pass
    return count
