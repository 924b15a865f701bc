"""How an instance looks to Consul: its IDs, our marks of ownership, and the
body of the registration sent to the agent.

The one Consul-facing description of a service: `of()` turns a ServiceSpec
into a `Registration`, which plan.py compares and agent.py sends as it is.
Maintenance is Consul's own check, read back here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, cast

from . import claim, durations
from .config import Configuration
from .spec import CheckKind, CheckSpec, Connect, ServiceSpec

ID_PREFIX = "supervisord"
OWNER_META = "supervisor-consul-owner"
SPEC_META = "supervisor-consul-spec"
FINGERPRINT_VERSION = "1"  # bump when the meaning of a registration changes
# The process-state check's TTL while the instance aliases its claim: the alias
# turns it critical when supervisord or the listener is gone, so the TTL is only
# a backstop, refreshed every 8 h (1000 instances: 0.035 writes/s).
BACKSTOP_TTL = "24h"
MAINTENANCE_PREFIX = "_service_maintenance:"  # Consul's, for a service's maintenance check
# With --metrics-addr the claim carries the endpoint (its Address and Port), this tag and this
# meta key, so Prometheus's consul_sd_configs can find every listener (etc/prometheus.yml.sample).
METRICS_TAG = "metrics"
METRICS_PATH_META = "metrics_path"  # Prometheus's own word: relabelled into __metrics_path__
METRICS_PATH = "/metrics"


def owner_id(host: str, configfile: str, identifier: str) -> str:
    """This supervisord's identity: stable across restarts, distinct per config on a host."""
    digest = hashlib.sha256(f"{host}\0{configfile}\0{identifier}".encode()).hexdigest()
    return digest[:12]


def owner_of(host: str, configuration: Configuration) -> str:
    """The owner id of the supervisord a configuration is read for.  The path is
    taken as given, symlinks kept: a release switch (`current.conf` pointed at
    another release) is the same supervisord, not a new one."""
    return owner_id(host, os.path.normpath(configuration.configfile), configuration.identifier)


def legacy_owner_of(host: str, configuration: Configuration) -> str:
    """The owner id earlier builds gave the same supervisord (the path with its
    symlinks resolved): its instances are ours to replace."""
    return owner_id(host, os.path.realpath(configuration.configfile), configuration.identifier)


def service_id(owner: str, namespec: str) -> str:
    return f"{ID_PREFIX}:{owner}:{namespec}"


def instance_id(owner: str, spec: ServiceSpec) -> str:
    """A further service's ID ends in :KEY after the group and process both, so
    it never equals the ID of a process `group:KEY`."""
    if spec.key:
        return f"{ID_PREFIX}:{owner}:{spec.group}:{spec.process}:{spec.key}"
    return service_id(owner, spec.namespec)


def check_id(service_id: str, check: CheckSpec) -> str:
    """`check = URL` keeps the ID it always had (…:http, …:tcp); check.NAME is …:check:NAME."""
    return f"{named_checks(service_id)}{check.name}" if check.name else f"{service_id}:{check.kind}"


def named_checks(service_id: str) -> str:
    """What the IDs of an instance's check.NAME checks begin with."""
    return f"{service_id}:check:"


def claim_id(owner: str) -> str:
    """The claim of an owner id (see claim.py): outside `service_id`'s range, so
    never taken for one of the instances."""
    return f"{ID_PREFIX}:{owner}"


def claim_check_id(owner: str) -> str:
    return f"{claim_id(owner)}:alive"


def alias_check_id(service_id: str) -> str:
    """An instance's alias of its claim: its liveness check."""
    return f"{service_id}:supervisord"


def ttl_check_id(service_id: str) -> str:
    """The process-state check of an instance."""
    return f"{service_id}:process"


def maintenance_check_id(service_id: str) -> str:
    """The check Consul adds for its maintenance mode (`consul maint -service`)."""
    return f"{MAINTENANCE_PREFIX}{service_id}"


def maintenance_reason(service_id: str, checks: list[dict[str, Any]]) -> str | None:
    """Why an instance is in maintenance (Consul keeps the reason in the check's
    Notes), or None when it is not."""
    check = next((c for c in checks if c.get("CheckID") == maintenance_check_id(service_id)), None)
    return None if check is None else (check.get("Notes") or "").strip()


def is_owned(service: dict[str, Any], owner: str) -> bool:
    """Ours only if both the ID and the meta say so: never touch anyone else's.  A
    sidecar (Kind connect-proxy) has its instance's ID and meta, but Consul adds and
    removes it with the instance: it is the instance's, never one to reconcile."""
    return (str(service.get("ID", "")).startswith(f"{ID_PREFIX}:{owner}:")
            and (service.get("Meta") or {}).get(OWNER_META) == owner and not service.get("Kind"))


@dataclass(frozen=True)
class Registration:
    """One instance as registered in Consul, without its health."""

    service_id: str
    name: str
    port: int
    address: str
    tags: tuple[str, ...]
    meta: tuple[tuple[str, str], ...]  # with our own keys, SPEC_META excluded
    checks: tuple[tuple[tuple[str, Any], ...], ...]  # Consul check definitions, Status excluded
    ttl_check_id: str | None
    ttl_seconds: float
    # Service fields sent only when the section sets them (Weights, TaggedAddresses, ...),
    # so a registration without them keeps the fingerprint earlier versions gave it.
    extra: tuple[tuple[str, Any], ...] = ()
    namespec: str = ""  # the process it stands for
    scripts: tuple[tuple[str, float], ...] = ()  # (TTL check ID, its TTL in seconds) of its script checks
    fingerprint: str = field(default="", compare=False)

    @property
    def has_sidecar(self) -> bool:
        return any(key == "Connect" for key, _ in self.extra)

    @property
    def check_ids(self) -> frozenset[str]:
        return frozenset(dict(check)["CheckID"] for check in self.checks)

    def payload(self, initial: str | None) -> dict[str, Any]:
        """The body of PUT /v1/agent/service/register, the TTL check in status `initial`."""
        checks = []
        for check in self.checks:
            definition = dict(check)
            if initial is not None and definition["CheckID"] == self.ttl_check_id:
                definition["Status"] = initial
            elif "AliasService" in definition:
                # The claim was passing when the round began: an alias starting critical
                # would blink a re-registered instance out of DNS, and cost a catalog write.
                definition["Status"] = "passing"
            checks.append(_json(definition))
        return {
            "ID": self.service_id, "Name": self.name, "Port": self.port, "Address": self.address,
            "Tags": list(self.tags), "Meta": {**dict(self.meta), SPEC_META: self.fingerprint},
            **_json(dict(self.extra)), "Checks": checks,
        }


def of(spec: ServiceSpec, owner: str, host: str, claimed: bool = False) -> Registration:
    """`claimed`: this listener holds its owner's claim, whose TTL check it keeps
    passing: every instance then vouches for its liveness with an alias of it,
    and its process-state check changes only when the state does (its TTL a
    backstop).  Without the claim, the process-state check's own TTL is the
    liveness check, refreshed every ttl/3."""
    sid = instance_id(owner, spec)
    meta = (*spec.meta,
            ("external-source", "supervisord"),
            (OWNER_META, owner),
            ("supervisord-group", spec.group),
            ("supervisord-process", spec.process),
            ("supervisord-host", host))
    checks: list[tuple[tuple[str, Any], ...]] = []
    process_check = None
    if spec.ttl_check:
        process_check = ttl_check_id(sid)
        ttl = {"CheckID": process_check, "Name": f"supervisord process {spec.namespec}",
               "TTL": BACKSTOP_TTL if claimed else spec.ttl}
        if spec.deregister_after is not None:
            ttl["DeregisterCriticalServiceAfter"] = spec.deregister_after
        checks.append(tuple(ttl.items()))
    scripts = []
    for check in spec.checks:
        definition = check_definition(check_id(sid, check), check, spec)
        checks.append(tuple(definition.items()))
        if check.kind is CheckKind.SCRIPT:
            scripts.append((definition["CheckID"], durations.seconds(definition["TTL"])))
    if claimed:
        # Critical once the claim's heartbeat stops, and reaped after deregister_after, as a TTL check would be.
        alias = {"CheckID": alias_check_id(sid), "Name": f"supervisord and its listener ({owner})",
                 "AliasService": claim_id(owner)}
        if spec.deregister_after is not None:
            alias["DeregisterCriticalServiceAfter"] = spec.deregister_after
        checks.append(tuple(alias.items()))
    extra: list[tuple[str, Any]] = []
    if spec.weights is not None:
        extra.append(("Weights", (("Passing", spec.weights[0]), ("Warning", spec.weights[1]))))
    if spec.enable_tag_override:
        extra.append(("EnableTagOverride", True))
    if spec.tagged_addresses:
        extra.append(("TaggedAddresses", tuple((t.name, (("Address", t.address), ("Port", t.port)))
                                               for t in spec.tagged_addresses)))
    if spec.connect == Connect.SIDECAR:
        # Consul registers the sidecar service with the instance and removes it with it; its port is Consul's pick.
        upstreams = tuple((("DestinationName", name), ("LocalBindPort", port)) for name, port in spec.upstreams)
        extra.append(("Connect", (("SidecarService", (("Proxy", (("Upstreams", upstreams),)),)),)))
    fields: dict[str, Any] = dict(service_id=sid, name=spec.name, port=spec.port, address=spec.address,
                                  tags=spec.tags, meta=meta, checks=tuple(checks), ttl_check_id=process_check)
    if extra:
        fields["extra"] = tuple(extra)
    ttl_seconds = durations.seconds(BACKSTOP_TTL) if claimed else spec.ttl_seconds
    return Registration(**fields, ttl_seconds=ttl_seconds if spec.ttl_check else 0.0, namespec=spec.namespec,
                        scripts=tuple(scripts), fingerprint=_fingerprint(fields))


def check_definition(cid: str, check: CheckSpec, spec: ServiceSpec) -> dict[str, Any]:
    """Consul's definition of one check beside the process-state check."""
    if not check.name:  # `check = URL`, as every version has written it
        field_name = {CheckKind.HTTP: "HTTP", CheckKind.TCP: "TCP"}[check.kind]
        return {"CheckID": cid, "Name": f"{check.kind} {check.target}", field_name: check.target,
                "Interval": check.interval, "Timeout": check.timeout}
    definition: dict[str, Any] = {"CheckID": cid, "Name": f"{check.name} ({spec.namespec})",
                                  "Notes": describe(check)}
    if check.kind is CheckKind.SCRIPT:
        # Run by the listener, which writes each result: expired once a run and a ttl have gone by without one.
        definition["TTL"] = script_ttl(check, spec)
        return definition
    definition[{CheckKind.HTTP: "HTTP", CheckKind.TCP: "TCP", CheckKind.GRPC: "GRPC"}[check.kind]] = check.target
    if check.method:
        definition["Method"] = check.method
    if check.headers:
        definition["Header"] = tuple((name, (value,)) for name, value in check.headers)
    if check.body:
        definition["Body"] = check.body
    if check.tls_skip_verify:
        definition["TLSSkipVerify"] = True
    if check.grpc_tls:
        definition["GRPCUseTLS"] = True
    definition["Interval"], definition["Timeout"] = check.interval, check.timeout
    if check.success_before_passing:
        definition["SuccessBeforePassing"] = check.success_before_passing
    if check.failures_before_critical:
        definition["FailuresBeforeCritical"] = check.failures_before_critical
    return definition


def describe(check: CheckSpec) -> str:
    """One line for the UI's check notes: what is run, and by whom."""
    if check.kind is CheckKind.SCRIPT:
        return f"exec {check.target} (run by supervisor-consul every {check.interval})"
    method = f"{check.method or 'GET'} " if check.kind is CheckKind.HTTP else ""
    return f"{check.kind} {method}{check.target} every {check.interval}"


def script_ttl(check: CheckSpec, spec: ServiceSpec) -> str:
    seconds = durations.seconds(check.interval) + durations.seconds(check.timeout) + spec.ttl_seconds
    return f"{seconds:g}s"


def _fingerprint(fields: dict[str, Any]) -> str:
    encoded = json.dumps({k: v for k, v in fields.items() if k != "ttl_seconds"}, sort_keys=True)
    return hashlib.sha256(f"{FINGERPRINT_VERSION}\0{encoded}".encode()).hexdigest()[:16]


def _json(value: Any) -> Any:
    """The frozen form (pairs in tuples) back into JSON's objects and lists."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, tuple) and value and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                                  for p in value):
        return {k: _json(v) for k, v in value}
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    return value


def of_claim(owner: str, host: str, configuration: Configuration, incarnation: claim.Incarnation,
             ttl: str, deregister_after: str | None, metrics: tuple[str, int] | None = None) -> Registration:
    """The claim of an owner id: an instance of the service `supervisord`, which
    `check = none` instances alias.  Its deregister_after comes after theirs,
    since an alias of a service that is gone turns passing again for a while.
    `metrics`: (address, port) of the listener's metrics endpoint, which the
    claim then carries; address "" is the node's, as for any service."""
    cid = claim_id(owner)
    meta: tuple[tuple[str, str], ...] = (
        ("external-source", "supervisord"), (OWNER_META, owner), ("supervisord-host", host),
        ("supervisord-config", os.path.normpath(configuration.configfile)),
        ("supervisord-identifier", configuration.identifier),
        ("supervisord-pid", str(incarnation.pid)), (claim.INCARNATION_META, incarnation.encode()))
    # The claim is the one service per listener, alive exactly while the listener is: the
    # endpoint goes there.  Without it the claim stays as every earlier version registered it.
    address, port, tags = "", 0, cast(tuple[str, ...], ())
    if metrics is not None:
        (address, port), tags = metrics, (METRICS_TAG,)
        meta += ((METRICS_PATH_META, METRICS_PATH),)
    ttl_check = {"CheckID": claim_check_id(owner), "Name": f"supervisord pid {incarnation.pid} and its listener",
                 "TTL": ttl}
    if deregister_after is not None:
        ttl_check["DeregisterCriticalServiceAfter"] = deregister_after
    fields: dict[str, Any] = dict(service_id=cid, name=claim.SERVICE, port=port, address=address, tags=tags,
                                  meta=meta, checks=(tuple(ttl_check.items()),), ttl_check_id=claim_check_id(owner),
                                  ttl_seconds=durations.seconds(ttl))
    return Registration(**fields, fingerprint=_fingerprint(fields))


