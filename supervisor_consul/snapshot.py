"""One reading of what the operator commands (`status`, `maint`) work from: the
configuration, what supervisord runs, and what the agent has of ours.

The same for `supervisor-consul` and for the supervisorctl plugin; only how
supervisord is asked differs (the plugin asks through supervisorctl's own
connection, with its credentials).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any, Protocol

from . import config, instance, rpc
from .agent import Agent, ConsulError
from .config import Configuration
from .connection import Connection
from .rpc import SupervisorError

Owned = dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]  # service ID -> (service, its checks)


class Unavailable(Exception):
    """supervisord, Consul or the configuration could not be read; one line saying which and why."""


class Processes(Protocol):
    """supervisord, as far as the operator commands need it."""

    def all_process_info(self) -> list[dict[str, Any]]: ...

    def signal(self, namespec: str, signal: str) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    configuration: Configuration
    owner: str
    host: str
    infos: list[dict[str, Any]]  # getAllProcessInfo
    owned: Owned
    agent: Agent
    supervisor: Processes
    claimed: bool = True  # the owner's claim is on the agent, so its instances alias it


def take(configfile: str, conn: Connection, supervisor: Processes | None = None) -> Snapshot:
    configuration = config.read(configfile)
    if not configuration.readable:
        raise Unavailable(str(configuration.problems[0]))
    host = platform.node()
    owner = instance.owner_of(host, configuration)
    supervisor = supervisor or rpc.for_configuration(configuration, "command")
    agent = Agent(conn)
    try:
        infos = supervisor.all_process_info()
        owned = agent.owned(owner)
        claimed = agent.read_claim(owner) is not None
    except (SupervisorError, ConsulError) as exc:
        raise Unavailable(str(exc)) from exc
    return Snapshot(configuration, owner, host, infos, owned, agent, supervisor, claimed)
