"""What the listener tells Prometheus (`listen --metrics-addr HOST:PORT`).

The sync loop updates its metrics as it goes (prometheus_client's counters and
gauges: a lock held for an addition, never across I/O); the event loop's
counts are the Listener's own integers, read only when Prometheus scrapes, so
the stdin loop does nothing more per event than it did without metrics.
prometheus_client's own HTTP server answers scrapes in a daemon thread.

Seconds since the last successful sync are exposed as the time of it
(`supervisor_consul_last_sync_success_timestamp_seconds`, Unix seconds), as
Prometheus's conventions have it: `time() - ...` in a query or an alert is the
age.  The sync loop sets a plain value when it happens, where an age would have
the scrape thread read the clock and the sync's state; and a time says when,
which an age taken at some scrape does not.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, assert_never

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from .plan import Deregister, Operation, Register, UpdateTTL

PREFIX = "supervisor_consul_"
# A reconcile reads the configuration, supervisord and the agent: milliseconds for a few
# instances, seconds for a thousand, the agent's timeout when it hangs.
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WILDCARDS = ("", "0.0.0.0", "::")


class Kind(enum.Enum):
    """What an operation of the plan (plan.py) does to an instance."""

    REGISTER = "register"
    UPDATE_TTL = "update_ttl"
    DEREGISTER = "deregister"


def kind_of(operation: Operation) -> Kind:
    match operation:
        case Register():
            return Kind.REGISTER
        case UpdateTTL():
            return Kind.UPDATE_TTL
        case Deregister():
            return Kind.DEREGISTER
        case _:
            assert_never(operation)


class Result(enum.Enum):
    """How the agent took an operation, as the sync loop tells them apart."""

    OK = "ok"
    REFUSED = "refused"  # answered no (ACL, a bad definition): retried every REFUSED_RETRY
    LOST = "lost"  # a heartbeat for a check the agent no longer has (it restarted): read afresh
    UNREACHABLE = "unreachable"  # no answer: the agent is backed off and read afresh


@dataclass(frozen=True)
class Endpoint:
    """Where the metrics are served: --metrics-addr."""

    host: str  # as given, without IPv6 brackets; "" for every address
    port: int

    @property
    def advertised(self) -> str:
        """The address the claim carries: none for a wildcard, so Consul's consumers
        take the node's address, as for a service registered without one."""
        return "" if self.host in WILDCARDS else self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """HOST:PORT, [IPv6]:PORT or :PORT (every address); ValueError in one line otherwise."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    # An IPv6 address in brackets only: without them its last group would read as the port.
    good_host = _ipv6(host) if bracketed else ":" not in host and not any(c.isspace() or c in "/[]@" for c in host)
    if not (sep and good_host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--metrics-addr {text!r}: expected HOST:PORT, as 127.0.0.1:9187 "
                         f"([::1]:9187 for IPv6, :9187 for every address), with a port from 1 to 65535")
    return Endpoint(host, int(port))


def _ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


class EventCounts(Protocol):
    """The Listener's counts (listener.py), plain integers only its thread writes."""

    events: int
    skipped: int
    lost: int


class _EventCollector:
    """The event loop's counts, read at scrape time."""

    def __init__(self, counts: EventCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        yield CounterMetricFamily(f"{PREFIX}events_read", "Events read from supervisord and answered, "
                                  "unreadable ones included", value=counts.events + counts.skipped)
        yield CounterMetricFamily(f"{PREFIX}events_unreadable", "Events answered but not readable (a "
                                  "garbled header, an oversized payload): a reconcile stands in for each",
                                  value=counts.skipped)
        yield CounterMetricFamily(f"{PREFIX}events_dropped", "Events supervisord dropped before they reached "
                                  "the listener (gaps in poolserial; its buffer_size was full): a reconcile "
                                  "stands in for them", value=counts.lost)


class Metrics:
    """The listener's metrics, in a registry of their own (nothing of the process's
    or of other libraries is exported)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        operations = Counter(f"{PREFIX}operations", "Operations on the agent's instances of this listener, by "
                             "kind and by how the agent took them", ("kind", "result"), registry=self.registry)
        # Every series from the start, so rate() and increase() see the first one happen; looked up
        # once, since a round of a thousand heartbeats counts a thousand.
        self._operations = {(kind, result): operations.labels(kind.value, result.value)
                            for kind in Kind for result in Result}
        self._reconcile = Histogram(f"{PREFIX}reconcile_duration_seconds", "How long each full reconcile the "
                                    "agent answered took: reading the configuration, supervisord and the agent, "
                                    "and applying the differences", buckets=RECONCILE_BUCKETS,
                                    registry=self.registry)
        self._synced = Gauge(f"{PREFIX}last_sync_success_timestamp_seconds", "When the agent was last known "
                             "to be in step with supervisord (Unix time; 0: never): the agent answered, this "
                             "listener may act, and no operation waits for a retry", registry=self.registry)
        self._owned = Gauge(f"{PREFIX}instances_owned", "Instances of this listener in the agent, as last read "
                            "or written (the claim `supervisord` not counted)", registry=self.registry)
        self._reachable = Gauge(f"{PREFIX}agent_reachable", "1 when the Consul agent answered the last call, "
                                "0 when it could not be reached", registry=self.registry)

    def operation(self, operation: Operation, result: Result) -> None:
        self._operations[kind_of(operation), result].inc()

    def reconciled(self, seconds: float) -> None:
        self._reconcile.observe(seconds)

    def in_step(self, wall: float) -> None:
        self._synced.set(wall)

    def owned(self, count: int) -> None:
        self._owned.set(count)

    def agent_reachable(self, reachable: bool) -> None:
        self._reachable.set(1 if reachable else 0)

    def count_events(self, counts: EventCounts) -> None:
        self.registry.register(_EventCollector(counts))  # type: ignore[arg-type]  # a collector is its collect()

    def serve(self, endpoint: Endpoint) -> None:
        """Answer scrapes on the endpoint from a daemon thread; OSError when it cannot listen there."""
        start_http_server(endpoint.port, endpoint.host or "0.0.0.0", registry=self.registry)
