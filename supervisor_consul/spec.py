"""What one process should look like in Consul: the model the [consul:…]
keys (schema.py) are read into, and instance.py registers."""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass

from . import durations


class CheckKind(enum.StrEnum):
    """The checks beside the process-state check, by how they are written."""

    HTTP = "http"  # http:// and https://: Consul runs it
    TCP = "tcp"
    GRPC = "grpc"
    SCRIPT = "exec"  # the listener runs it and reports to a TTL check


class Connect(enum.StrEnum):
    """Consul Connect (service mesh) for an instance."""

    NONE = "none"
    SIDECAR = "sidecar"  # a sidecar proxy service registered with it; Consul picks its port


class OnFatal(enum.StrEnum):
    DEREGISTER = "deregister"
    CRITICAL = "critical"


@dataclass(frozen=True)
class CheckSpec:
    """One check beside the process-state TTL check."""

    kind: CheckKind
    target: str  # the URL, HOST:PORT, HOST:PORT[/SERVICE], or the command line
    interval: str
    timeout: str
    name: str = ""  # "" for the single `check = URL` of a section, else `check.NAME`'s NAME
    method: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    tls_skip_verify: bool = False
    grpc_tls: bool = False
    success_before_passing: int = 0
    failures_before_critical: int = 0
    restart_after: int = 0  # 0: never restart the process for this check
    restart_grace: str = ""  # "" with restart_after: interval × restart_after

    @property
    def restart_grace_seconds(self) -> float:
        if self.restart_grace:
            return durations.seconds(self.restart_grace)
        return durations.seconds(self.interval) * self.restart_after

    @property
    def command(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.target)) if self.kind is CheckKind.SCRIPT else ()


@dataclass(frozen=True)
class TaggedAddress:
    name: str
    address: str
    port: int = 0


@dataclass(frozen=True)
class ServiceSpec:
    """What one supervisord process should look like in Consul: one service of it."""

    namespec: str
    group: str
    process: str
    name: str
    port: int = 0
    address: str = ""
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    ttl_check: bool = True  # False with `check = none`
    checks: tuple[CheckSpec, ...] = ()
    ttl: str = "15s"
    deregister_after: str | None = "5m"
    on_fatal: OnFatal = OnFatal.DEREGISTER
    exitcodes: tuple[int, ...] = (0,)
    startsecs: float = 1.0  # the program's: RUNNING comes this long after STARTING
    key: str = ""  # KEY of a further service, [consul:PROGRAM:KEY]; "" for [consul:PROGRAM]
    weights: tuple[int, int] | None = None  # (passing, warning); None: Consul's own (1, 1)
    enable_tag_override: bool = False
    tagged_addresses: tuple[TaggedAddress, ...] = ()
    connect: Connect = Connect.NONE
    upstreams: tuple[tuple[str, int], ...] = ()  # (destination service, local port) through the sidecar
    drain: str = "0s"  # out of DNS this long before `supervisor-consul stop/restart` stop it
    # The program's environment= and directory=, for its script checks.
    environment: tuple[tuple[str, str], ...] = ()
    directory: str | None = None

    @property
    def unit(self) -> str:
        """Its key in Configuration.services: the namespec, and `/KEY` for a further
        service ('/' is in no group or process name)."""
        return f"{self.namespec}/{self.key}" if self.key else self.namespec

    @property
    def ttl_seconds(self) -> float:
        return durations.seconds(self.ttl)

    @property
    def deregister_after_seconds(self) -> float | None:
        return None if self.deregister_after is None else durations.seconds(self.deregister_after)
