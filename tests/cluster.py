"""A real Consul cluster on one machine, laid out as it would be on five hosts:
three servers (127.0.0.11-13) and two client agents (127.0.0.21-22, the
hosts "host-a" and "host-b"), each on its own loopback address with its own
data directory, joined by -retry-join like machines on a network.

Every agent listens on the same port numbers on its own address (picked free
once per cluster, or given, as the demo gives Consul's defaults), so two
clusters on one machine never collide.  Every process is started and stopped
by pid.
"""
from __future__ import annotations

import dataclasses
import pathlib
import socket
import subprocess
import time

from tests.harness import ConsulAgent, _handed_out_ports, _tail, bindable

SERVERS = {"server-1": "127.0.0.11", "server-2": "127.0.0.12", "server-3": "127.0.0.13"}
CLIENTS = {"host-a": "127.0.0.21", "host-b": "127.0.0.22"}

# Speed for a cluster on loopback: raft timeouts at their shortest; no update
# check, and no WAN pool (-serf-wan-port -1: one datacenter needs none); and a
# client that is stopped exits at once instead of leaving the cluster
# gracefully first (4 s), since the whole cluster goes with it.
TUNING = ("disable_update_check = true", "performance { raft_multiplier = 1 }", "leave_on_terminate = false")


@dataclasses.dataclass(frozen=True)
class Ports:
    """The port numbers every agent of a cluster uses on its own address."""
    serf_lan: int = 8301
    server: int = 8300
    http: int = 8500
    dns: int = 8600


def free_port_run(addresses: list[str], count: int) -> int:
    """A port P such that P .. P+count-1 are free for TCP and UDP on every one of addresses
    (and none was handed out before)."""
    for _ in range(500):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            first = s.getsockname()[1]
        run = range(first, first + count)
        if run[-1] < 65536 and not _handed_out_ports.intersection(run) \
                and all(bindable(address, port) for port in run for address in addresses):
            _handed_out_ports.update(run)
            return first
    raise RuntimeError(f"could not find {count} consecutive ports free on {', '.join(addresses)}")


class ClusterAgent(ConsulAgent):
    """One agent of a Cluster: a server, or a host's client agent, on its own address.

    Everything of ConsulAgent that goes through http_addr (services, checks,
    health, register_foreign, stop) works on it as is.
    """

    def __init__(self, workdir: pathlib.Path, node: str, address: str, ports: Ports,
                 join: list[str], server: bool, binary: str | None = None) -> None:
        super().__init__(workdir, binary)
        self.node, self.address, self.ports, self.join, self.server = node, address, ports, join, server
        self.http_port, self.dns_port = ports.http, ports.dns

    @property
    def http_addr(self) -> str:
        return f"{self.address}:{self.ports.http}"

    def command(self) -> list[str]:
        role = ["-server", f"-bootstrap-expect={len(self.join)}"] if self.server else []
        return [
            self.binary, "agent", *role, "-ui",
            "-node", self.node, "-data-dir", str(self.workdir / "data"),
            "-bind", self.address, "-advertise", self.address, "-client", self.address,
            "-serf-lan-port", str(self.ports.serf_lan), "-server-port", str(self.ports.server),
            "-http-port", str(self.ports.http), "-dns-port", str(self.ports.dns), "-serf-wan-port", "-1",
            *(f"-retry-join={address}" for address in self.join), "-retry-interval", "1s",
            *(arg for hcl in TUNING for arg in ("-hcl", hcl)),
            *self.extra_args,
        ]

    def start(self, new_session: bool = False) -> None:
        """Start the agent without waiting: no agent has a leader until three servers run."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=str(self.workdir),
                                      start_new_session=new_session)

    def kill(self) -> None:
        """SIGKILL the agent, as a host crash would: no leave, no shutdown."""
        if self._proc is not None:
            self._proc.kill()
        self.stop()  # reaps it and closes the log

    def check_running(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise RuntimeError(f"consul agent {self.node} is not running (rc={code}); "
                               f"log tail:\n{_tail(self.log_path)}")

    def dns(self, name: str, rdtype: str = "A") -> list[str]:
        """The answer records for name from this agent's DNS, with the real dig (as `dig +short`
        prints them); [] for NXDOMAIN."""
        from tests.dig import dig

        return dig(self.address, self.ports.dns, name, rdtype)


class Cluster:
    """Three Consul servers and a client agent per host, on loopback addresses."""

    def __init__(self, workdir: pathlib.Path, ports: Ports | None = None, binary: str | None = None,
                 servers: dict[str, str] = SERVERS, clients: dict[str, str] = CLIENTS) -> None:
        self.workdir = pathlib.Path(workdir).resolve()  # the agents run in their own directories
        if ports is None:
            first = free_port_run([*servers.values(), *clients.values()], 4)
            ports = Ports(first, first + 1, first + 2, first + 3)
        self.ports = ports
        join = [f"{address}:{self.ports.serf_lan}" for address in servers.values()]
        self.servers = [ClusterAgent(self.workdir / node, node, address, self.ports, join, True, binary)
                        for node, address in servers.items()]
        self.clients = {node: ClusterAgent(self.workdir / node, node, address, self.ports, join, False, binary)
                        for node, address in clients.items()}
        self.leader_after: float | None = None  # seconds from start until server-1 knew a leader
        self.ready_after: float | None = None  # ... until every agent did, with every member alive

    @property
    def agents(self) -> list[ClusterAgent]:
        return [*self.servers, *self.clients.values()]

    def start(self, timeout: float = 60.0, new_session: bool = False) -> float:
        """Start every agent and wait until every agent knows the leader, every member is
        alive and every node is in the catalog; seconds it took (also in ready_after, and
        the time until the first server knew a leader in leader_after).

        new_session=True keeps the agents out of the caller's process group (so a Ctrl-C
        in a terminal reaches only the caller, which stops them in order)."""
        started = time.monotonic()
        try:
            for agent in self.agents:
                agent.start(new_session=new_session)
            deadline, last = started + timeout, None
            while True:
                for agent in self.agents:
                    agent.check_running()
                try:
                    if self._ready(started):
                        break
                except (OSError, ValueError) as exc:  # not answering yet
                    last = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no leader, alive members and catalog after {timeout}s "
                                       f"(last error {last!r}); agents' log tails:\n{self.log_tails()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        self.ready_after = time.monotonic() - started
        return self.ready_after

    def _ready(self, started: float) -> bool:
        if not self.servers[0]._get("/v1/status/leader", timeout=2):
            return False
        if self.leader_after is None:
            self.leader_after = time.monotonic() - started
        names = {agent.node for agent in self.agents}
        alive = {m["Name"] for m in self.servers[0]._get("/v1/agent/members", timeout=2) if m["Status"] == 1}
        catalog = {n["Node"] for n in self.servers[0]._get("/v1/catalog/nodes", timeout=2)}
        return alive == names == catalog and all(agent._get("/v1/status/leader", timeout=2)
                                                 for agent in self.agents)

    def leader(self) -> str:
        """The leader's server address (host:server port)."""
        return self.servers[0]._get("/v1/status/leader")

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {agent.node} ({agent.log_path})\n{_tail(agent.log_path, lines)}"
                         for agent in self.agents)

    def stop(self) -> None:
        """Stop every agent by pid: the clients first, then the servers."""
        for agent in reversed(self.agents):
            agent.stop()

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

