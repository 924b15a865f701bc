"""The keys of a `[consul:PROGRAM]` section, declared once.

`KEYS` is the one list of them: parsing (section.py), the unknown-key
problem, defaults, the fuzz tests' coverage and the reference table in the
docs/reference.md (scripts/docs-keys, `python -m supervisor_consul.schema`) all read it.
A key is a name, a parser from text to value (values.py), its default and
one line of doc.  Names with upper-case parts are families: `meta.KEY` is
any number of keys, `check.NAME.header.HEADER` too.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .spec import CheckKind
from .values import (
    CHECK_FORMS,
    address,
    check_target,
    connect,
    count,
    deregister_after,
    duration,
    flag,
    header_value,
    meta_value,
    method,
    on_fatal,
    optional_port,
    plain,
    positive_count,
    single_check,
    tagged_address,
    tags,
    ttl,
    upstreams,
    wait,
    weight,
)

PLACEHOLDERS = {"NAME": r"([^.]+)", "KEY": r"(.+)", "HEADER": r"(.+)"}
Applies = frozenset[CheckKind]
ALL_KINDS: Applies = frozenset(CheckKind)
CONSUL_RUN: Applies = frozenset({CheckKind.HTTP, CheckKind.TCP, CheckKind.GRPC})


@dataclass(frozen=True)
class Key:
    name: str  # as written; upper-case parts (NAME, KEY, HEADER) stand for any name
    parse: Callable[[str], Any]
    default: str | None  # the text parsed when the key is absent; None: the key has no value then
    shown: str  # the default as the docs say it
    doc: str
    applies: Applies = ALL_KINDS  # check.NAME.* options: the kinds of check they mean something to
    expands_port: bool = False  # `%(port)s` stands for the section's port
    # The ServiceSpec field the key fills as it is parsed; None where section.py
    # assembles the field itself (name, port, families, the checks).
    field: str | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        # NAME is one dotted part; KEY and HEADER (always last) take the rest, so that a
        # meta key or header name with a dot is judged by its own rule, not called unknown.
        regex = "".join(PLACEHOLDERS.get(part, re.escape(part)) for part in re.split(r"([A-Z]+)", self.name))
        return re.compile(regex)



KEYS: tuple[Key, ...] = (
    Key("name", plain, None, "the program name (`PROGRAM-KEY` for `[consul:PROGRAM:KEY]`)",
        "Consul service name; letters, digits and inner dashes (DNS)"),
    Key("port", optional_port, "", "none", "service port (SRV records); 1-65535"),
    Key("address", address, "", "the agent's node address", "service address", field="address"),
    Key("tags", tags, "", "none", "comma-separated", field="tags"),
    Key("meta.KEY", meta_value, None, "none",
        "any number of service meta entries (`meta.version = 1.2`); case is kept"),
    Key("weights.passing", weight(1), None, "`1`", "SRV weight while passing (Consul's Weights)"),
    Key("weights.warning", weight(0), None, "`1`", "SRV weight while warning"),
    Key("enable_tag_override", flag, "false", "`false`",
        "let tags be changed in the catalog (Consul's EnableTagOverride)", field="enable_tag_override"),
    Key("tagged_address.NAME", tagged_address, None, "none",
        "any number of tagged addresses: `tagged_address.wan = 203.0.113.5:80` (ADDRESS[:PORT])",
        expands_port=True),
    Key("check", single_check, "ttl", "`ttl`",
        "`ttl`: the process-state check only; `http://…` / `https://…` / `tcp://HOST:PORT`: a check Consul "
        "runs itself, **in addition to** the process-state check; `none`: no check at all. `%(port)s` "
        "expands to `port`", expands_port=True),
    Key("interval", duration, "10s", "`10s`", "how often Consul runs the http/tcp check"),
    Key("timeout", duration, "5s", "`5s`", "the http/tcp check's timeout"),
    Key("check.NAME", check_target, None, "none",
        "any number of named checks beside the process-state check: " + ", ".join(f"`{f}`" for f in CHECK_FORMS)
        + "; `%(port)s` expands to `port`", expands_port=True),
    Key("check.NAME.interval", duration, "10s", "`10s`", "how often the check runs"),
    Key("check.NAME.timeout", duration, "5s", "`5s`", "the check's timeout (a script past it is killed: critical)"),
    Key("check.NAME.method", method, None, "`GET`", "HTTP method", frozenset({CheckKind.HTTP})),
    Key("check.NAME.header.HEADER", header_value, None, "none", "any number of HTTP request headers",
        frozenset({CheckKind.HTTP})),
    Key("check.NAME.body", plain, None, "none", "HTTP request body", frozenset({CheckKind.HTTP})),
    Key("check.NAME.tls_skip_verify", flag, "false", "`false`", "do not verify the https/grpc check's "
        "certificate", frozenset({CheckKind.HTTP, CheckKind.GRPC})),
    Key("check.NAME.tls", flag, "false", "`false`", "the grpc check speaks TLS (GRPCUseTLS)",
        frozenset({CheckKind.GRPC})),
    Key("check.NAME.success_before_passing", count, "0", "`0`", "passes only after this many successes in a row",
        CONSUL_RUN),
    Key("check.NAME.failures_before_critical", count, "0", "`0`", "critical only after this many failures in a "
        "row", CONSUL_RUN),
    Key("check.NAME.restart_after", positive_count, None, "none (never)", "after this many critical results in "
        "a row the listener has supervisord restart the process"),
    Key("check.NAME.restart_grace", duration, None, "interval × restart_after", "no restart for this long after "
        "the process started, and at most one restart in it"),
    Key("connect", connect, "none", "`none`", "`sidecar`: Consul Connect, a sidecar proxy service registered "
        "with the instance (run it with `supervisor-consul connect-proxy`)", field="connect"),
    Key("connect.upstreams", upstreams, "", "none", "the sidecar's upstreams, `DESTINATION:LOCAL_PORT`, "
        "comma-separated (`db:9191, cache:9192`)", field="upstreams"),
    Key("drain", wait, "0s", "`0`", "how long `supervisor-consul stop` and `restart` keep an instance out of "
        "DNS before supervisord stops it", field="drain"),
    Key("ttl", ttl, "15s", "`15s`", "at least 1s: how soon the instance turns critical once supervisord or the "
        "listener is gone (the claim's TTL is the shortest ttl, at most 15s; without the claim, the process-state "
        "check's own TTL, refreshed every ttl/3)", field="ttl"),
    Key("deregister_after", deregister_after, "5m", "`5m`", "Consul's DeregisterCriticalServiceAfter on the "
        "process-state check and the liveness check (the alias of the claim); `off` disables (Consul enforces "
        "at least 1m)", field="deregister_after"),
    Key("on_fatal", on_fatal, "deregister", "`deregister`", "`deregister` or `critical`: what FATAL does",
        field="on_fatal"),
)
BY_NAME = {key.name: key for key in KEYS}
# Meta keys we set ourselves; a user's meta may not shadow them.
RESERVED_META = ("external-source", "supervisor-consul-owner", "supervisor-consul-spec",
                 "supervisord-group", "supervisord-process", "supervisord-host")
MAX_META_PAIRS = 64  # Consul's limit, our own keys included
# Families whose names keep their case (config.py tells supervisor's parser):
# Consul meta keys are case-sensitive, HTTP header names are sent as written.
CASE_KEPT = (re.compile(r"^(meta\.)(.+)$", re.IGNORECASE), re.compile(r"^(check\.[^.]+\.header\.)(.+)$", re.IGNORECASE))


def key_of(option: str) -> tuple[Key, tuple[str, ...]] | None:
    """The declared key an option is, with the names its upper-case parts stand for."""
    for key in KEYS:
        match = key.pattern.fullmatch(option)
        if match:
            return key, match.groups()
    return None


def known_keys() -> str:
    return ", ".join(key.name for key in KEYS)


def reference() -> str:
    """The table of keys in docs/reference.md."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key.name}` | {key.shown} | {key.doc}"
             + ("" if key.applies == ALL_KINDS else f" ({applies_to(key.applies)} only)") + " |" for key in KEYS]
    return "\n".join(rows) + "\n"


def applies_to(kinds: Applies) -> str:
    names = [k.value for k in CheckKind if k in kinds]
    return (", ".join(names[:-1]) + " and " if len(names) > 1 else "") + names[-1] + " checks"


if __name__ == "__main__":
    sys.stdout.write(reference())
