"""`supervisor-consul status`: the pure comparison, then the command against a
real supervisord and a real Consul agent."""
from __future__ import annotations

import json
import subprocess

from supervisor_consul import instance, status
from supervisor_consul.spec import ServiceSpec
from tests.harness import free_port, run_cli
from tests.test_integration import start_sleeper

OWNER, HOST, NOW = "0123456789ab", "node1", 1_800_000_000.0


def spec(name: str = "web", **overrides) -> ServiceSpec:
    return ServiceSpec(**{"namespec": name, "group": name, "process": name, "name": name, **overrides})


def info(name: str = "web", state: str = "RUNNING", pid: int = 42) -> dict:
    return {"name": name, "group": name, "statename": state, "pid": pid, "now": NOW, "start": NOW - 10,
            "stop": 0 if state == "RUNNING" else NOW - 5, "exitstatus": 0, "spawnerr": "", "description": ""}


def registered(name: str = "web", check_status: str = "passing", **spec_overrides) -> dict:
    registration = instance.of(spec(name, **spec_overrides), OWNER, HOST, claimed=True)
    service = {"ID": registration.service_id, "Service": name, "Port": 0, "Address": "",
               "Meta": {instance.SPEC_META: registration.fingerprint}}
    check = {"CheckID": registration.ttl_check_id, "Name": "supervisord process", "Status": check_status,
             "Output": "RUNNING pid 42", "ServiceID": registration.service_id}
    return {registration.service_id: (service, [check])}


def rows(infos, owned, **specs) -> list[status.Instance]:
    return status.instances(specs or {"web": spec()}, infos, owned, OWNER, HOST, NOW, claimed=True)


def test_in_step():
    [row] = rows([info()], registered())
    assert (row.namespec, row.state, row.service, row.drift) == ("web", "RUNNING", "web", "")
    assert row.checks == (status.Check("supervisord process", "passing", "RUNNING pid 42"),)


def test_drift_in_every_direction():
    assert rows([info()], {})[0].drift == "not registered"
    assert rows([info(state="STOPPED", pid=0)], registered())[0].drift == "registered, should not be"
    assert rows([info()], registered(check_status="critical"))[0].drift == \
        "process check is critical, should be passing"
    assert "another definition" in rows([info()], registered(port=81))[0].drift


def test_transient_states_are_never_drift():
    assert rows([info(state="STARTING", pid=0)], {})[0].drift == ""  # the listener leaves Consul alone
    assert rows([info(state="BACKOFF", pid=0)], {})[0].drift == ""  # never registers a new one


def test_an_orphan_and_a_process_without_a_section():
    [row] = rows([info("other")], registered("gone"))
    assert (row.namespec, row.service, row.drift) == ("-", "gone", "registered, but supervisord runs no such "
                                                                      "process")


def test_text_marks_drift():
    lines = status.text(rows([info()], {}))
    assert "DRIFT: not registered" in lines[0]


def status_command(sv, agent, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("status", "-c", str(sv.conf), "--http-addr", agent, *extra)


def test_status_command_in_step_drift_and_unreachable(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "sleeper", "port=7000")
    result = status_command(sv, consul_agent.http_addr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sleeper" in result.stdout and name in result.stdout and "passing" in result.stdout

    # Behind the listener's back: with it stopped, a stopped program stays registered.
    assert sv.ctl("stop", "consul").returncode == 0
    assert sv.ctl("stop", "sleeper").returncode == 0
    result = status_command(sv, consul_agent.http_addr, "--json")
    assert result.returncode == 1
    [row] = json.loads(result.stdout)
    assert (row["state"], row["drift"], row["in_step"]) == ("STOPPED", "registered, should not be", False)

    result = status_command(sv, f"127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "unreachable" in result.stderr


def test_an_instance_in_maintenance_is_judged_by_the_maintenance_table():
    owned = registered(check_status="warning")
    sid = next(iter(owned))
    owned[sid][1].append({"CheckID": instance.maintenance_check_id(sid), "Name": "Service Maintenance Mode",
                          "Status": "critical", "Notes": "kernel update", "Output": "", "ServiceID": sid})
    [row] = rows([info(state="STOPPED", pid=0)], owned)
    assert (row.maintenance, row.drift) == ("kernel update", "")  # kept registered, warning: in step
    assert "MAINTENANCE: kernel update" in status.text([row])[0]
    assert status.Check("Service Maintenance Mode", "critical", "kernel update") in row.checks
