"""Issue 3, item 11: the event-stream reader and the listener under hostile input.

What the listener guarantees, whatever arrives on its stdin:

- stdout carries `READY\\n` and then exactly one `RESULT 2\\nOK` + `READY\\n` per
  line it consumed as a header (a line is what ends in `\\n`), nothing else;
- it never raises: the run ends at EOF, and only there, without an exception;
- it logs what it skips: every unreadable header line and oversized event
  (warning), every unknown or duplicate event (debug), input cut short by EOF
  (warning).

Resynchronisation.  A readable header is a line whose last `len:` field is 1
to 18 ASCII digits.  Its `len` is trusted, as supervisord's always is (it
counts characters, supervisor #1243), so what is promised is:
any number of `\\n`-terminated lines that are not readable headers, anywhere
between well-formed events, cost nothing: every well-formed event is read
with its headers and exactly its payload, in order.  A readable header whose
`len` is wrong (supervisord never writes one) promises nothing about the
events after it beyond the three points above.

Huge `len`.  A payload over MAX_PAYLOAD_CHARS is consumed a chunk at a time
and dropped (answered, logged, a reconcile asked for), so memory stays
bounded and the stream stays in step with a supervisord that really sent it;
a header line over MAX_HEADER_CHARS is likewise consumed and skipped.  A
`len` larger than what ever arrives waits, as for the next event, and ends at
EOF like any truncated event; supervisord never sends one.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from supervisor.options import make_namespec

from supervisor_consul import protocol
from supervisor_consul.events import GroupsChanged, ProcessStateChange, SupervisorStateChange
from supervisor_consul.inbox import Inbox
from supervisor_consul.listener import Listener
from supervisor_consul.protocol import MalformedHeader, OversizedEvent, parse_header, read_event
from tests.harness import Supervisord, free_port, listener, wait_for
from tests.test_integration import instances, listener_log, status_of, unique, wait_passing

pytestmark = pytest.mark.fuzz  # hypothesis: seconds a test; the full suite runs them, `make unit` not

# Reproducible in CI: no example database, the same examples on every run.
PURE = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SUBPROCESS = settings(PURE, max_examples=6)

PROTOCOL_ONLY = re.compile(r"READY\n(?:RESULT 2\nOKREADY\n)*")
ANSWER = "RESULT 2\nOK" + "READY\n"
# Small limits so that the over-long and oversized paths and chunked skipping
# are exercised with small examples.
HEADER_LIMIT, PAYLOAD_LIMIT = 256, 600  # every well_formed() payload fits in 600
LOGGER = "supervisor_consul"


@contextlib.contextmanager
def small_limits():
    with mock.patch.multiple(protocol, MAX_HEADER_CHARS=HEADER_LIMIT, MAX_PAYLOAD_CHARS=PAYLOAD_LIMIT,
                             _CHUNK_CHARS=7):
        yield


def text_stream(text: str) -> io.StringIO:
    return io.StringIO(text, newline="\n")  # as protocol_streams() reads: only \n ends a line


def byte_stream(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline="\n")


def header(eventname: str, length: int, serial: int | str, poolserial: int | str, identifier: str = "supervisor",
           pool: str = "consul") -> str:
    return (f"ver:3.0 server:{identifier} serial:{serial} pool:{pool} poolserial:{poolserial} "
            f"eventname:{eventname} len:{length}\n")


def owed(text: str) -> tuple[int, int]:
    """(results, events) the reader owes for `text`: read_event's contract, spelled out plainly.
    Every result that is not an event is a skip."""
    results, events, pos = 0, 0, 0
    while True:
        end = text.find("\n", pos)
        if end < 0:
            return results, events  # a line cut short by EOF is never answered
        line, pos = text[pos:end + 1], end + 1
        results += 1
        if len(line) > protocol.MAX_HEADER_CHARS:
            continue
        try:
            length = int(parse_header(line)["len"])
        except MalformedHeader:
            continue
        if pos + length > len(text):
            return results - 1, events  # payload cut short by EOF
        pos += length
        if length <= protocol.MAX_PAYLOAD_CHARS:
            events += 1


# -- strategies ----------------------------------------------------------------------

ANY_CHAR = st.characters(blacklist_categories=("Cs",))  # whatever UTF-8 can carry
LINE_CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
# supervisord names: no space, ':' or '/' (datatypes.process_or_group_name); we add no whitespace at all.
NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=":/"),
               min_size=1, max_size=12)
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN")
KNOWN_PREFIXES = ("PROCESS_STATE_", "PROCESS_GROUP_", "SUPERVISOR_STATE_CHANGE_")


@dataclass(frozen=True)
class Sent:
    """One well-formed event: what it reads as, and the hint it carries."""

    eventname: str
    payload: str
    hint: object = None


@st.composite
def well_formed(draw) -> Sent:
    kind = draw(st.sampled_from(["state", "group", "supervisor", "tick", "log", "unknown"]))
    if kind == "state":
        state, process, group = draw(st.sampled_from(STATES)), draw(NAME), draw(NAME)
        from_state, pid = draw(st.sampled_from(STATES)), draw(st.integers(0, 2**22))
        expected = draw(st.booleans()) if state == "EXITED" else None
        payload = f"processname:{process} groupname:{group} from_state:{from_state}"
        payload += "" if expected is None else f" expected:{int(expected)}"
        payload += f" pid:{pid}"  # no trailing newline, as supervisord writes it
        return Sent(f"PROCESS_STATE_{state}", payload,
                    ProcessStateChange(make_namespec(group, process), state, from_state, pid, expected))
    if kind == "group":
        name, group = draw(st.sampled_from(["PROCESS_GROUP_ADDED", "PROCESS_GROUP_REMOVED"])), draw(NAME)
        return Sent(name, f"groupname:{group}\n", GroupsChanged(group))
    if kind == "supervisor":
        state = draw(st.sampled_from(["RUNNING", "STOPPING"]))
        return Sent(f"SUPERVISOR_STATE_CHANGE_{state}", "", SupervisorStateChange(state))
    if kind == "tick":
        return Sent(draw(st.sampled_from(["TICK_5", "TICK_60", "TICK_3600"])), f"when:{draw(st.integers(0))}")
    # A process's output, with what looks like headers and protocol tokens in it.
    body = draw(st.lists(st.one_of(st.text(ANY_CHAR, max_size=40),
                                   st.builds(header, st.sampled_from(["PROCESS_STATE_STOPPED", "TICK_5"]),
                                             st.integers(0, 999), st.integers(0, 99), st.integers(0, 99)),
                                   st.sampled_from(["READY\n", "RESULT 2\nOK", "\r\n", "\r", "len:999999999\n"])),
                         max_size=4).map("".join))
    if kind == "log":
        payload = f"processname:{draw(NAME)} groupname:{draw(NAME)} pid:{draw(st.integers(1, 99999))} " \
                  f"channel:stdout\n{body}"
        return Sent("PROCESS_LOG_STDOUT", payload)
    name = draw(st.from_regex(r"[A-Z][A-Z0-9_]{0,29}", fullmatch=True).filter(
        lambda n: not n.startswith(KNOWN_PREFIXES)))
    return Sent(name, body)


def header_fields(line: str) -> dict[str, str] | None:
    """The header grammar, stated independently of protocol.py: whitespace-separated
    `key:value` tokens (key in a-z, the last one wins); readable when the line ends
    in `\n` and `len` is 1 to 18 ASCII digits.  None when unreadable."""
    fields = {}
    for token in line.split():
        match = re.fullmatch(r"([a-z]+):(.*)", token, re.S)
        if match:
            fields[match[1]] = match[2]
    readable = line.endswith("\n") and re.fullmatch(r"[0-9]{1,18}", fields.get("len", ""))
    return fields if readable else None


def unreadable(line: str) -> bool:
    return header_fields(line) is None


# Values that look like numbers to str.isdigit() or int() but are no `len`.
DIGITISH = st.text(st.sampled_from("0123456789\u00b2\u00b3\u0663\u0969\U0001d7d7\u2070-+ _e."), max_size=24)
NUMBERISH = st.text(st.sampled_from("0123456789\u00b2\u00b3\u0663\u0969\U0001d7d7"), min_size=1, max_size=22)
SEPARATOR = st.sampled_from([" ", "  ", "\t", "\x0b", "\x1c", "\u3000", "\r"])


@st.composite
def header_like(draw) -> str:
    """A line of `key:value` fields, some of them supervisord's, with number-ish values."""
    keys = st.one_of(st.sampled_from(["ver", "server", "serial", "pool", "poolserial", "eventname", "len"]),
                     st.from_regex(r"[a-z]{1,6}", fullmatch=True))
    values = st.one_of(NUMBERISH, DIGITISH, st.text(LINE_CHAR, max_size=10), st.integers(0, 10**25).map(str))
    fields = draw(st.lists(st.tuples(keys, values), max_size=8))
    if draw(st.booleans()):  # most often, a len that str.isdigit() takes and int() may not
        fields.append(("len", draw(st.one_of(NUMBERISH, DIGITISH, st.integers(0, 10**20).map(str)))))
    return "".join(f"{draw(SEPARATOR)}{key}:{value}" for key, value in fields)


# Unreadable by the grammar: the reader must skip these, whatever it makes of them.
KNOWN_GARBAGE = st.sampled_from([
    "", "READY", "RESULT 2", "OK", "\r", "len:", "len:\u00b2", "len:\u0663", "len:-1", "len:1e3", "len:+5",
    "len:" + "9" * 19, "len:" + "9" * 5000, "eventname:PROCESS_STATE_RUNNING", "LEN:5", "xlen:5", "len :5",
    "ver:3.0 server:supervisor serial:1 pool:consul poolserial:1 eventname:TICK_5 len:x",
    "ver:3.0 server:supervisor serial:1 pool:consul poolserial:1 eventname:TICK_5 len:5 len:\u00b2",
]).map(lambda text: text + "\n")
GARBAGE_LINE = st.one_of(
    KNOWN_GARBAGE,
    st.one_of(st.text(LINE_CHAR, max_size=60), header_like()).map(lambda text: text + "\n")
    .filter(lambda line: len(line) <= HEADER_LIMIT and unreadable(line)),
)
# Over the header limit: skipped even when it would read as a header.
LONG_LINE = st.builds(lambda text: (text * (HEADER_LIMIT // len(text) + 1)) + "\n",
                      st.text(LINE_CHAR, min_size=1, max_size=20))


@dataclass(frozen=True)
class Stream:
    text: str
    items: tuple  # ("event", Sent, serial) | ("skip", line or None) | ("oversized", serial)
    ending: str  # "" | "header" | "payload"

    @property
    def answers(self) -> int:
        return len(self.items)


@st.composite
def garbled_streams(draw) -> Stream:
    """Well-formed events (unique serials), unreadable lines and oversized events, in any order,
    maybe cut short by EOF at the end."""
    identifier = draw(st.text(LINE_CHAR, max_size=30))
    pool = draw(NAME)
    text, items, serial = [], [], 0
    for kind in draw(st.lists(st.sampled_from(["event", "event", "garbage", "long", "oversized"]), max_size=12)):
        serial += 1
        if kind == "event":
            sent = draw(well_formed())
            text.append(header(sent.eventname, len(sent.payload), serial, serial, identifier, pool) + sent.payload)
            items.append(("event", sent, serial))
        elif kind == "oversized":
            length = draw(st.integers(PAYLOAD_LIMIT + 1, 3 * PAYLOAD_LIMIT))
            chunk = draw(st.text(ANY_CHAR, min_size=1, max_size=9))
            text.append(header("PROCESS_LOG_STDOUT", length, serial, serial, identifier, pool)
                        + (chunk * length)[:length])
            items.append(("oversized", serial))
        else:
            line = draw(GARBAGE_LINE if kind == "garbage" else LONG_LINE)
            text.append(line)
            items.append(("skip", line))
    ending = draw(st.sampled_from(["", "header", "payload"]))
    if ending == "header":  # EOF inside a header line: never answered
        cut = st.one_of(st.text(LINE_CHAR, min_size=1, max_size=40), LONG_LINE.map(lambda line: line[:-1]))
        text.append(draw(cut))
    elif ending == "payload":  # EOF inside a payload, oversized or not: never answered
        sent = draw(well_formed())
        length = draw(st.sampled_from([len(sent.payload) + 1, 10**9]))
        text.append(header(sent.eventname, length, serial + 1, serial + 1, identifier, pool) + sent.payload)
    return Stream("".join(text), tuple(items), ending)


@st.composite
def hostile_text(draw) -> str:
    """Anything: well-formed events, headers whose len is wrong, random headers, garbage, raw text."""
    parts = []
    for kind in draw(st.lists(st.sampled_from(["event", "odd serials", "wrong len", "random header", "garbage",
                                               "raw"]), max_size=12)):
        if kind == "event":
            sent = draw(well_formed())
            parts.append(header(sent.eventname, len(sent.payload), draw(st.integers(0, 50)),
                                draw(st.integers(0, 50))) + sent.payload)
        elif kind == "odd serials":  # serial and poolserial that int() chokes on, or takes when it should not
            sent = draw(well_formed())
            parts.append(header(sent.eventname, len(sent.payload), draw(NUMBERISH), draw(NUMBERISH),
                                pool=draw(NAME)) + sent.payload)
        elif kind == "wrong len":
            sent = draw(well_formed())
            length = draw(st.integers(0, 2 * len(sent.payload) + 5).filter(lambda n: n != len(sent.payload)))
            parts.append(header(sent.eventname, length, 1, 1) + sent.payload)
        elif kind == "random header":
            line = draw(header_like()) + "\n"
            fields = header_fields(line)
            if fields is not None and int(fields["len"]) < 400:  # readable: give it (about) its payload
                line += draw(st.text(ANY_CHAR, max_size=int(fields["len"]) + 3))
            parts.append(line)
        elif kind == "garbage":
            parts.append(draw(st.one_of(GARBAGE_LINE, LONG_LINE)))
        else:
            parts.append(draw(st.text(ANY_CHAR, max_size=60)))
    return "".join(parts)


# -- parse_header ----------------------------------------------------------------------


@PURE
@given(st.one_of(st.text(ANY_CHAR, max_size=120), header_like()), st.booleans())
def test_parse_header_follows_the_grammar_and_raises_nothing_else(line, newline):
    line += "\n" if newline else ""
    expected = header_fields(line)
    try:
        headers = parse_header(line)
    except MalformedHeader:
        assert expected is None
        return
    assert headers == expected  # so int(headers["len"]) can never fail


@PURE
@given(st.from_regex(r"[A-Z][A-Z0-9_]{0,29}", fullmatch=True), st.integers(0, 10**9), st.integers(0, 2**40),
       st.integers(0, 2**40), st.text(LINE_CHAR, max_size=40), NAME)
def test_parse_header_reads_every_header_supervisord_writes(eventname, length, serial, poolserial, identifier,
                                                            pool):
    # The identifier is free text (even spaces and what looks like fields); every later field wins.
    headers = parse_header(header(eventname, length, serial, poolserial, identifier, pool))
    assert (headers["eventname"], headers["len"], headers["serial"], headers["pool"], headers["poolserial"]) == \
        (eventname, str(length), str(serial), pool, str(poolserial))


# -- read_event ------------------------------------------------------------------------


def outcomes(source) -> list:
    """Every read_event outcome until None: Event, or the Unreadable it raised."""
    seen = []
    while True:
        try:
            event = read_event(source)
        except (MalformedHeader, OversizedEvent) as exc:
            seen.append(exc)
            continue
        if event is None:
            return seen
        seen.append(event)


def check_outcomes(stream: Stream, seen: list) -> None:
    assert len(seen) == stream.answers
    for item, outcome in zip(stream.items, seen):
        if item[0] == "event":
            _, sent, serial = item
            assert not isinstance(outcome, Exception), outcome
            assert (outcome.name, outcome.serial, outcome.payload) == (sent.eventname, str(serial), sent.payload)
            assert outcome.headers["len"] == str(len(sent.payload))  # characters, not bytes
        elif item[0] == "oversized":
            assert isinstance(outcome, OversizedEvent) and outcome.event.serial == str(item[1])
        else:
            assert isinstance(outcome, MalformedHeader)


@PURE
@given(garbled_streams())
def test_well_formed_events_among_garbage_are_read_exactly(stream):
    with small_limits():
        check_outcomes(stream, outcomes(text_stream(stream.text)))
        # The same from bytes, as stdin is read: `len` counts characters of the UTF-8 text.
        check_outcomes(stream, outcomes(byte_stream(stream.text.encode())))


def test_huge_len_is_skipped_in_bounded_memory():
    length = 5 * protocol.MAX_PAYLOAD_CHARS
    after = "processname:web groupname:web from_state:STARTING pid:7"
    source = text_stream(header("PROCESS_COMMUNICATION_STDOUT", length, 1, 1) + "é" * length
                         + header("PROCESS_STATE_RUNNING", len(after), 2, 2) + after)
    tracemalloc.start()
    try:
        with pytest.raises(OversizedEvent, match=f"has {length} characters"):
            read_event(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < protocol.MAX_PAYLOAD_CHARS  # never held, not even one payload's worth
    event = read_event(source)  # still in step
    assert event.name == "PROCESS_STATE_RUNNING" and event.payload == after


def test_huge_len_ends_at_eof_without_waiting_for_the_rest(caplog):
    # len:999999999 with the writer gone after a few characters: EOF ends it, no hang.
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as writer:
        writer.write(header("TICK_5", 999_999_999, 1, 1).encode() + b"when:1")
    source = io.TextIOWrapper(os.fdopen(read_fd, "rb"), encoding="utf-8", errors="replace", newline="\n")
    results: list = []
    reader = threading.Thread(target=lambda: results.append(read_event(source)), daemon=True)
    reader.start()
    reader.join(10)
    source.close()
    assert not reader.is_alive() and results == [None]
    assert "ended inside event TICK_5 serial 1 (6 of 999999999 characters)" in caplog.text


def test_over_long_header_line_is_skipped_whole():
    line = "x" * (3 * protocol.MAX_HEADER_CHARS) + "\n"
    source = text_stream(line + header("TICK_5", 6, 1, 1) + "when:1")
    with pytest.raises(MalformedHeader, match="longer than"):
        read_event(source)
    assert read_event(source).name == "TICK_5"


# -- Listener --------------------------------------------------------------------------


def run_listener(source) -> tuple[str, Inbox, Listener]:
    stdout = io.StringIO()
    inbox = Inbox()
    listener = Listener(source, stdout, inbox)
    listener.run()  # returns at EOF; any exception fails the test
    return stdout.getvalue(), inbox, listener


def messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == LOGGER]


@PURE
@given(garbled_streams())
def test_listener_answers_every_header_line_and_logs_every_skip(caplog, stream):
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with small_limits():
        out, inbox, listener = run_listener(text_stream(stream.text))

    assert out == "READY\n" + ANSWER * stream.answers
    batch = inbox.take(0)
    sent = [item[1] for item in stream.items if item[0] == "event"]
    assert batch.hints == [s.hint for s in sent if s.hint is not None]
    skips = [item for item in stream.items if item[0] != "event"]
    assert listener.skipped == len(skips) and listener.events == len(sent)
    if skips:
        assert batch.reconcile
    warnings = [m for m in messages(caplog, logging.WARNING) if m.endswith("; skipped, reconciling instead")]
    assert len(warnings) == len(skips)
    for item, warning in zip(skips, warnings):
        if item[0] == "skip":
            assert repr(item[1][:200]) in warning
        else:
            assert f"serial {item[1]} has " in warning
    ignored = [s.eventname for s in sent if s.hint is None and not s.eventname.startswith("TICK_")]
    assert [m for m in messages(caplog, logging.DEBUG) if m.endswith("carries nothing for us")] == \
        [f"event {name} carries nothing for us" for name in ignored]
    if stream.ending:
        assert any("the event stream ended inside" in m for m in messages(caplog, logging.WARNING))


@PURE
@given(st.lists(well_formed(), min_size=1, max_size=5), st.data())
def test_a_redelivered_event_is_answered_skipped_and_logged(caplog, sent, data):
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    texts = [header(s.eventname, len(s.payload), n, n) + s.payload for n, s in enumerate(sent, 1)]
    again = data.draw(st.integers(0, len(texts) - 1))
    out, inbox, listener = run_listener(text_stream("".join(texts) + texts[again]))
    assert out == "READY\n" + ANSWER * (len(sent) + 1)
    assert inbox.take(0).hints == [s.hint for s in sent if s.hint is not None]
    assert f"event {again + 1} seen before; skipped" in messages(caplog, logging.DEBUG)


@PURE
@given(hostile_text())
def test_listener_survives_any_text(caplog, text):
    caplog.clear()
    with small_limits():
        out, _, listener = run_listener(text_stream(text))
        results, events = owed(text)
    assert PROTOCOL_ONLY.fullmatch(out)
    assert out.count("RESULT 2\nOK") == results
    assert (listener.events, listener.skipped) == (events, results - events)
    skipped = [m for m in messages(caplog, logging.WARNING) if m.endswith("; skipped, reconciling instead")]
    assert len(skipped) == results - events


@PURE
@given(st.lists(st.one_of(st.binary(max_size=40), hostile_text().map(str.encode),
                          st.sampled_from([b"\xff", b"\xc3", b"\xe2\x98", b"\xf0\x9d\x84", b"\xed\xa0\x80",
                                           b"\x00", b"\r\n", b"\n"])),
                max_size=10).map(b"".join))
def test_listener_survives_any_bytes(data):
    # As protocol_streams() reads stdin: invalid UTF-8 becomes U+FFFD, never an exception.
    with small_limits():
        out, _, listener = run_listener(byte_stream(data))
        results, events = owed(data.decode("utf-8", errors="replace"))
    assert PROTOCOL_ONLY.fullmatch(out)
    assert out.count("RESULT 2\nOK") == results
    assert (listener.events, listener.skipped) == (events, results - events)


# -- the real command ----------------------------------------------------------------------

MINIMAL_CONF = """\
[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid

[unix_http_server]
file={socket}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:web]
command=/bin/sleep 1000

[consul:web]
port=8080
"""


@pytest.fixture(scope="module")
def running_supervisord(tmp_path_factory):
    """A real supervisord whose XML-RPC the listener reads at start; nothing else of it is used."""
    sv = Supervisord(tmp_path_factory.mktemp("supervisord"), "[program:web]\ncommand=/bin/sleep 1000\n")
    sv.start()
    try:
        yield sv
    finally:
        sv.cleanup()


@SUBPROCESS
@given(st.lists(st.one_of(GARBAGE_LINE.map(str.encode), st.binary(min_size=1, max_size=30).map(lambda b: b + b"\n"),
                          well_formed().map(lambda s: (header(s.eventname, len(s.payload), 1, 1)
                                                       + s.payload).encode())),
                min_size=1, max_size=8),
       st.sampled_from([b"", b"\xff\xfe partial line", header("TICK_5", 999_999_999, 9, 9).encode() + b"\xc3"]))
def test_listen_command_on_a_garbage_stream(tmp_path_factory, running_supervisord, chunks, ending):
    directory = tmp_path_factory.mktemp("listen")
    conf = directory / "supervisord.conf"
    conf.write_text(MINIMAL_CONF.replace("{socket}", str(running_supervisord.sock)))
    data = b"".join(chunks) + ending
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SUPERVISOR_"))}
    result = subprocess.run(
        [sys.executable, "-m", "supervisor_consul", "listen", "-c", str(conf), "--log-level", "debug",
         "--http-addr", f"127.0.0.1:{free_port()}"],  # nothing listens there
        input=data, capture_output=True, timeout=60, env=env, cwd=directory)
    stdout, stderr = result.stdout.decode(), result.stderr.decode(errors="replace")

    assert result.returncode == 0, stderr[-2000:]
    assert PROTOCOL_ONLY.fullmatch(stdout), stdout[:500]
    results, events = owed(data.decode("utf-8", errors="replace"))
    assert stdout.count("RESULT 2\nOK") == results
    assert "Traceback" not in stderr
    assert "supervisord closed the event stream; stopping" in stderr
    assert stderr.count("; skipped, reconciling instead") == results - events
    if ending:
        assert "the event stream ended inside" in stderr


# -- under a real supervisord ----------------------------------------------------------------

SPEWER = r'''
import sys, time
# What a program may print: fake headers for other programs, protocol tokens, a
# len supervisord never sends, non-ASCII text, invalid UTF-8 and multi-byte
# characters split between writes, and lines longer than one 128 KiB read.
texts = [
    "ver:3.0 server:supervisor serial:1 pool:consul poolserial:1 eventname:PROCESS_STATE_STOPPED len:57\n"
    "processname:{after} groupname:{after} from_state:RUNNING pid:1\n",
    "READY\n", "RESULT 2\nOK", "RESULT 4\nFAIL", "ver:3.0 eventname:TICK_5 len:999999999\n",
    "w\u00e9b \u2603 \U0001d11e \u00fc " * 40 + "\r\n", "\r", "\x00", "len:\u00b2\n",
]
raw = [b"\xff\xfe", b"\xc3", b"\xe2\x98", b"\xf0\x9d\x84"]
out = sys.stdout.buffer
n = 0
while True:
    n += 1
    out.write(texts[n % len(texts)].encode() + raw[n % len(raw)])
    if n % 40 == 0:
        out.write(b"x" * 200000 + b"\n")
    out.flush()
    time.sleep(0.02)
'''


@pytest.mark.fault("11. hostile event stream")
def test_hostile_event_stream_under_real_supervisord(consul_agent, supervisord_factory, tmp_path, converged):
    accented, after, spewer = unique("accent"), unique("after"), unique("spewer")
    script = tmp_path / "spew.py"
    script.write_text(textwrap.dedent(SPEWER).replace("{after}", "after"))
    stanza = listener(consul_agent).replace("events=PROCESS_STATE,PROCESS_GROUP,TICK_5",
                                            "events=PROCESS_STATE,PROCESS_GROUP,TICK_5,PROCESS_LOG")
    assert "PROCESS_LOG" in stanza
    sv = supervisord_factory(f"""
[program:wéb]
command=sleep 300
[consul:wéb]
name={accented}
[program:spéwer]
command={sys.executable} {script}
stdout_events_enabled=true
stderr_events_enabled=true
[consul:spéwer]
name={spewer}
[program:after]
command=sleep 300
[consul:after]
name={after}
""" + stanza)
    for name in (accented, spewer, after):
        wait_passing(consul_agent, name)
    pid = sv.info("consul")["pid"]

    def log_events() -> int:
        return listener_log(sv).count("event PROCESS_LOG_STDOUT carries nothing for us")

    wait_for(lambda: log_events() >= 200, timeout=90, message="200 PROCESS_LOG events read by the listener")
    # The fake PROCESS_STATE_STOPPED for `after` inside the spewer's output was payload, not an event.
    assert [s for s, _ in status_of(consul_agent, after)] == ["passing"]
    for _ in range(2):
        assert sv.ctl("restart", "wéb").returncode == 0
    new_pid = sv.info("wéb")["pid"]
    start = time.monotonic()
    assert sv.ctl("stop", "after").returncode == 0
    wait_for(lambda: instances(consul_agent, after) == [], message="after deregistered amid the spew")
    took = time.monotonic() - start
    wait_for(lambda: status_of(consul_agent, accented) == [("passing", f"RUNNING pid {new_pid}")],
             message="wéb passing with its new pid")
    assert [s for s, _ in status_of(consul_agent, spewer)] == ["passing"]

    # One listener throughout: never restarted, never out of step with supervisord.
    info = sv.info("consul")
    assert (info["pid"], info["statename"]) == (pid, "RUNNING")
    supervisord_log, own_log = sv.log_text(), listener_log(sv)
    assert supervisord_log.count("spawned: 'consul'") == 1
    for sign in ("consul: has entered the UNKNOWN state", "consul: bad result line", "consul: event was rejected",
                 "consul: event caused an error", "exited: consul"):
        assert sign not in supervisord_log
    assert "unreadable event header" not in own_log and "Traceback" not in own_log
    converged(took, f"{log_events()} PROCESS_LOG events of hostile output read; listener pid {pid} unchanged")
