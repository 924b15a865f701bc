"""The keys of a `[consul:PROGRAM]` section, declared once.

`KEYS` is the one list of them: parsing, the unknown-key problem, defaults,
`check --show`, the fuzz tests' coverage and the reference table in the
README (`python -m supervisor_consul.schema`) all read it.  A key is a name,
a parser from text to value (raising `Invalid` with what to write instead),
its default and one line of doc.  Names with upper-case parts are families:
`meta.KEY` is any number of keys, `check.NAME.header.HEADER` too.

`spec_of` turns one process's section into a `ServiceSpec`: each key parsed
alone, then the few rules that tie keys together (a check's options only
where they apply).  Pure: the values come in through a `Source`, already
expanded by supervisor's parser (config.py).
"""

from __future__ import annotations

import enum
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.datatypes import boolean

from . import durations


class Invalid(ValueError):
    """A value a key cannot take; the message says what to write instead."""


class CheckKind(enum.StrEnum):
    """The checks beside the process-state check, by how they are written."""

    HTTP = "http"  # http:// and https://: Consul runs it
    TCP = "tcp"
    GRPC = "grpc"
    SCRIPT = "exec"  # the listener runs it and reports to a TTL check


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


# -- parsers: text in, value out, Invalid with the fix -------------------------------------

MIN_TTL_SECONDS = 1
DNS_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
META_VALUE_BYTES = 512  # Consul counts bytes, not characters
HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>[0-9]{1,5})$")
SERVICE_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # KEY of [consul:PROGRAM:KEY]
CHECK_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")  # lower-case: supervisor's parser lowers keys
HTTP_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110: methods and header names
CHECK_FORMS = ("http://HOST[:PORT]/PATH", "https://HOST[:PORT]/PATH", "tcp://HOST:PORT",
               "grpc://HOST:PORT[/SERVICE]", "exec COMMAND")


def _port(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,5}", text) and 0 < int(text) < 65536:
        return int(text)
    raise Invalid("port must be a number from 1 to 65535")


def _optional_port(text: str) -> int:
    return _port(text) if text else 0


def _address(text: str) -> str:
    if any(c.isspace() for c in text):
        raise Invalid("address must be a host name or IP address")
    return text


def _tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _duration(text: str) -> str:
    try:
        value = durations.normalize(text)
    except ValueError:
        raise Invalid("a duration such as 15s, 500ms, 5m or 1h30m") from None
    nanoseconds = durations.nanoseconds(value)
    if nanoseconds < 1:  # Go truncates to whole ns: 0.5ns is zero to Consul
        raise Invalid("must be more than zero")
    if nanoseconds > durations.MAX_NANOSECONDS:
        raise Invalid("at most 2562047h (Consul's limit)")
    return value


def _ttl(text: str) -> str:
    value = _duration(text)
    if durations.seconds(value) < MIN_TTL_SECONDS:
        raise Invalid(f"ttl must be at least {MIN_TTL_SECONDS}s: the listener refreshes the check every ttl/3")
    return value


def _deregister_after(text: str) -> str | None:
    return None if text.lower() == "off" else _duration(text)


def _on_fatal(text: str) -> OnFatal:
    try:
        return OnFatal(text)
    except ValueError:
        raise Invalid("on_fatal must be " + " or ".join(o.value for o in OnFatal)) from None


def _meta_value(text: str) -> str:
    if len(text.encode()) > META_VALUE_BYTES:
        raise Invalid(f"meta values are at most {META_VALUE_BYTES} bytes (UTF-8); shorten it")
    return text


def _boolean(text: str) -> bool:
    try:
        return bool(boolean(text))
    except ValueError:
        raise Invalid("true or false (also yes/no, on/off, 1/0)") from None


def _weight(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if re.fullmatch(r"[0-9]{1,9}", text) and int(text) >= minimum:
            return int(text)
        raise Invalid(f"a whole number, at least {minimum}")
    return parse


def _count(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,9}", text):
        return int(text)
    raise Invalid("a whole number, 0 or more")


def _tagged_address(text: str) -> tuple[str, int]:
    match = HOST_PORT.match(text)
    if match:
        return match["host"].strip("[]"), _port(match["port"])
    if not text or any(c.isspace() for c in text) or text.count(":") == 1:
        raise Invalid("ADDRESS or ADDRESS:PORT (an IPv6 address with a port in brackets: [::1]:80)")
    return text, 0


def _method(text: str) -> str:
    if not HTTP_TOKEN.match(text):
        raise Invalid("an HTTP method such as GET, POST or HEAD")
    return text


def _header_value(text: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise Invalid("a header value is one line")
    return text


def _check_target(text: str) -> tuple[CheckKind, str]:
    """(kind, target) of a check's URL or `exec COMMAND`."""
    if text.startswith("exec") and text[4:5].isspace():
        try:
            command = shlex.split(text[5:])
        except ValueError as exc:
            raise Invalid(f"cannot split the command as a shell would: {exc}") from None
        if not command:
            raise Invalid("exec needs a command: exec /path/to/check ARGS")
        return CheckKind.SCRIPT, text[5:].strip()
    scheme, sep, rest = text.partition("://")
    # Consul takes `http://a b/` and `tcp://h:80 x` but such a check can never pass.
    if sep and rest and not any(c.isspace() for c in rest):
        if scheme in ("http", "https") and not rest.startswith("/"):
            return CheckKind.HTTP, text
        address, _, service = rest.partition("/") if scheme == "grpc" else (rest, "", "")
        match = HOST_PORT.match(address)
        if scheme in ("tcp", "grpc") and match and 0 < int(match["port"]) < 65536:
            return (CheckKind.TCP, rest) if scheme == "tcp" else (CheckKind.GRPC, rest)
    raise Invalid("a check is " + ", ".join(CHECK_FORMS[:-1]) + " or " + CHECK_FORMS[-1])


SINGLE_FORMS = "check must be ttl, none, http://HOST[:PORT]/PATH, https://HOST[:PORT]/PATH or tcp://HOST:PORT"


def _single_check(text: str) -> tuple[CheckKind, str] | str:
    """`check =`: ttl, none, or one http or tcp check (the others came with check.NAME)."""
    if text in ("", "ttl", "none"):
        return text or "ttl"
    try:
        kind, target = _check_target(text)
    except Invalid:
        raise Invalid(SINGLE_FORMS) from None
    if kind in (CheckKind.GRPC, CheckKind.SCRIPT):
        raise Invalid(f"{SINGLE_FORMS}; for a {kind.value} check write check.NAME = {text}")
    return kind, target


def _text(text: str) -> str:
    return text


# -- the declaration ----------------------------------------------------------------------

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

    @property
    def pattern(self) -> re.Pattern[str]:
        # NAME is one dotted part; KEY and HEADER (always last) take the rest, so that a
        # meta key or header name with a dot is judged by its own rule, not called unknown.
        regex = "".join(PLACEHOLDERS.get(part, re.escape(part)) for part in re.split(r"([A-Z]+)", self.name))
        return re.compile(regex)



KEYS: tuple[Key, ...] = (
    Key("name", _text, None, "the program name (`PROGRAM-KEY` for `[consul:PROGRAM:KEY]`)",
        "Consul service name; letters, digits and inner dashes (DNS)"),
    Key("port", _optional_port, "", "none", "service port (SRV records); 1-65535"),
    Key("address", _address, "", "the agent's node address", "service address"),
    Key("tags", _tags, "", "none", "comma-separated"),
    Key("meta.KEY", _meta_value, None, "none",
        "any number of service meta entries (`meta.version = 1.2`); case is kept"),
    Key("weights.passing", _weight(1), None, "`1`", "SRV weight while passing (Consul's Weights)"),
    Key("weights.warning", _weight(0), None, "`1`", "SRV weight while warning"),
    Key("enable_tag_override", _boolean, "false", "`false`",
        "let tags be changed in the catalog (Consul's EnableTagOverride)"),
    Key("tagged_address.NAME", _tagged_address, None, "none",
        "any number of tagged addresses: `tagged_address.wan = 203.0.113.5:80` (ADDRESS[:PORT])",
        expands_port=True),
    Key("check", _single_check, "ttl", "`ttl`",
        "`ttl`: the process-state check only; `http://…` / `https://…` / `tcp://HOST:PORT`: a check Consul "
        "runs itself, **in addition to** the process-state check; `none`: no check at all. `%(port)s` "
        "expands to `port`", expands_port=True),
    Key("interval", _duration, "10s", "`10s`", "how often Consul runs the http/tcp check"),
    Key("timeout", _duration, "5s", "`5s`", "the http/tcp check's timeout"),
    Key("check.NAME", _check_target, None, "none",
        "any number of named checks beside the process-state check: " + ", ".join(f"`{f}`" for f in CHECK_FORMS)
        + "; `%(port)s` expands to `port`", expands_port=True),
    Key("check.NAME.interval", _duration, "10s", "`10s`", "how often the check runs"),
    Key("check.NAME.timeout", _duration, "5s", "`5s`", "the check's timeout (a script past it is killed: critical)"),
    Key("check.NAME.method", _method, None, "`GET`", "HTTP method", frozenset({CheckKind.HTTP})),
    Key("check.NAME.header.HEADER", _header_value, None, "none", "any number of HTTP request headers",
        frozenset({CheckKind.HTTP})),
    Key("check.NAME.body", _text, None, "none", "HTTP request body", frozenset({CheckKind.HTTP})),
    Key("check.NAME.tls_skip_verify", _boolean, "false", "`false`", "do not verify the https/grpc check's "
        "certificate", frozenset({CheckKind.HTTP, CheckKind.GRPC})),
    Key("check.NAME.tls", _boolean, "false", "`false`", "the grpc check speaks TLS (GRPCUseTLS)",
        frozenset({CheckKind.GRPC})),
    Key("check.NAME.success_before_passing", _count, "0", "`0`", "passes only after this many successes in a row",
        CONSUL_RUN),
    Key("check.NAME.failures_before_critical", _count, "0", "`0`", "critical only after this many failures in a "
        "row", CONSUL_RUN),
    Key("ttl", _ttl, "15s", "`15s`", "the process-state check's TTL, at least 1s; the listener refreshes it "
        "every ttl/3"),
    Key("deregister_after", _deregister_after, "5m", "`5m`", "Consul's DeregisterCriticalServiceAfter on the "
        "process-state check (with `check = none`, on the liveness check); `off` disables (Consul enforces at "
        "least 1m)"),
    Key("on_fatal", _on_fatal, "deregister", "`deregister`", "`deregister` or `critical`: what FATAL does"),
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
    """The README's table of keys."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{key.name}` | {key.shown} | {key.doc}"
             + ("" if key.applies == ALL_KINDS else f" ({_applies(key.applies)} only)") + " |" for key in KEYS]
    return "\n".join(rows) + "\n"


def _applies(kinds: Applies) -> str:
    names = [k.value for k in CheckKind if k in kinds]
    return (", ".join(names[:-1]) + " and " if len(names) > 1 else "") + names[-1] + " checks"


# -- one section -------------------------------------------------------------------------

class Source(Protocol):
    """One section's values for one process, as supervisor's parser expands them."""

    def options(self) -> list[str]: ...

    def raw(self, option: str) -> str: ...

    def expanded(self, option: str, port: int) -> str:
        """Raises ValueError when the expansion fails."""
        ...


@dataclass(frozen=True)
class Found:
    """A problem with one key of a section: (option, value, message)."""

    key: str | None
    value: str | None
    message: str


@dataclass
class _Reading:
    source: Source
    port: int = 0
    problems: list[Found] = field(default_factory=list)

    def problem(self, key: str | None, value: str | None, message: str) -> None:
        self.problems.append(Found(key, value, message))

    def value(self, option: str, key: Key) -> Any:
        """The parsed value of one option (its default when absent); None after a problem."""
        if option in self.source.options():
            try:
                text = self.source.expanded(option, self.port).strip()
            except ValueError as exc:
                self.problem(option, self.source.raw(option), f"cannot expand: {short(exc)}; write a literal % as %%")
                return None
        elif key.default is None:
            return None
        else:
            text = key.default
        try:
            return key.parse(text)
        except Invalid as exc:
            shown = text[:40] + "…" if key.name == "meta.KEY" and len(text) > 40 else text
            self.problem(option, shown, str(exc))
            return None

    def given(self, option: str) -> bool:
        return option in self.source.options()


def spec_of(source: Source, program: str, key: str, **process: Any) -> tuple[ServiceSpec | None, list[Found]]:
    """The ServiceSpec of one process for one section (`key`: "" or a further
    service's KEY); `process` holds the ServiceSpec fields supervisord's side
    gives (namespec, group, process, exitcodes, startsecs, environment, directory)."""
    reading = _Reading(source)
    families: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for option in source.options():
        found = key_of(option)
        if found is None:
            reading.problem(option, source.raw(option), f"unknown key; known keys: {known_keys()}")
        else:
            families.setdefault(found[0].name, []).append((option, found[1]))
    port = reading.value("port", BY_NAME["port"])
    reading.port = port or 0
    default_name = f"{program}-{key}" if key else program
    name = reading.value("name", BY_NAME["name"]) if reading.given("name") else default_name
    if name is not None and not DNS_NAME.match(name):
        hint = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "my-service"
        reading.problem("name" if reading.given("name") else None, name,
                        f"service name {name!r} cannot be found through Consul DNS "
                        f"(letters, digits and inner dashes, at most 63); set name = {hint}")
    fields: dict[str, Any] = dict(
        name=name, port=port, key=key,
        address=reading.value("address", BY_NAME["address"]),
        tags=reading.value("tags", BY_NAME["tags"]),
        meta=_meta(reading, families.get("meta.KEY", [])),
        weights=_weights(reading),
        enable_tag_override=reading.value("enable_tag_override", BY_NAME["enable_tag_override"]),
        tagged_addresses=tuple(TaggedAddress(names[0], *parsed) for option, names in families.get(
            "tagged_address.NAME", []) if (parsed := reading.value(option, BY_NAME["tagged_address.NAME"]))),
        ttl=reading.value("ttl", BY_NAME["ttl"]),
        deregister_after=reading.value("deregister_after", BY_NAME["deregister_after"]),
        on_fatal=reading.value("on_fatal", BY_NAME["on_fatal"]),
        **process,
    )
    single = _single(reading)
    fields["ttl_check"] = single != "none"
    fields["checks"] = (*(() if isinstance(single, str) or single is None else (single,)),
                        *_named_checks(reading, families))
    if not fields["ttl_check"]:
        # deregister_after still applies: to the liveness check a `check = none` instance gets.
        for option in ("ttl", "on_fatal"):
            if reading.given(option):
                reading.problem(option, source.raw(option), f"{option} needs the process-state check; "
                                                            f"remove it or the line check = none")
    if reading.problems or any(fields[k] is None for k in ("name", "ttl", "address", "tags", "on_fatal")):
        return None, reading.problems
    return ServiceSpec(**fields), reading.problems


def _meta(reading: _Reading, options: list[tuple[str, tuple[str, ...]]]) -> tuple[tuple[str, str], ...]:
    meta = []
    for option, (meta_key,) in options:
        value = reading.value(option, BY_NAME["meta.KEY"])
        if value is None:
            continue
        if not META_KEY.match(meta_key):
            reading.problem(option, value, "meta keys are 1-128 letters, digits, '-' or '_'")
        elif meta_key in RESERVED_META or meta_key.lower().startswith("consul-"):
            reading.problem(option, value, f"meta key {meta_key!r} is reserved; choose another name")
        else:
            meta.append((meta_key, value))
    allowed = MAX_META_PAIRS - len(RESERVED_META)
    if len(meta) > allowed:
        # Name the first entry over the limit: a problem without a key is one a user has to hunt for.
        first_over, value = meta[allowed]
        reading.problem(f"meta.{first_over}", value, f"at most {allowed} meta.KEY entries; "
                                                     f"remove this one and those after it")
    return tuple(meta)


def _weights(reading: _Reading) -> tuple[int, int] | None:
    if not (reading.given("weights.passing") or reading.given("weights.warning")):
        return None
    # Consul fills a weight left out with 1, as we do.
    passing = reading.value("weights.passing", BY_NAME["weights.passing"]) if reading.given("weights.passing") else 1
    warning = reading.value("weights.warning", BY_NAME["weights.warning"]) if reading.given("weights.warning") else 1
    return None if passing is None or warning is None else (passing, warning)


def _single(reading: _Reading) -> CheckSpec | str | None:
    """`check =` with its `interval` and `timeout`: "ttl", "none", a CheckSpec, or None after a problem."""
    single = reading.value("check", BY_NAME["check"])
    options = ("interval", "timeout")
    if single in ("ttl", "none"):
        for option in options:
            if reading.given(option):
                reading.problem(option, reading.source.raw(option), f"{option} applies to an http or tcp check; "
                                                                    f"this section has check = {single}")
        return single
    # A check that could not be read still gets its interval and timeout judged.
    interval, timeout = (reading.value(option, BY_NAME[option]) for option in options)
    if single is None or interval is None or timeout is None:
        return None
    kind, target = single
    return CheckSpec(kind, target, interval, timeout)


def _named_checks(reading: _Reading, families: dict[str, list[tuple[str, tuple[str, ...]]]]) -> Iterator[CheckSpec]:
    targets = {names[0]: option for option, names in families.get("check.NAME", [])}
    options: dict[str, dict[str, str]] = {}  # check name -> key name -> option
    for key_name, found in families.items():
        if key_name.startswith("check.NAME."):
            for option, names in found:
                if names[0] not in targets:
                    reading.problem(option, reading.source.raw(option),
                                    f"there is no check.{names[0]} = URL for this option; add it, or remove this")
                options.setdefault(names[0], {})[option] = key_name
    for check_name, option in targets.items():
        if not CHECK_NAME.match(check_name):
            reading.problem(option, reading.source.raw(option), "a check's NAME is 1-64 letters, digits, '-' or '_'")
            continue
        check = _named_check(reading, check_name, option, options.get(check_name, {}))
        if check is not None:
            yield check


def _named_check(reading: _Reading, check_name: str, option: str, given: dict[str, str]) -> CheckSpec | None:
    target = reading.value(option, BY_NAME["check.NAME"])
    prefix = f"check.{check_name}."
    values: dict[str, Any] = {}
    headers = []
    for key in KEYS:
        if not key.name.startswith("check.NAME."):
            continue
        suffix = key.name[len("check.NAME."):]
        many = any(c.isupper() for c in suffix)  # header.HEADER: only those given
        for given_option in [o for o, k in given.items() if k == key.name] or ([] if many else [prefix + suffix]):
            parsed = reading.value(given_option, key)
            if target is not None and key.applies != ALL_KINDS and given_option in given \
                    and target[0] not in key.applies:
                reading.problem(given_option, reading.source.raw(given_option),
                                f"{suffix} applies to {_applies(key.applies)}; "
                                f"check.{check_name} is a {target[0].value} check")
            if key.name == "check.NAME.header.HEADER":
                header = given_option[len(prefix + "header."):]
                if not HTTP_TOKEN.match(header):
                    reading.problem(given_option, reading.source.raw(given_option),
                                    "a header name is letters, digits and !#$%&'*+-.^_`|~")
                elif parsed is not None:
                    headers.append((header, parsed))
            else:
                values[suffix] = parsed
    if target is None or any(values.get(k) is None for k in ("interval", "timeout")):
        return None
    kind, text = target
    return CheckSpec(kind, text, values["interval"], values["timeout"], check_name,
                     method=values.get("method") or "", headers=tuple(headers), body=values.get("body") or "",
                     tls_skip_verify=bool(values.get("tls_skip_verify")), grpc_tls=bool(values.get("tls")),
                     success_before_passing=values.get("success_before_passing") or 0,
                     failures_before_critical=values.get("failures_before_critical") or 0)


def short(exc: Exception) -> str:
    """supervisor's expansion errors end with every ENV_ name there is: keep the point."""
    return " ".join(str(exc).split(". Available names:")[0].split())


if __name__ == "__main__":
    sys.stdout.write(reference())
