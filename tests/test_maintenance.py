"""Maintenance mode: the pure parts (which processes a name means, what an
instance in maintenance shows, what the plan leaves alone), then
`supervisor-consul maint` and `supervisorctl consul …` against a real
supervisord and a real Consul agent."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from supervisor_consul import health, instance, maintenance, plan
from supervisor_consul.config import runs_listener
from supervisor_consul.health import KEEP, WARNING, Health, ProcessStatus
from supervisor_consul.spec import ServiceSpec
from tests.faults import converge
from tests.harness import consul_binary, listener, run_cli, wait_for
from tests.test_integration import process_check, start_sleeper, status_of, unique

OWNER, HOST, NOW = "0123456789ab", "node1", 1_800_000_000.0


def spec(namespec: str = "web", group: str | None = None, **overrides) -> ServiceSpec:
    group = group or namespec.split(":")[0]
    return ServiceSpec(**{"namespec": namespec, "group": group, "process": namespec.split(":")[-1],
                          "name": group, **overrides})


SERVICES = {s.namespec: s for s in (spec("web:web_0"), spec("web:web_1"), spec("db"))}


def test_names_as_supervisorctl_takes_them():
    def chosen(*names):
        specs, unknown = maintenance.select(SERVICES, names)
        return [s.namespec for s in specs], unknown
    assert chosen("web") == (["web:web_0", "web:web_1"], [])
    assert chosen("web:*") == (["web:web_0", "web:web_1"], [])
    assert chosen("web:web_1", "db") == (["db", "web:web_1"], [])
    assert chosen("all") == (["db", "web:web_0", "web:web_1"], [])
    assert chosen("nope", "db") == (["db"], ["nope"])


def test_in_maintenance_nothing_deregisters_and_nothing_is_critical():
    ttl = spec("db")
    for state in ("STOPPED", "FATAL", "EXITED", "UNKNOWN"):
        shown = health.in_maintenance(ProcessStatus(state, since=NOW - 3600), ttl)
        assert isinstance(shown, Health) and shown.status == WARNING, state
        assert shown.note.endswith("(kept registered: in maintenance)")
    assert health.in_maintenance(ProcessStatus("RUNNING", pid=7), ttl) == Health("passing", "RUNNING pid 7")
    for passing_through in ("STARTING", "STOPPING", "BACKOFF"):
        assert health.in_maintenance(ProcessStatus(passing_through), ttl) is KEEP
    # Without a check there is nothing to show the state with: registered as it is.
    assert health.in_maintenance(ProcessStatus("STOPPED"), spec("db", ttl_check=False)) is KEEP


def desired_and_actual(state: str, maintenance_reason: str | None):
    db = spec("db")
    registration = instance.of(db, OWNER, HOST)
    status = ProcessStatus(state, since=NOW)
    desired = {registration.service_id: plan.Desired.of(registration, status, db, NOW)}
    ids = registration.check_ids | {instance.maintenance_check_id(registration.service_id)}
    actual = {registration.service_id: plan.Actual(registration.service_id, registration.fingerprint, ids,
                                                   "passing", "RUNNING pid 7", NOW, maintenance_reason)}
    return desired, actual, registration


def test_plan_keeps_a_stopped_instance_in_maintenance():
    desired, actual, registration = desired_and_actual("STOPPED", "disk swap")
    [operation] = plan.plan(desired, actual, NOW, complete=True)
    assert isinstance(operation, plan.UpdateTTL) and operation.health.status == WARNING
    desired, actual, _ = desired_and_actual("STOPPED", None)
    assert plan.plan(desired, actual, NOW, complete=True) == [plan.Deregister(registration.service_id)]


def test_reregistering_keeps_the_maintenance_check_and_drops_only_our_stale_checks():
    desired, actual, registration = desired_and_actual("RUNNING", "disk swap")
    sid = registration.service_id
    actual[sid] = plan.Actual(sid, "an older definition", actual[sid].check_ids | {f"{sid}:http"}, "passing",
                              "RUNNING pid 7", NOW, "disk swap")
    [operation] = plan.plan(desired, actual, NOW, complete=True)
    assert isinstance(operation, plan.Register) and operation.stale_checks == {f"{sid}:http"}


def test_listener_command_lines_are_recognised():
    assert runs_listener("supervisor-consul listen -c /etc/supervisord.conf")
    assert runs_listener("/opt/venv/bin/supervisor-consul listen")
    assert runs_listener(f"{sys.executable} -m supervisor_consul listen --http-addr 127.0.0.1:8500")
    assert not runs_listener("supervisor-consul check")
    assert not runs_listener("sleep 300")


# -- against a real supervisord and agent --------------------------------------------------

CTLPLUGIN = """
[ctlplugin:consul]
supervisor.ctl_factory = supervisor_consul.ctlplugin:make_consul_controllerplugin
http_addr = {addr}
"""


def maint(sv, agent, *args: str) -> subprocess.CompletedProcess:
    return run_cli("maint", "-c", str(sv.conf), "--http-addr", agent.http_addr, *args)


def maintenance_reason(agent, name: str) -> list[str | None]:
    return [next((c["Notes"] for c in e["Checks"] if c["CheckID"].startswith(instance.MAINTENANCE_PREFIX)), None)
            for e in agent.health(name)]


def test_maint_survives_stop_start_and_a_listener_restart(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "sleeper", "port=7100")
    result = maint(sv, consul_agent, "sleeper", "on", "--reason", "swapping a disk")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sleeper: in maintenance" in result.stdout
    assert maintenance_reason(consul_agent, name) == ["swapping a disk"]
    assert consul_agent.dns(f"{name}.service.consul") == []  # out of DNS while supervisord runs it
    assert sv.state("sleeper") == "RUNNING"

    # Stopped, the instance stays registered: its process check warns, the maintenance stays.
    assert sv.ctl("stop", "sleeper").returncode == 0
    wait_for(lambda: status_of(consul_agent, name) == [
        ("warning", "STOPPED (kept registered: in maintenance)")], message="stopped instance kept, warning")
    assert sv.ctl("restart", "consul").returncode == 0  # a new listener reads the maintenance from the agent
    assert sv.ctl("start", "sleeper").returncode == 0
    pid = sv.info("sleeper")["pid"]
    wait_for(lambda: status_of(consul_agent, name) == [("passing", f"RUNNING pid {pid}")],
             message="running again, passing")
    assert maintenance_reason(consul_agent, name) == ["swapping a disk"]
    assert maint(sv, consul_agent, "sleeper", "on").stdout.strip() == "sleeper: already in maintenance: swapping a disk"

    # Out of maintenance while stopped: the listener is told, and deregisters at once rather
    # than at its next 60 s reconcile.
    assert sv.ctl("stop", "sleeper").returncode == 0
    wait_for(lambda: status_of(consul_agent, name) == [
        ("warning", "STOPPED (kept registered: in maintenance)")], message="stopped instance kept")
    result = maint(sv, consul_agent, "sleeper", "off")
    assert result.returncode == 0 and "sleeper: out of maintenance" in result.stdout, result.stdout + result.stderr
    wait_for(lambda: consul_agent.health(name) == [], timeout=10, message="deregistered once out of maintenance")


def test_maint_answers_for_every_name(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "sleeper")
    assert sv.ctl("stop", "sleeper").returncode == 0
    wait_for(lambda: consul_agent.health(name) == [], message="deregistered")
    result = maint(sv, consul_agent, "sleeper", "nosuch", "on")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "nosuch: no process with a [consul:*] section has that name",
        "sleeper: not registered in Consul (STOPPED); start it first, then put it into maintenance"]


def test_supervisorctl_consul_status_and_maint(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "sleeper", "port=7200",
                             stanza=listener(consul_agent) + CTLPLUGIN.format(addr=consul_agent.http_addr))
    result = sv.ctl("consul", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sleeper" in result.stdout and name in result.stdout and "passing" in result.stdout

    # As typed in a shell: supervisorctl joins its arguments with spaces, the quotes are gone.
    result = sv.ctl("consul", "maint", "sleeper", "on", "--reason", "kernel update")
    assert result.returncode == 0, result.stdout
    assert maintenance_reason(consul_agent, name) == ["kernel update"]
    [row] = json.loads(sv.ctl("consul", "status", "--json").stdout)
    assert (row["maintenance"], row["drift"]) == ("kernel update", "")
    assert "MAINTENANCE: kernel update" in sv.ctl("consul", "status").stdout

    assert sv.ctl("consul", "maint", "sleeper", "off").returncode == 0
    assert maintenance_reason(consul_agent, name) == [None]
    wait_for(lambda: process_check(consul_agent.health(name)[0])["Status"] == "passing", message="passing")

    result = sv.ctl("consul", "frobnicate")
    assert result.returncode == 2 and "consul maint NAME" in result.stdout
    assert "consul status" in sv.ctl("help", "consul").stdout


def test_supervisorctl_plugin_names_a_bad_setting(consul_agent, supervisord_factory):
    name = unique("x")
    sv = supervisord_factory(f"[program:x]\ncommand=sleep 300\n[consul:x]\nname={name}\n"
                             + CTLPLUGIN.format(addr=consul_agent.http_addr) + "http_adr = 127.0.0.1:1\n")
    result = sv.ctl("consul", "status")
    assert result.returncode == 2
    assert "[ctlplugin:consul] http_adr: not a setting of the plugin" in result.stdout


def test_a_changed_definition_drops_our_stale_check_and_keeps_the_maintenance(consul_agent, supervisord_factory):
    sv, name = start_sleeper(consul_agent, supervisord_factory, "sleeper", "check=tcp://127.0.0.1:1\ninterval=1s")
    [sid] = [s["ID"] for s in consul_agent.services().values() if s["Service"] == name]
    assert maint(sv, consul_agent, "sleeper", "on", "--reason", "re-cabling").returncode == 0
    assert set(consul_agent.checks()) >= {f"{sid}:process", f"{sid}:tcp", instance.maintenance_check_id(sid)}

    # The tcp check leaves the section; a SIGHUP has the listener read it again.
    sv.conf.write_text(sv.conf.read_text().replace("check=tcp://127.0.0.1:1\ninterval=1s\n", ""))
    assert sv.ctl("signal", "HUP", "consul").returncode == 0
    wait_for(lambda: {c for c, check in consul_agent.checks().items() if check["ServiceID"] == sid}
             == {f"{sid}:process", instance.alias_check_id(sid), instance.maintenance_check_id(sid)},
             message="tcp check gone, maintenance kept")
    assert maintenance_reason(consul_agent, name) == ["re-cabling"]


def test_the_reason_is_the_rest_of_the_supervisorctl_line():
    from supervisor_consul.ctlplugin import _words
    assert _words("maint web on --reason kernel update") == ["maint", "web", "on", "--reason", "kernel update"]
    assert _words("maint web on --reason 'kernel update'") == ["maint", "web", "on", "--reason", "kernel update"]
    assert _words("maint web on --reason don't touch") == ["maint", "web", "on", "--reason", "don't touch"]
    assert _words("status --json") == ["status", "--json"]


@pytest.mark.fault("18. maintenance lifted outside the listener")
def test_a_maintenance_lifted_with_consul_maint_drops_a_stopped_process_from_dns(consul_agent, supervisord_factory,
                                                                               converged):
    """`consul maint` on, supervisorctl stop, `consul maint` off: the listener is told
    nothing, yet the stopped process leaves DNS within one heartbeat period (ttl/3)."""
    sv, name = start_sleeper(consul_agent, supervisord_factory, "web", "ttl=6s")
    [entry] = consul_agent.health(name)
    sid = entry["Service"]["ID"]

    def consul_maint(*args: str) -> None:
        cli = subprocess.run([consul_binary(), "maint", *args, f"-service={sid}",
                              f"-http-addr={consul_agent.http_addr}"], capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stdout + cli.stderr

    consul_maint("-enable", "-reason=disk swap")
    assert sv.ctl("stop", "web").returncode == 0
    wait_for(lambda: process_check(consul_agent.health(name)[0])["Status"] == WARNING, timeout=15,
             message="kept registered, warning, while in maintenance")
    consul_maint("-disable")
    lifted = time.monotonic()
    wait_for(lambda: consul_agent.dns(f"{name}.service.consul") == [] and consul_agent.health(name) == [],
             timeout=15, message="the stopped process out of DNS and the catalog")
    took = time.monotonic() - lifted
    assert took <= 6 / 3 + 1.5, f"{took:.1f} s: more than one heartbeat period (2 s) and some slack"
    seconds = converge(consul_agent, sv)
    converged(took + seconds, f"with ttl=6s: out of DNS {took:.1f} s after `consul maint -disable` "
                              f"(heartbeat period 2 s)")
