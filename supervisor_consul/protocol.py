"""The supervisord event listener protocol, at the byte level.

supervisord sends `HEADER\\n` then `len` characters of payload and waits for
`RESULT <n>\\n<result>`; we then say `READY\\n` for the next one.  Two details
bite: `len` counts *characters* of the UTF-8 text
(supervisor 4, issue #1243), and nothing may follow `OK` - a newline there is
read as the start of the next token and wedges the listener in UNKNOWN.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TextIO

from supervisor.childutils import get_headers

READY = "READY\n"
RESULT_OK = "RESULT 2\nOK"
# supervisord's headers are about 100 characters and the payloads we act on
# (PROCESS_STATE, PROCESS_GROUP, TICK) well under 1 KiB; PROCESS_LOG chunks are at
# most 128 KiB.  Beyond these a line or payload is consumed in chunks and
# dropped, so hostile input cannot make the listener hold unbounded memory.
MAX_HEADER_CHARS = 1 << 16
MAX_PAYLOAD_CHARS = 1 << 20
_CHUNK_CHARS = 1 << 16
_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: int() would take '٣' and choke on '²'

log = logging.getLogger("supervisor_consul")


class Unreadable(ValueError):
    """Input the listener answers and skips: supervisord waits for a result either way."""

    event: Event | None = None


class MalformedHeader(Unreadable):
    """A header line we cannot read; its payload length is unknown."""


class OversizedEvent(Unreadable):
    """An event whose payload is over MAX_PAYLOAD_CHARS: consumed, in step, but dropped."""

    def __init__(self, event: Event, length: int) -> None:
        super().__init__(f"event {event.name or '?'} serial {event.serial or '?'} has {length} characters "
                         f"of payload, more than the {MAX_PAYLOAD_CHARS} the listener reads")
        self.event = event


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

    @property
    def pool_serial(self) -> int | None:
        """supervisord's per-pool counter, given when the event entered the pool."""
        text = self.headers.get("poolserial", "")
        return int(text) if _NUMBER.fullmatch(text) else None


# supervisord writes `ver:3.0 server:ID serial:N pool:P poolserial:N eventname:E len:N`;
# the [supervisord] identifier behind `server:` may contain spaces, so no split().
_HEADER_FIELD = re.compile(r"(?:^|\s)([a-z]+):(\S*)")


def parse_header(line: str) -> dict[str, str]:
    headers = dict(_HEADER_FIELD.findall(line))
    if not _NUMBER.fullmatch(headers.get("len", "")) or not line.endswith("\n"):
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
    """The next event, or None at end of input (supervisord went away).

    A line is what ends in `\\n`.  A line that is no header raises
    MalformedHeader and the next call starts at the next line; a header's
    `len` is trusted, as supervisord's always is.  A payload over
    MAX_PAYLOAD_CHARS is read and dropped (OversizedEvent), which keeps the
    stream in step without holding it.  Input cut short by EOF is logged
    and gives None: there is no one left to answer.
    """
    line = stdin.readline(MAX_HEADER_CHARS)
    if not line:
        return None
    if not line.endswith("\n"):
        if len(line) < MAX_HEADER_CHARS or not _skip_line(stdin):
            log.warning("the event stream ended inside a header %r; it is lost", line[:200])
            return None
        raise MalformedHeader(f"event header longer than {MAX_HEADER_CHARS} characters {line[:200]!r}")
    headers = parse_header(line)
    length = int(headers["len"])
    if length > MAX_PAYLOAD_CHARS:
        payload_read = _skip(stdin, length)
        payload = ""
    else:
        payload = stdin.read(length) if length > 0 else ""
        payload_read = len(payload)
    if payload_read < length:
        log.warning("the event stream ended inside event %s serial %s (%d of %d characters); it is lost",
                    headers.get("eventname", "?"), headers.get("serial", "?"), payload_read, length)
        return None
    if length > MAX_PAYLOAD_CHARS:
        raise OversizedEvent(Event(headers), length)
    return Event(headers, payload, parse_payload_headers(payload))


def _skip_line(stdin: TextIO) -> bool:
    """Consume the rest of an over-long line; False if EOF came first."""
    while chunk := stdin.readline(_CHUNK_CHARS):
        if chunk.endswith("\n"):
            return True
    return False


def _skip(stdin: TextIO, length: int) -> int:
    """Consume `length` characters a chunk at a time; how many there were."""
    done = 0
    while done < length and (chunk := stdin.read(min(_CHUNK_CHARS, length - done))):
        done += len(chunk)
    return done


def send(stdout: TextIO, text: str) -> None:
    stdout.write(text)
    stdout.flush()


def protocol_streams() -> tuple[TextIO, TextIO]:
    """stdin and stdout for the protocol, with fd 1 handed over to stderr.

    stdin is read as UTF-8 without newline translation so `len` counts the
    characters supervisord counted, and only `\\n` ends a line, as supervisord
    ends its headers (a stray `\\r` must not split one).  The protocol keeps
    a private copy of fd 1 and fd 1 itself becomes stderr, so a stray print()
    from any library lands in the log instead of corrupting the protocol.
    """
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    stdout = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stdin, stdout
