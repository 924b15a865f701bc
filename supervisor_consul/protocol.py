"""The supervisord event listener protocol, at the byte level.

supervisord sends `HEADER\\n` then `len` characters of payload and waits for
`RESULT <n>\\n<result>`; we then say `READY\\n` for the next one.  Two details
bite (see supervisor-facts.md): `len` counts *characters* of the UTF-8 text
(supervisor 4, issue #1243), and nothing may follow `OK` - a newline there is
read as the start of the next token and wedges the listener in UNKNOWN.
"""

from __future__ import annotations

import io
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TextIO

from supervisor.childutils import get_headers

READY = "READY\n"
RESULT_OK = "RESULT 2\nOK"


class MalformedHeader(ValueError):
    """A header line we cannot read; its payload length is unknown."""


@dataclass(frozen=True)
class Event:
    headers: dict[str, str]
    payload: str = ""
    payload_headers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.headers.get("eventname", "")

    @property
    def serial(self) -> str:
        return self.headers.get("serial", "")


# supervisord writes `ver:3.0 server:ID serial:N pool:P poolserial:N eventname:E len:N`;
# the [supervisord] identifier behind `server:` may contain spaces, so no split().
_HEADER_FIELD = re.compile(r"(?:^|\s)([a-z]+):(\S*)")


def parse_header(line: str) -> dict[str, str]:
    headers = dict(_HEADER_FIELD.findall(line))
    if not headers.get("len", "").isdigit() or not line.endswith("\n"):
        raise MalformedHeader(f"unreadable event header {line[:200]!r}")
    return headers


def parse_payload_headers(payload: str) -> dict[str, str]:
    """The `key:value` tokens of a payload's first line (PROCESS_STATE, GROUP, TICK)."""
    first_line = payload.split("\n", 1)[0]
    try:
        return get_headers(first_line)
    except ValueError:
        return {}


def read_event(stdin: TextIO) -> Event | None:
    """The next event, or None at end of input (supervisord went away)."""
    line = stdin.readline()
    if not line:
        return None
    headers = parse_header(line)
    length = int(headers["len"])
    payload = stdin.read(length) if length > 0 else ""
    if len(payload) < length:
        return None  # truncated: supervisord closed our stdin mid-event
    return Event(headers, payload, parse_payload_headers(payload))


def send(stdout: TextIO, text: str) -> None:
    stdout.write(text)
    stdout.flush()


def protocol_streams() -> tuple[TextIO, TextIO]:
    """stdin and stdout for the protocol, with fd 1 handed over to stderr.

    stdin is read as UTF-8 without newline translation so `len` counts the
    characters supervisord counted.  The protocol keeps a private copy of
    fd 1 and fd 1 itself becomes stderr, so a stray print() from any library
    lands in the log instead of corrupting the protocol.
    """
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="")
    stdout = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stdin, stdout
