"""Many hosts, one Consul cluster (issue 5, item 6): three servers and two
client agents on their own loopback addresses, each client with its own
supervisord and listener, as on five machines.  A service both hosts run is
found through every agent's DNS; when one host's supervisord dies only that
host's instances go critical.
"""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.cluster import CLIENTS, Cluster, ClusterAgent, free_port_run
from tests.harness import Supervisord, listener, wait_for

SERVICE = "web"
TTL = 5  # seconds; [consul:web] ttl


@pytest.fixture
def cluster(tmp_path):
    with Cluster(tmp_path / "consul") as cluster:
        yield cluster


@pytest.fixture
def web_ports():
    """Two ports free on both hosts' addresses: web runs on the same two on each host."""
    first = free_port_run(list(CLIENTS.values()), 2)
    return [first, first + 1]


@pytest.fixture
def hosts(cluster, web_ports, tmp_path):
    """host name -> its supervisord, running web twice on the host's own address, with the
    listener pointing at the host's own client agent."""
    started: dict[str, Supervisord] = {}
    try:
        for host, agent in cluster.clients.items():
            sv = Supervisord(tmp_path / host, f"""
[program:web]
; process_num doubles as the port: web_P and web_P+1
command=nc -k -l {agent.address} %(process_num)d
process_name=%(program_name)s_%(process_num)d
numprocs=2
numprocs_start={web_ports[0]}
startsecs=1
autorestart=true
[consul:web]
name={SERVICE}
port=%(process_num)d
ttl={TTL}s
deregister_after=1m
""" + listener(agent))
            started[host] = sv
            sv.start()
        yield started
    finally:
        for sv in started.values():
            sv.cleanup()


def by_host(agent: ClusterAgent) -> dict[str, list[tuple[int, str]]]:
    """node -> sorted (port, status) of every web instance, through agent's HTTP API; an
    instance's status is its worst check's (the node's serfHealth included)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for entry in agent.health(SERVICE):
        statuses = {check["Status"] for check in entry["Checks"]}
        worst = next(s for s in ("critical", "warning", "passing") if s in statuses)
        out.setdefault(entry["Node"]["Node"], []).append((entry["Service"]["Port"], worst))
    return {node: sorted(instances) for node, instances in out.items()}


def srv_by_host(agent: ClusterAgent) -> dict[str, list[int]]:
    """node -> sorted ports of the SRV records for web.service.consul through agent's DNS."""
    out: dict[str, list[int]] = {}
    for record in agent.dns(f"{SERVICE}.service.consul", "SRV"):
        _, _, port, target = record.split()
        out.setdefault(target.split(".")[0], []).append(int(port))
    return {node: sorted(ports) for node, ports in out.items()}


def both_passing(cluster: Cluster, web_ports: list[int]) -> dict[str, list[tuple[int, str]]]:
    """Wait until both hosts' web instances pass, as a server sees them; that view."""
    every = {host: [(port, "passing") for port in web_ports] for host in CLIENTS}
    wait_for(lambda: by_host(cluster.servers[0]) == every, timeout=30, message="both hosts' web instances passing")
    return every


class Watch(threading.Thread):
    """Polls web's health through one agent until stopped: every distinct view seen."""

    def __init__(self, agent: ClusterAgent) -> None:
        super().__init__(daemon=True)
        self.agent, self.seen, self.errors = agent, [], []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                view = by_host(self.agent)
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                self.errors.append(repr(exc))
                continue
            if not self.seen or self.seen[-1][1] != view:
                self.seen.append((time.monotonic(), view))

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def test_every_agent_finds_both_hosts_and_a_dead_supervisord_takes_only_its_own(cluster, hosts, web_ports):
    every = both_passing(cluster, web_ports)

    # Each host's instances are registered in its own agent, by its own listener (its own owner).
    owners = {host: {entry["Service"]["Meta"]["supervisor-consul-owner"]
                     for entry in cluster.clients[host].health(SERVICE) if entry["Node"]["Node"] == host}
              for host in hosts}
    assert all(len(o) == 1 for o in owners.values()) and owners["host-a"] != owners["host-b"]
    for host, agent in cluster.clients.items():
        assert sorted(service["Port"] for service in agent.services().values()
                      if service["Service"] == SERVICE) == web_ports, host
        assert [service["Service"] for service in agent.services().values()].count("supervisord") == 1  # the claim

    # Through EVERY agent's DNS, servers and clients: both hosts' instances, at each host's address.
    both = {"host-a": web_ports, "host-b": web_ports}
    for agent in cluster.agents:
        wait_for(lambda: srv_by_host(agent) == both, timeout=10, message=f"SRV for both hosts through {agent.node}")
        assert sorted(agent.dns(f"{SERVICE}.service.consul", "A")) == ["127.0.0.21", "127.0.0.22"], agent.node
        assert agent.dns("host-a.node.consul", "A") == ["127.0.0.21"], agent.node

    # host-a's supervisord dies with all its children (SIGKILL, as the OOM killer would); its agent
    # lives on.  host-b is watched throughout.
    watches = [Watch(agent) for agent in (cluster.servers[1], cluster.clients["host-b"])]
    for watch in watches:
        watch.start()
    try:
        hosts["host-a"].kill_with_children()
        killed = time.monotonic()
        wait_for(lambda: by_host(cluster.servers[0])["host-a"] == [(p, "critical") for p in web_ports],
                 timeout=TTL + 10, interval=0.05, message="host-a's instances critical")
        critical_after = time.monotonic() - killed
        for agent in cluster.agents:
            wait_for(lambda: srv_by_host(agent) == {"host-b": web_ports}, timeout=5,
                     message=f"only host-b's instances in SRV through {agent.node}")
            assert agent.dns(f"{SERVICE}.service.consul", "A") == ["127.0.0.22"], agent.node
        # Watch host-b for a whole TTL after the kill and a second more: had its heartbeats
        # stopped too, it would have gone critical by then.
        time.sleep(max(0.0, killed + TTL + 1 - time.monotonic()))
    finally:
        for watch in watches:
            watch.stop()

    print(f"cluster ready after {cluster.ready_after:.1f} s (leader after {cluster.leader_after:.1f} s); "
          f"host-a critical {critical_after:.1f} s after the kill (ttl {TTL} s)")
    assert critical_after <= TTL + 3  # Consul's TTL timer, plus polling on a busy machine
    for watch in watches:
        assert not watch.errors, (watch.agent.node, watch.errors[:3])
        assert watch.seen and watch.seen[0][1] == every, (watch.agent.node, watch.seen[:1])
        host_b_views = {tuple(view.get("host-b", [])) for _, view in watch.seen}
        assert host_b_views == {tuple(every["host-b"])}, (watch.agent.node, watch.seen)
    # host-b's supervisord and listener never noticed.
    sv_b = hosts["host-b"]
    assert {info["statename"] for info in sv_b.rpc().supervisor.getAllProcessInfo()} == {"RUNNING"}
    assert by_host(cluster.clients["host-b"]) == {"host-a": [(p, "critical") for p in web_ports],
                                                   "host-b": every["host-b"]}


def test_a_whole_host_dies_and_is_forced_out(cluster, hosts, web_ports):
    """A host crash takes its agent too: no agent runs the TTL checks or their
    deregister_after any more, so the node's own health (serfHealth) is what
    turns its instances critical, and they stay in the catalog until the node is
    reaped (reconnect_timeout, 72 h by default) or forced out."""
    every = both_passing(cluster, web_ports)

    hosts["host-a"].kill_with_children()
    cluster.clients["host-a"].kill()
    killed = time.monotonic()
    survivors = [*cluster.servers, cluster.clients["host-b"]]
    for agent in survivors:
        wait_for(lambda: srv_by_host(agent) == {"host-b": web_ports}, timeout=30, interval=0.1,
                 message=f"only host-b's instances in SRV through {agent.node}")
    out_of_dns_after = time.monotonic() - killed
    serf = {c["CheckID"]: c["Status"] for c in cluster.servers[0]._get("/v1/health/node/host-a")}
    assert serf["serfHealth"] == "critical"
    assert by_host(cluster.servers[0]) == {"host-a": [(p, "critical") for p in web_ports], "host-b": every["host-b"]}

    # What an operator does for a host that is not coming back: `consul force-leave host-a`.
    force_leave = subprocess.run([cluster.servers[0].binary, "force-leave", f"-http-addr={cluster.servers[0].http_addr}",
                                  "host-a"], capture_output=True, text=True, timeout=30)
    assert force_leave.returncode == 0, force_leave.stdout + force_leave.stderr
    wait_for(lambda: by_host(cluster.servers[0]) == {"host-b": every["host-b"]}, timeout=30,
             message="host-a's instances gone from the catalog")
    print(f"host-a out of DNS {out_of_dns_after:.1f} s after the crash (serfHealth critical); "
          f"gone {time.monotonic() - killed:.1f} s after it, with force-leave")
