"""The values of the [consul:…] keys: each parser takes the text as written
and gives the value, or raises Invalid with what to write instead.  The
rules are Consul 1.8's, so a value the agent would refuse never reaches it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from supervisor.datatypes import boolean as supervisor_boolean

from . import durations
from .spec import CheckKind, OnFatal


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


def meta_value(text: str) -> str:
    if len(text.encode()) > META_VALUE_BYTES:
        raise Invalid(f"meta values are at most {META_VALUE_BYTES} bytes (UTF-8); shorten it")
    return text


def flag(text: str) -> bool:
    try:
        return bool(supervisor_boolean(text))
    except ValueError:
        raise Invalid("true or false (also yes/no, on/off, 1/0)") from None


def weight(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if re.fullmatch(r"[0-9]{1,9}", text) and int(text) >= minimum:
            return int(text)
        raise Invalid(f"a whole number, at least {minimum}")
    return parse


def count(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,9}", text):
        return int(text)
    raise Invalid("a whole number, 0 or more")


def tagged_address(text: str) -> tuple[str, int]:
    match = HOST_PORT.match(text)
    if match:
        return match["host"].strip("[]"), port(match["port"])
    if not text or any(c.isspace() for c in text) or text.count(":") == 1:
        raise Invalid("ADDRESS or ADDRESS:PORT (an IPv6 address with a port in brackets: [::1]:80)")
    return text, 0


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
        if scheme in ("http", "https") and not rest.startswith("/"):
            return CheckKind.HTTP, text
        address, _, service = rest.partition("/") if scheme == "grpc" else (rest, "", "")
        match = HOST_PORT.match(address)
        if scheme in ("tcp", "grpc") and match and 0 < int(match["port"]) < 65536:
            return (CheckKind.TCP, rest) if scheme == "tcp" else (CheckKind.GRPC, rest)
    raise Invalid("a check is " + ", ".join(CHECK_FORMS[:-1]) + " or " + CHECK_FORMS[-1])


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
