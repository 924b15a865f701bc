"""The values of the [consul:…] keys: each parser takes the text as written
and gives the value, or raises Invalid with what to write instead.  The
rules are Consul 1.8's, so a value the agent would refuse never reaches it."""

from __future__ import annotations

import ipaddress
import re
import shlex
import urllib.parse
from collections.abc import Callable

from supervisor.datatypes import boolean as supervisor_boolean

from . import durations
from .spec import CheckKind, Connect, OnFatal


class Invalid(ValueError):
    """A value a key cannot take; the message says what to write instead."""


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


def port(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,5}", text) and 0 < int(text) < 65536:
        return int(text)
    raise Invalid("port must be a number from 1 to 65535")


def optional_port(text: str) -> int:
    return port(text) if text else 0


def address(text: str) -> str:
    if any(c.isspace() for c in text):
        raise Invalid("address must be a host name or IP address")
    return text


def tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def duration(text: str) -> str:
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


def wait(text: str) -> str:
    """A duration that may be zero: no wait at all."""
    try:
        if durations.nanoseconds(text) == 0:
            return "0s"
    except ValueError:
        pass  # duration() says what is wrong
    return duration(text)


def ttl(text: str) -> str:
    value = duration(text)
    if durations.seconds(value) < MIN_TTL_SECONDS:
        raise Invalid(f"ttl must be at least {MIN_TTL_SECONDS}s: the listener refreshes the check every ttl/3")
    return value


def deregister_after(text: str) -> str | None:
    return None if text.lower() == "off" else duration(text)


def on_fatal(text: str) -> OnFatal:
    try:
        return OnFatal(text)
    except ValueError:
        raise Invalid("on_fatal must be " + " or ".join(o.value for o in OnFatal)) from None


def connect(text: str) -> Connect:
    try:
        return Connect(text)
    except ValueError:
        raise Invalid("connect must be " + " or ".join(c.value for c in Connect)) from None


def upstreams(text: str) -> tuple[tuple[str, int], ...]:
    """`db:9191, cache:9192`: DESTINATION:LOCAL_PORT, comma-separated."""
    found = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        destination, _, local = item.rpartition(":")
        if not DNS_NAME.match(destination) or not re.fullmatch(r"[0-9]{1,5}", local) or not 0 < int(local) < 65536:
            raise Invalid(f"{item!r}: upstreams are DESTINATION:LOCAL_PORT, comma-separated (db:9191, cache:9192)")
        found.append((destination, int(local)))
    return tuple(found)


def meta_value(text: str) -> str:
    if len(text.encode()) > META_VALUE_BYTES:
        raise Invalid(f"meta values are at most {META_VALUE_BYTES} bytes (UTF-8); shorten it")
    return text


def flag(text: str) -> bool:
    try:
        return bool(supervisor_boolean(text))
    except ValueError:
        raise Invalid("true or false (also yes/no, on/off, 1/0)") from None


MAX_WEIGHT = 65535  # an SRV record's weight is 16 bits; Consul refuses more


def weight(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if re.fullmatch(r"[0-9]{1,5}", text) and minimum <= int(text) <= MAX_WEIGHT:
            return int(text)
        raise Invalid(f"a whole number from {minimum} to {MAX_WEIGHT}")
    return parse


def positive_count(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,18}", text) and int(text) >= 1:
        return int(text)
    raise Invalid("a whole number, 1 or more")


def count(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,18}", text):  # Go's int64, as Consul keeps it
        return int(text)
    raise Invalid("a whole number, 0 or more")


TAGGED_FORMS = "ADDRESS or ADDRESS:PORT (an IPv6 address in brackets before a port: [::1]:80)"
# Consul checks the addresses of these names for their IP version (ServiceNode validation).
IP_VERSION_OF = {"lan_ipv4": 4, "wan_ipv4": 4, "lan_ipv6": 6, "wan_ipv6": 6}


def tagged_address(text: str) -> tuple[str, int]:
    match = HOST_PORT.match(text)
    host, number = (match["host"], port(match["port"])) if match else (text, 0)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if _ip_version(host) != 6:
            raise Invalid(TAGGED_FORMS)
    elif not host or any(c.isspace() or c in "[]" for c in host):
        raise Invalid(TAGGED_FORMS)
    elif ":" in host and _ip_version(host) != 6:  # only an IPv6 address has colons
        raise Invalid(TAGGED_FORMS)
    return host, number


def of_version(name: str, address: str) -> None:
    """Raises Invalid when a tagged address's NAME asks for an IP version the address is not of."""
    version = IP_VERSION_OF.get(name)
    if version is not None and _ip_version(address) != version:
        raise Invalid(f"tagged_address.{name} must be an IPv{version} address (Consul's rule for {name})")


def _ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def method(text: str) -> str:
    if not HTTP_TOKEN.match(text):
        raise Invalid("an HTTP method such as GET, POST or HEAD")
    return text


def header_value(text: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise Invalid("a header value is one line")
    return text


def check_target(text: str) -> tuple[CheckKind, str]:
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
        if scheme in ("http", "https") and not rest.startswith("/") and _url_has_host_and_port(text):
            return CheckKind.HTTP, text
        address, _, service = rest.partition("/") if scheme == "grpc" else (rest, "", "")
        match = HOST_PORT.match(address)
        if scheme in ("tcp", "grpc") and match and 0 < int(match["port"]) < 65536:
            return (CheckKind.TCP, rest) if scheme == "tcp" else (CheckKind.GRPC, rest)
    raise Invalid("a check is " + ", ".join(CHECK_FORMS[:-1]) + " or " + CHECK_FORMS[-1])


def _url_has_host_and_port(url: str) -> bool:
    # Consul takes http://h:abc/ and http://h:0/ too, but such a check can never pass.
    try:
        parts = urllib.parse.urlsplit(url)
        number = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and number != 0


SINGLE_FORMS = "check must be ttl, none, http://HOST[:PORT]/PATH, https://HOST[:PORT]/PATH or tcp://HOST:PORT"


def single_check(text: str) -> tuple[CheckKind, str] | str:
    """`check =`: ttl, none, or one http or tcp check (the others came with check.NAME)."""
    if text in ("", "ttl", "none"):
        return text or "ttl"
    try:
        kind, target = check_target(text)
    except Invalid:
        raise Invalid(SINGLE_FORMS) from None
    if kind in (CheckKind.GRPC, CheckKind.SCRIPT):
        raise Invalid(f"{SINGLE_FORMS}; for a {kind.value} check write check.NAME = {text}")
    return kind, target


def plain(text: str) -> str:
    return text
