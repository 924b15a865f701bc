"""Where the benchmarks' Consul runs: `-dev` (one agent that is its own server,
no data dir) or the production layout, one server and one client agent joined
to it, each on its own loopback address with a real data dir; supervisord and
the listener talk to the client agent, which forwards every change to the
server over RPC, where it becomes a raft write.

Either one is a Topology: `.agent` is the agent supervisord's listener talks
to, `.server` the one holding the raft log (the same agent under -dev).
With `acl=True` (production only) both run with `default_policy = "deny"`:
the benchmark's own reads and writes carry the master token, and `policy()`,
`token()` hand out what the listener is to run with.
"""
from __future__ import annotations

import json
import pathlib
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from bench.requestlog import AGENT_ARGS
from tests.cluster import ClusterAgent, Ports, free_port_run
from tests.harness import ConsulAgent

MASTER_TOKEN = "BENCH-5e1c7d2a-master"
SERVER_ADDRESS, CLIENT_ADDRESS = "127.0.0.41", "127.0.0.42"  # apart from tests/cluster.py's .11-.13, .21-.22


def _acl_config(server: bool) -> str:
    master = f'    master = "{MASTER_TOKEN}"\n' if server else ""
    return ('primary_datacenter = "dc1"\n'
            'acl {\n  enabled = true\n  default_policy = "deny"\n  down_policy = "extend-cache"\n'
            f'  enable_token_persistence = false\n  tokens {{\n{master}    agent = "{MASTER_TOKEN}"\n  }}\n}}\n')


class Agent(ClusterAgent):
    """One agent of the production topology; with acl, every request of ours carries the master token."""

    def __init__(self, workdir: pathlib.Path, node: str, address: str, ports: Ports, join: list[str],
                 server: bool, acl: bool) -> None:
        super().__init__(workdir, node, address, ports, join, server)
        self.acl = acl
        self.extra_args = list(AGENT_ARGS)
        if acl:
            config = self.workdir / "acl.hcl"
            config.write_text(_acl_config(server))
            self.extra_args += ["-config-file", str(config)]

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.http_addr}{path}", data=data, method=method)
        if self.acl:
            request.add_header("X-Consul-Token", MASTER_TOKEN)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode() or "null")

    def _get(self, path: str, timeout: float = 30.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def register_foreign(self, service: dict) -> None:
        self.request("PUT", "/v1/agent/service/register", service)


class Topology:
    name = "?"
    agent: ConsulAgent  # the one supervisord's listener talks to
    server: ConsulAgent  # the one holding the raft log

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def commit_index(self) -> int:
        """The server's raft commit index (GET /v1/agent/self: Stats.raft.commit_index)."""
        return int(self.server._get("/v1/agent/self")["Stats"]["raft"]["commit_index"])

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Dev(Topology):
    """`consul agent -dev` at INFO, as every benchmark ran before."""

    name = "-dev"

    def __init__(self, workdir: pathlib.Path) -> None:
        self.agent = self.server = ConsulAgent(workdir, extra_args=AGENT_ARGS)

    def start(self) -> None:
        self.agent.start()

    def stop(self) -> None:
        self.agent.stop()


class Production(Topology):
    """`consul agent -server -bootstrap-expect=1` and a client agent `-retry-join`ed to it."""

    name = "server + client"

    def __init__(self, workdir: pathlib.Path, acl: bool = False) -> None:
        workdir = pathlib.Path(workdir).resolve()
        first = free_port_run([SERVER_ADDRESS, CLIENT_ADDRESS], 4)
        ports = Ports(first, first + 1, first + 2, first + 3)
        join = [f"{SERVER_ADDRESS}:{ports.serf_lan}"]
        self.acl = acl
        self.server = Agent(workdir / "server", "bench-server", SERVER_ADDRESS, ports, join, True, acl)
        self.agent = Agent(workdir / "client", "bench-host", CLIENT_ADDRESS, ports, join, False, acl)

    def start(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            self.server.start()
            self.agent.start()
            last: object = None
            while True:
                self.server.check_running()
                self.agent.check_running()
                try:
                    if self._ready():
                        return
                except (OSError, ValueError, KeyError) as exc:  # not answering yet
                    last = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server + client not ready after {timeout}s (last {last!r}); "
                                       f"server log: {self.server.log_path}, client log: {self.agent.log_path}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        """Both know the leader, and the catalog holds both nodes (the client synced itself)."""
        if not (self.server._get("/v1/status/leader", 2) and self.agent._get("/v1/status/leader", 2)):
            return False
        nodes = {node["Node"] for node in self.server._get("/v1/catalog/nodes", 2)}
        return {"bench-server", "bench-host"} <= nodes

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()

    def policy(self, name: str, rules: str) -> str:
        """An ACL policy; its ID."""
        return self.server.request("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})["ID"]

    def token(self, *policies: str) -> str:
        """The SecretID of a new token with these policies (by name)."""
        body = {"Description": "bench listener", "Policies": [{"Name": p} for p in policies]}
        return self.server.request("PUT", "/v1/acl/token", body)["SecretID"]


TOPOLOGIES: dict[str, Callable[[pathlib.Path], Topology]] = {"-dev": Dev, "server + client": Production}
