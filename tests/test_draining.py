"""`supervisor-consul stop` and `restart`: the pure parts (processes, drains, batches,
steps, what counts as passing), the whole run against fakes, then against a real
supervisord and a real Consul agent."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import xmlrpc.client

import pytest
from supervisor.xmlrpc import Faults

from supervisor_consul import draining, instance
from supervisor_consul.config import Configuration
from supervisor_consul.rpc import SupervisorError
from supervisor_consul.snapshot import Snapshot
from supervisor_consul.spec import ServiceSpec
from tests.harness import listener, wait_for
from tests.test_integration import start_sleeper, unique
from tests.test_maintenance import CTLPLUGIN

OWNER = "0123456789ab"


def spec(namespec: str, key: str = "", **overrides) -> ServiceSpec:
    group = namespec.split(":")[0]
    return ServiceSpec(**{"namespec": namespec, "group": group, "process": namespec.split(":")[-1],
                          "name": f"{group}{'-' + key if key else ''}", "key": key, **overrides})


def test_a_process_drains_for_the_longest_drain_of_its_services_unless_told():
    web0, web0_admin, web1 = spec("web:web_0", drain="5s"), spec("web:web_0", "admin", drain="1m"), spec("web:web_1")
    [first, second] = draining.processes([web0, web0_admin, web1])
    assert (first.namespec, first.specs, first.drain_seconds) == ("web:web_0", (web0, web0_admin), 60.0)
    assert (second.namespec, second.drain_seconds) == ("web:web_1", 0.0)
    assert [p.drain_seconds for p in draining.processes([web0, web0_admin, web1], override=2.0)] == [2.0, 2.0]
    assert draining.processes([web0], override=0.0)[0].drain_seconds == 0.0  # --drain 0s: no wait at all
    assert draining.drain_line(first) == "web:web_0: draining 60s"


def test_batches():
    items = draining.processes([spec(f"web:web_{n}") for n in range(5)])
    names = lambda bs: [[p.namespec[-1] for p in b] for b in bs]  # noqa: E731
    assert names(draining.batches(items, rolling=False)) == [["0", "1", "2", "3", "4"]]
    assert names(draining.batches(items, rolling=True)) == [["0"], ["1"], ["2"], ["3"], ["4"]]
    assert names(draining.batches(items, rolling=True, size=2)) == [["0", "1"], ["2", "3"], ["4"]]
    assert names(draining.batches(items, rolling=True, size=9)) == [["0", "1", "2", "3", "4"]]
    assert draining.batches([], rolling=True) == []
    with pytest.raises(ValueError):
        draining.batches(items, rolling=True, size=0)


def test_steps_lift_the_maintenance_only_after_the_stop():
    assert draining.steps(restart=False) == (draining.DRAIN, draining.STOP, draining.LIFT)
    # restart keeps it until passing: the instance re-enters DNS healthy, never while stopped.
    assert draining.steps(restart=True) == (draining.DRAIN, draining.STOP, draining.START, draining.PASSING,
                                            draining.LIFT)
    assert draining.drain_reason("ops", "node1", False) == "draining: stop requested by ops@node1"


def test_passing_means_every_check_of_the_new_process():
    web = spec("web")
    sid = instance.instance_id(OWNER, web)
    maint = {"CheckID": instance.maintenance_check_id(sid), "Status": "critical"}
    process = {"CheckID": instance.ttl_check_id(sid), "Status": "passing", "Output": "RUNNING pid 42"}
    http = {"CheckID": f"{sid}:http", "Status": "passing"}
    assert draining.passing([process, http, maint], sid, web, 42)  # our maintenance does not count
    assert not draining.passing([process, http], sid, web, 41)  # still the old process's news
    assert not draining.passing([process, {**http, "Status": "critical"}], sid, web, 42)
    assert not draining.passing([{**process, "Output": "RUNNING pid 42, passing once up 10 s"}], sid, web, 42)
    assert not draining.passing([maint], sid, web, 42)
    assert draining.passing([http], sid, spec("web", ttl_check=False), 42)


# -- the whole run, against fakes ------------------------------------------------------------


class FakeAgent:
    def __init__(self, specs: list[ServiceSpec], comes_back: set[str]) -> None:
        self.comes_back = comes_back
        self.pids: dict[str, int] = {}
        self.maint: set[str] = set()
        self.calls: list[tuple] = []
        self.specs = {instance.instance_id(OWNER, s): s for s in specs}

    def maintenance(self, sid: str, enable: bool, reason: str = "", service: str = "") -> None:
        self.calls.append(("maint", sid, enable, reason))
        (self.maint.add if enable else self.maint.discard)(sid)

    def owned(self, owner: str) -> dict:
        result = {}
        for sid, s in self.specs.items():
            ok = s.namespec in self.comes_back
            checks = [{"CheckID": instance.ttl_check_id(sid), "Status": "passing" if ok else "critical",
                       "Output": f"RUNNING pid {self.pids.get(s.namespec, 1)}"}]
            result[sid] = ({"ID": sid}, checks)
        return result


class FakeSupervisord:
    def __init__(self, agent: FakeAgent, names: list[str], refuse_start: set[str] = frozenset(),
                 never_running: set[str] = frozenset()) -> None:
        self.agent, self.names, self.refuse_start, self.never_running = agent, names, refuse_start, never_running
        self.calls: list[tuple[str, str]] = []
        self.states = {n: "RUNNING" for n in names}

    def all_process_info(self) -> list[dict]:
        return [{"group": n.split(":")[0], "name": n.split(":")[-1], "pid": self.agent.pids.get(n, 1),
                 "statename": self.states[n]} for n in self.names]

    def signal(self, namespec: str, signal: str) -> None:
        self.calls.append(("signal", namespec))

    def stop(self, namespec: str, wait: bool = True) -> None:
        self.calls.append(("stop", namespec))
        self.states[namespec] = "STOPPED"

    def start(self, namespec: str, wait: bool = True) -> None:
        self.calls.append(("start", namespec))
        self.states[namespec] = "FATAL" if namespec in self.never_running else "RUNNING"
        if namespec in self.refuse_start:
            fault = xmlrpc.client.Fault(Faults.SPAWN_ERROR, f"SPAWN_ERROR: {namespec}")
            raise SupervisorError(f"supervisord answered startProcess: {fault.faultString}") from fault
        self.agent.pids[namespec] = self.agent.pids.get(namespec, 1) + 100


def fake_run(names: list[str], comes_back: set[str], *args: str, refuse_start: set[str] = frozenset(),
             never_running: set[str] = frozenset(), **kw):
    specs = [spec(n) for n in names]
    agent = FakeAgent(specs, comes_back)
    supervisord = FakeSupervisord(agent, names, refuse_start, never_running)
    configuration = Configuration(configfile="/etc/supervisord.conf", services={s.unit: s for s in specs},
                                  listeners={"consul": 10})
    snap = Snapshot(configuration, OWNER, "node1", supervisord.all_process_info(), agent.owned(OWNER), agent,
                    supervisord)
    said: list[str] = []
    code = draining.run(snap, supervisord, list(args), kw.pop("restart", False), said.append, sleep=lambda s: said.append(f"(slept {s:g})"),
                        clock=iter(range(0, 10_000, 5)).__next__, **kw)  # 5 s pass between reads
    return code, said, supervisord.calls, agent


def test_a_rolling_restart_stops_at_the_first_process_that_does_not_come_back():
    names = ["web:web_0", "web:web_1", "web:web_2"]
    code, said, calls, agent = fake_run(names, {"web:web_0"}, "web", restart=True, rolling=True, drain="1s",
                                        wait_passing="10s")
    assert code == 1
    assert said[:6] == ["web:web_0: draining 1s", "(slept 1)", "web:web_0: stopped", "web:web_0: started",
                        "web:web_0: passing", "web:web_1: draining 1s"]
    assert "web:web_1: not passing within 10s" in said
    assert said[-1] == "stopped there; untouched: web:web_2"
    assert ("stop", "web:web_2") not in calls and ("start", "web:web_2") not in calls
    assert agent.maint == set()  # whatever happened, no maintenance of ours is left behind
    assert [c[2] for c in agent.calls] == [True, False, True, False]
    assert agent.calls[0][3] == f"draining: restart requested by {draining.getpass.getuser()}@node1"


def test_a_start_supervisord_gives_up_on_is_a_process_that_did_not_come_back():
    code, said, calls, agent = fake_run(["db"], set(), "db", restart=True, refuse_start={"db"})
    assert code == 1 and said[-1].startswith("db: did not start: ")
    assert agent.maint == set() and ("signal", "consul") in calls
    code, said, calls, agent = fake_run(["db"], set(), "db", restart=True, never_running={"db"})
    assert code == 1 and said[-1] == "db: did not start: FATAL"


def test_stop_drains_then_stops_then_lifts_then_tells_the_listener():
    code, said, calls, agent = fake_run(["web:web_0", "web:web_1"], set(), "web:*")
    assert code == 0
    assert said == ["web:web_0: draining 0s", "web:web_1: draining 0s", "web:web_0: stopped", "web:web_1: stopped"]
    assert calls == [("stop", "web:web_0"), ("stop", "web:web_1"), ("signal", "consul")]
    assert [c[2] for c in agent.calls] == [True, True, False, False] and agent.maint == set()


def test_an_unknown_name_does_nothing():
    code, said, calls, agent = fake_run(["db"], set(), "db", "nope")
    assert (code, said, calls, agent.calls) == (1, ["nope: no process with a [consul:*] section has that name"],
                                                [], [])


# -- against a real supervisord and agent ----------------------------------------------------


def drain_cli(sv, agent, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "supervisor_consul", *args, "-c", str(sv.conf), "--http-addr",
                             agent.http_addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def finished(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def passing_count(agent, name: str) -> int:
    return len(agent._get(f"/v1/health/service/{name}?passing"))


def pids(sv, program: str, count: int) -> list[int]:
    return [sv.info(f"{program}:{program}_{n}")["pid"] for n in range(count)]


def test_stop_takes_the_instance_out_of_dns_while_it_still_runs(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "web")
    started = time.monotonic()
    proc = drain_cli(sv, consul_agent, "stop", "web", "--drain", "2s")
    # Out of the ?passing answer (and so DNS) while supervisord still runs it.
    wait_for(lambda: passing_count(consul_agent, name) == 0 and sv.state("web") == "RUNNING", timeout=10,
             message="out of ?passing while RUNNING")
    assert consul_agent.dns(f"{name}.service.consul") == []
    assert sv.state("web") == "RUNNING"
    code, err = finished(proc)
    assert code == 0, err
    assert time.monotonic() - started >= 2
    assert err.splitlines() == ["web: draining 2s", "web: stopped"]
    assert sv.state("web") == "STOPPED"
    # Maintenance lifted after the stop, the listener told: deregistered, not kept in maintenance.
    wait_for(lambda: consul_agent.health(name) == [], timeout=10, message="deregistered once stopped")


def sample_passing(agent, name: str, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        samples.append(passing_count(agent, name))
        time.sleep(0.02)


def test_a_rolling_restart_keeps_two_of_three_passing(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "web", numprocs=3)
    before = pids(sv, "web", 3)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_passing, args=(consul_agent, name, stop, samples), daemon=True)
    sampler.start()
    try:
        code, err = finished(drain_cli(sv, consul_agent, "restart", "web", "--rolling", "--drain", "0.5s"))
    finally:
        stop.set()
        sampler.join(5)
    assert code == 0, err
    assert err.splitlines() == [f"web:web_{n}: {step}" for n in range(3)
                                for step in ("draining 0.5s", "stopped", "started", "passing")]
    after = pids(sv, "web", 3)
    assert not set(before) & set(after)
    assert passing_count(consul_agent, name) == 3
    assert len(samples) > 50 and min(samples) == 2, (len(samples), min(samples))
    print(f"rolling restart of 3: {len(samples)} samples of ?passing, min {min(samples)}")


def test_a_rolling_restart_stops_at_a_process_that_does_not_come_back(consul_agent, supervisord_factory, tmp_path):
    name = unique("web")
    flag = tmp_path / "broken"
    sv = supervisord_factory(f"""
[program:web]
command=sh -c '[ -e {flag} ] && exit 1; exec sleep 300'
process_name=%(program_name)s_%(process_num)d
numprocs=3
startsecs=1
startretries=0
[consul:web]
name={name}
""" + listener(consul_agent))
    wait_for(lambda: passing_count(consul_agent, name) == 3, message="3 passing")
    before = pids(sv, "web", 3)
    flag.write_text("")
    code, err = finished(drain_cli(sv, consul_agent, "restart", "web", "--rolling", "--wait-passing", "10s"))
    assert code == 1, err
    lines = err.splitlines()
    assert lines[:2] == ["web:web_0: draining 0s", "web:web_0: stopped"]
    assert lines[2].startswith("web:web_0: did not start: ")
    assert lines[-1] == "stopped there; untouched: web:web_1, web:web_2"
    assert sv.state("web:web_0") == "FATAL"
    assert pids(sv, "web", 3)[1:] == before[1:]  # the next ones untouched, and still in DNS
    wait_for(lambda: passing_count(consul_agent, name) == 2, timeout=10, message="the other two passing")


def test_supervisorctl_consul_stop_and_restart(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "web", numprocs=2,
                             stanza=listener(consul_agent) + CTLPLUGIN.format(addr=consul_agent.http_addr))
    before = pids(sv, "web", 2)
    result = sv.ctl("consul", "restart", "web:*", "--rolling")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web:web_1: passing" in result.stdout
    assert not set(before) & set(pids(sv, "web", 2))
    assert passing_count(consul_agent, name) == 2

    result = sv.ctl("consul", "stop", "web:web_0", "--drain", "0s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["web:web_0: draining 0s", "web:web_0: stopped"]
    wait_for(lambda: len(consul_agent.health(name)) == 1, timeout=10, message="web_0 deregistered")
    assert sv.ctl("consul", "stop", "nosuch").returncode == 1
