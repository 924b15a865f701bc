"""One `[consul:…]` section, for one process, into a ServiceSpec.

`spec_of` parses each key alone (schema.KEYS says how), then applies the few
rules that tie keys together: a check's options only where they apply, ttl
and on_fatal only beside the process-state check, meta within Consul's
limits.  Pure: the values come in through a `Source`, already expanded by
supervisor's parser (config.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .schema import ALL_KINDS, BY_NAME, KEYS, MAX_META_PAIRS, RESERVED_META, Key, applies_to, key_of, known_keys
from .spec import CheckSpec, Connect, ServiceSpec, TaggedAddress
from .values import CHECK_NAME, DNS_NAME, HTTP_TOKEN, META_KEY, Invalid, of_version


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
        meta=_meta(reading, families.get("meta.KEY", [])),
        weights=_weights(reading),
        tagged_addresses=_tagged_addresses(reading, families.get("tagged_address.NAME", [])),
        **{k.field: reading.value(k.name, k) for k in KEYS if k.field},
        **process,
    )
    single = _single(reading)
    fields["ttl_check"] = single != "none"
    fields["checks"] = (*(() if isinstance(single, str) or single is None else (single,)),
                        *_named_checks(reading, families))
    if fields["upstreams"] and fields["connect"] != Connect.SIDECAR:
        reading.problem("connect.upstreams", source.raw("connect.upstreams"),
                        "upstreams go through a sidecar: add connect = sidecar, or remove this")
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


def _tagged_addresses(reading: _Reading, options: list[tuple[str, tuple[str, ...]]]) -> tuple[TaggedAddress, ...]:
    addresses = []
    for option, (name,) in options:
        parsed = reading.value(option, BY_NAME["tagged_address.NAME"])
        if parsed is None:
            continue
        try:
            of_version(name, parsed[0])
        except Invalid as exc:
            reading.problem(option, reading.source.raw(option), str(exc))
            continue
        addresses.append(TaggedAddress(name, *parsed))
    return tuple(addresses)


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
                                f"{suffix} applies to {applies_to(key.applies)}; "
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
    grace = prefix + "restart_grace"
    if values.get("restart_grace") and not values.get("restart_after"):
        reading.problem(grace, reading.source.raw(grace), f"restart_grace goes with restart_after; add "
                                                          f"check.{check_name}.restart_after = N or remove this")
    if target is None or any(values.get(k) is None for k in ("interval", "timeout")):
        return None
    kind, text = target
    return CheckSpec(kind, text, values["interval"], values["timeout"], check_name,
                     method=values.get("method") or "", headers=tuple(headers), body=values.get("body") or "",
                     tls_skip_verify=bool(values.get("tls_skip_verify")), grpc_tls=bool(values.get("tls")),
                     success_before_passing=values.get("success_before_passing") or 0,
                     failures_before_critical=values.get("failures_before_critical") or 0,
                     restart_after=values.get("restart_after") or 0, restart_grace=values.get("restart_grace") or "")


def short(exc: Exception) -> str:
    """supervisor's expansion errors end with every ENV_ name there is: keep the point."""
    return " ".join(str(exc).split(". Available names:")[0].split())
