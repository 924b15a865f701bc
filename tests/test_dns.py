"""DNS as operators use it: the real `dig` against the agent's DNS port, and
through a real dnsmasq that forwards `.consul` to it (the snippet in docs/operations.md)."""
from __future__ import annotations

import json
import urllib.request
import uuid

from tests.dig import Dnsmasq, dig, srv_ports
from tests.harness import LOOPBACK, ConsulAgent, free_port_prefix, listener, wait_for


def node_target(agent: ConsulAgent) -> str:
    """The SRV target Consul gives an instance without its own address: its node's name."""
    with urllib.request.urlopen(f"http://{agent.http_addr}/v1/agent/self", timeout=5) as resp:
        config = json.load(resp)["Config"]
    return f"{config['NodeName']}.node.{config['Datacenter']}.consul."


def netcat(agent: ConsulAgent, make, numprocs: int):
    """A supervisord running `nc -l 127.0.0.1 PORT` numprocs times, each one an
    instance of one service (port P1, P2, ...); (supervisord, service name, ports)."""
    name, prefix = f"netcat-{uuid.uuid4().hex[:8]}", free_port_prefix(numprocs)
    sv = make(f"""
[program:netcat]
command=nc -l 127.0.0.1 {prefix}%(process_num)d
process_name=%(program_name)s_%(process_num)d
numprocs={numprocs}
numprocs_start=1
autorestart=true

[consul:netcat]
name={name}
port={prefix}%(process_num)d
tags=tcp
""" + listener(agent, buffer_size=100))
    return sv, name, [int(f"{prefix}{n}") for n in range(1, numprocs + 1)]


def test_dig_gives_a_and_srv_records_and_drops_a_stopped_instance(consul_agent, supervisord_factory):
    sv, name, ports = netcat(consul_agent, supervisord_factory, numprocs=2)
    server, port, target = LOOPBACK, consul_agent.dns_port, node_target(consul_agent)

    # dig @127.0.0.1 -p 8600 NAME.service.consul SRV: one record per instance, its own port.
    srv = wait_for(lambda: srv_ports(dig(server, port, f"{name}.service.consul", "SRV")) == ports
                   and dig(server, port, f"{name}.service.consul", "SRV"),
                   message=f"SRV records for both instances on ports {ports}")
    assert sorted(r.split()[3] for r in srv) == [target, target]
    assert all(r.split()[:2] == ["1", "1"] for r in srv)  # priority 1, weight 1
    # ... and A: the instances' address (both on this node, so one record).
    assert dig(server, port, f"{name}.service.consul", "A") == ["127.0.0.1"]
    # The SRV target resolves too, and the RFC 2782 form finds instances by tag (tags=tcp).
    assert dig(server, port, target, "A") == ["127.0.0.1"]
    assert srv_ports(dig(server, port, f"_{name}._tcp.service.consul", "SRV")) == ports
    assert srv_ports(dig(server, port, f"tcp.{name}.service.consul", "SRV")) == ports

    # supervisorctl stop netcat:netcat_1 -> DNS stops handing out that instance.
    assert sv.ctl("stop", "netcat:netcat_1").returncode == 0
    wait_for(lambda: srv_ports(dig(server, port, f"{name}.service.consul", "SRV")) == ports[1:],
             message=f"SRV without the stopped instance's port {ports[0]}")
    assert dig(server, port, f"{name}.service.consul", "A") == ["127.0.0.1"]

    # Stop the other one too: NXDOMAIN, no records at all.
    assert sv.ctl("stop", "netcat:netcat_2").returncode == 0
    wait_for(lambda: dig(server, port, f"{name}.service.consul", "SRV") == [], message="no SRV records left")
    assert dig(server, port, f"{name}.service.consul", "A") == []


def test_dnsmasq_forwards_consul_domain_to_the_agent(consul_agent, supervisord_factory, tmp_path):
    sv, name, ports = netcat(consul_agent, supervisord_factory, numprocs=1)
    wait_for(lambda: dig(LOOPBACK, consul_agent.dns_port, f"{name}.service.consul", "A"),
             message="A record straight from the agent")

    # docs/operations.md's /etc/dnsmasq.d/10-consul, with the test agent's DNS port.
    with Dnsmasq(tmp_path / "dnsmasq", f"server=/consul/127.0.0.1#{consul_agent.dns_port}\n") as forwarder:
        # dnsmasq has no other upstream (--no-resolv): an answer can only come from Consul.
        assert dig(LOOPBACK, forwarder.port, f"{name}.service.consul", "A") == ["127.0.0.1"]
        srv = dig(LOOPBACK, forwarder.port, f"{name}.service.consul", "SRV")
        assert srv_ports(srv) == ports and srv[0].split()[3] == node_target(consul_agent)
        assert f"forwarded {name}.service.consul to 127.0.0.1#{consul_agent.dns_port}" in forwarder.log_text()

        # Consul answers with TTL 0, so dnsmasq caches nothing: a stop shows through it at once.
        assert sv.ctl("stop", "netcat:netcat_1").returncode == 0
        wait_for(lambda: dig(LOOPBACK, forwarder.port, f"{name}.service.consul", "A") == [],
                 message="no A record through dnsmasq after the stop")
