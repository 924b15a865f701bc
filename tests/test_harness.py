"""The harness itself works for real: Consul agent, DNS, restart, supervisord."""
from __future__ import annotations

import pytest

from tests.harness import ConsulAgent, Supervisord, free_port, pid_alive, wait_for


def test_free_port_and_wait_for():
    a, b = free_port(), free_port()
    assert a != b and 0 < a < 65536
    calls = []

    def pred():
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        return "ok"

    assert wait_for(pred, timeout=5, interval=0.01) == "ok"
    try:
        wait_for(lambda: 1 / 0, timeout=0.1, interval=0.01, message="never")
    except AssertionError as exc:
        assert "waiting for never" in str(exc) and "ZeroDivisionError" in str(exc)
    else:
        raise AssertionError("wait_for did not time out")


def test_agent_registers_service(consul_agent):
    c = consul_agent.client()
    c.agent.service.register("harness-svc", service_id="harness-svc-1", port=1234)
    try:
        services = wait_for(lambda: "harness-svc-1" in consul_agent.services()
                            and consul_agent.services(), message="service registered")
        assert services["harness-svc-1"]["Service"] == "harness-svc"
        assert services["harness-svc-1"]["Port"] == 1234
        entries = consul_agent.health("harness-svc")
        assert [e["Service"]["ID"] for e in entries] == ["harness-svc-1"]
        assert entries[0]["Node"]["Node"] == "test-node"
    finally:
        c.agent.service.deregister("harness-svc-1")
    wait_for(lambda: "harness-svc-1" not in consul_agent.services(),
             message="service deregistered")


def test_dns_a_and_srv(consul_agent):
    c = consul_agent.client()
    c.agent.service.register("hname", service_id="h1", port=9999)
    try:
        assert wait_for(lambda: consul_agent.dns("hname.service.consul", "A"),
                        message="DNS A answer") == ["127.0.0.1"]
        assert consul_agent.dns("hname.service.consul", "SRV") == [
            "1 1 9999 test-node.node.dc1.consul."]
    finally:
        c.agent.service.deregister("h1")
    wait_for(lambda: consul_agent.dns("hname.service.consul", "A") == [],
             message="DNS answer gone")
    assert consul_agent.dns("nosuch.service.consul", "A") == []


@pytest.mark.integration
def test_agent_restart_same_ports_loses_registration(tmp_path):
    with ConsulAgent(tmp_path / "consul") as agent:
        ports = (agent.http_port, agent.dns_port, agent.serf_lan_port,
                 agent.serf_wan_port, agent.server_port, agent.grpc_port)
        assert len(set(ports)) == 6
        first_pid = agent.pid
        agent.client().agent.service.register("rs", service_id="rs1", port=1)
        wait_for(lambda: "rs1" in agent.services(), message="rs1 registered")
        agent.restart()
        assert agent.pid != first_pid and not pid_alive(first_pid)
        assert (agent.http_port, agent.dns_port, agent.serf_lan_port,
                agent.serf_wan_port, agent.server_port, agent.grpc_port) == ports
        assert "rs1" not in agent.services()
        pid = agent.pid
    assert agent.pid is None and not pid_alive(pid)


def test_supervisord_program_lifecycle(supervisord_factory):
    sv = supervisord_factory("[program:sleeper]\ncommand=sleep 300\nstartsecs=1\n")
    assert pid_alive(sv.pid)
    info = sv.wait_state("sleeper", "RUNNING")
    sleep_pid = info["pid"]
    assert sleep_pid and pid_alive(sleep_pid)
    assert "sleeper" in sv.ctl("status").stdout

    sv.ctl("stop", "sleeper")
    sv.wait_state("sleeper", "STOPPED")
    wait_for(lambda: not pid_alive(sleep_pid), timeout=10, message="sleep gone")

    sv.ctl("start", "sleeper")
    sleep_pid = sv.wait_state("sleeper", "RUNNING")["pid"]
    sv_pid = sv.pid
    sv.cleanup()
    assert not pid_alive(sleep_pid)
    assert not pid_alive(sv_pid)
    assert "success: sleeper entered RUNNING state" in sv.log_text()


@pytest.mark.integration
def test_supervisord_kill_hard_then_cleanup(tmp_path):
    sv = Supervisord(tmp_path / "sv", "[program:sleeper]\ncommand=sleep 300\n")
    try:
        sv.start()
        sleep_pid = sv.wait_state("sleeper", "RUNNING")["pid"]
        sv_pid = sv.pid
        sv.kill_hard()
        assert not pid_alive(sv_pid)
        assert pid_alive(sleep_pid)  # the child survives supervisord
    finally:
        sv.cleanup()
    assert not pid_alive(sleep_pid)
