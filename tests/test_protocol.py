"""The event-listener protocol (protocol.py) and the event loop (listener.py).

As supervisord 4 speaks it: `len` counts characters, the payload is read
untranslated, and stdout carries nothing but `READY\\n` and `RESULT 2\\nOK`.
"""
from __future__ import annotations

import io
import re

import pytest

from supervisor_consul import listener as listener_module
from supervisor_consul import protocol
from supervisor_consul.events import GroupsChanged, ProcessStateChange, SupervisorStateChange
from supervisor_consul.inbox import Inbox
from supervisor_consul.listener import Listener
from supervisor_consul.protocol import MalformedHeader, read_event

PROTOCOL_ONLY = re.compile(r"^READY\n(RESULT 2\nOKREADY\n)*$")


def envelope(eventname: str, payload: str = "", serial: int = 1, poolserial: int | None = None) -> str:
    """One event as supervisord writes it: header line, then `len` characters of payload."""
    poolserial = serial if poolserial is None else poolserial
    return (f"ver:3.0 server:supervisor serial:{serial} pool:consul poolserial:{poolserial} "
            f"eventname:{eventname} len:{len(payload)}\n{payload}")


def state_payload(process: str, group: str | None = None, from_state: str = "STARTING", **extra: object) -> str:
    fields = [f"processname:{process}", f"groupname:{group or process}", f"from_state:{from_state}"]
    fields += [f"{key}:{value}" for key, value in extra.items()]
    return " ".join(fields)  # no trailing newline, as supervisord sends it


def stream(text: str) -> io.StringIO:
    return io.StringIO(text, newline="")


# -- read_event ---------------------------------------------------------------


def test_read_event_headers_and_payload():
    payload = state_payload("web", from_state="STARTING", pid=4242)
    event = read_event(stream(envelope("PROCESS_STATE_RUNNING", payload, serial=21, poolserial=7)))

    assert event is not None
    assert event.headers == {"ver": "3.0", "server": "supervisor", "serial": "21", "pool": "consul",
                             "poolserial": "7", "eventname": "PROCESS_STATE_RUNNING", "len": str(len(payload))}
    assert event.name == "PROCESS_STATE_RUNNING"
    assert event.serial == "21"
    assert event.payload == payload
    assert event.payload_headers == {"processname": "web", "groupname": "web",
                                     "from_state": "STARTING", "pid": "4242"}


def test_len_counts_characters_not_bytes():
    payload = state_payload("wéb", from_state="STARTING", pid=56)
    assert len(payload.encode("utf-8")) == len(payload) + 2  # the case of issue #1243
    text = envelope("PROCESS_STATE_RUNNING", payload, serial=1) + envelope("TICK_5", "when:1795542420", serial=2)
    source = stream(text)

    first = read_event(source)
    second = read_event(source)

    assert first.payload == payload
    assert first.payload_headers["processname"] == "wéb"
    assert second.name == "TICK_5"
    assert second.payload == "when:1795542420"
    assert read_event(source) is None


def test_len_counts_characters_on_a_utf8_byte_stream():
    """The same through a TextIOWrapper over bytes, as protocol_streams() reads stdin."""
    payload = state_payload("wéb", from_state="STARTING", pid=56)
    data = (envelope("PROCESS_STATE_RUNNING", payload, serial=1) + envelope("TICK_5", "when:1", serial=2))
    source = io.TextIOWrapper(io.BytesIO(data.encode("utf-8")), encoding="utf-8", newline="")

    assert read_event(source).payload == payload
    assert read_event(source).name == "TICK_5"
    assert read_event(source) is None


def test_payload_with_carriage_returns_is_not_translated():
    payload = "processname:web groupname:web channel:stdout\nline one\r\nline two\r"
    source = stream(envelope("PROCESS_LOG_STDOUT", payload, serial=1) + envelope("TICK_5", "when:1", serial=2))

    event = read_event(source)

    assert event.payload == payload
    assert read_event(source).name == "TICK_5"


def test_eof_gives_none():
    assert read_event(stream("")) is None


def test_truncated_payload_gives_none():
    header = "ver:3.0 server:supervisor serial:1 pool:consul poolserial:1 eventname:PROCESS_STATE_RUNNING len:60\n"
    assert read_event(stream(header + "processname:web groupname:web")) is None


@pytest.mark.parametrize("line", [
    "garbage\n",
    "\n",
    "ver:3.0 eventname:TICK_5\n",  # no len
    "ver:3.0 eventname:TICK_5 len:many\n",
])
def test_malformed_header_raises(line):
    with pytest.raises(MalformedHeader):
        read_event(stream(line))


def test_empty_payload():
    event = read_event(stream(envelope("SUPERVISOR_STATE_CHANGE_RUNNING", "")))
    assert event.name == "SUPERVISOR_STATE_CHANGE_RUNNING"
    assert event.payload == ""
    assert event.payload_headers == {}


def test_process_group_payload_with_trailing_newline():
    event = read_event(stream(envelope("PROCESS_GROUP_ADDED", "groupname:web\n")))
    assert event.payload == "groupname:web\n"
    assert event.payload_headers == {"groupname": "web"}


# -- Listener -------------------------------------------------------------------


def run_listener(text: str) -> tuple[str, Inbox, Listener]:
    stdout = io.StringIO()
    inbox = Inbox()
    listener = Listener(stream(text), stdout, inbox)
    listener.run()  # returns at EOF
    return stdout.getvalue(), inbox, listener


def running(serial: int, process: str = "web", group: str | None = None, pid: int = 100) -> str:
    return envelope("PROCESS_STATE_RUNNING", state_payload(process, group, "STARTING", pid=pid), serial=serial)


def test_one_event_exact_output():
    out, inbox, listener = run_listener(running(1))
    assert out == "READY\nRESULT 2\nOKREADY\n"
    assert listener.events == 1


def test_no_events_only_ready():
    out, inbox, _ = run_listener("")
    assert out == "READY\n"
    assert inbox.take(0).hints == []


@pytest.mark.parametrize("count", [2, 5, 30])
def test_n_events_n_results(count):
    out, inbox, _ = run_listener("".join(running(serial, pid=serial) for serial in range(1, count + 1)))
    assert out == "READY\n" + "RESULT 2\nOKREADY\n" * count
    assert [hint.pid for hint in inbox.take(0).hints] == list(range(1, count + 1))


def test_malformed_header_still_answered_and_loop_goes_on(caplog):
    out, inbox, _ = run_listener("this is no header\n" + running(2))
    assert out == "READY\n" + "RESULT 2\nOKREADY\n" * 2
    assert inbox.take(0).hints == [ProcessStateChange("web", "RUNNING", "STARTING", 100)]
    assert "unreadable event header" in caplog.text


def test_duplicate_serial_posted_once():
    out, inbox, _ = run_listener(running(7) + running(7) + running(8, pid=200))
    assert out == "READY\n" + "RESULT 2\nOKREADY\n" * 3
    assert inbox.take(0).hints == [ProcessStateChange("web", "RUNNING", "STARTING", 100),
                                   ProcessStateChange("web", "RUNNING", "STARTING", 200)]


def test_tick_posts_nothing():
    out, inbox, _ = run_listener(envelope("TICK_5", "when:1795542420", serial=3))
    assert out == "READY\nRESULT 2\nOKREADY\n"
    batch = inbox.take(0)
    assert batch.hints == []
    assert not batch.reconcile


def test_posted_hints_are_the_right_objects():
    text = (running(1, "web_01", "web", pid=11)
            + envelope("PROCESS_STATE_EXITED", state_payload("netcat", from_state="RUNNING", expected=0, pid=12),
                       serial=2)
            + envelope("PROCESS_STATE_STARTING", state_payload("netcat", from_state="EXITED", tries=0), serial=3)
            + envelope("PROCESS_GROUP_ADDED", "groupname:api\n", serial=4)
            + envelope("SUPERVISOR_STATE_CHANGE_STOPPING", "", serial=5))

    _, inbox, _ = run_listener(text)

    assert inbox.take(0).hints == [
        ProcessStateChange("web:web_01", "RUNNING", "STARTING", 11, None),
        ProcessStateChange("netcat", "EXITED", "RUNNING", 12, False),
        ProcessStateChange("netcat", "STARTING", "EXITED", 0, None),
        GroupsChanged("api"),
        SupervisorStateChange("STOPPING"),
    ]


def test_an_event_that_cannot_be_read_still_gets_ok(mocker):
    mocker.patch.object(listener_module, "hint_for", side_effect=RuntimeError("boom"))
    out, inbox, _ = run_listener(running(1) + running(2))
    assert out == "READY\n" + "RESULT 2\nOKREADY\n" * 2
    assert inbox.take(0).hints == []


def test_nothing_but_protocol_tokens_on_stdout():
    text = (running(1)
            + "not a header at all\n"
            + envelope("TICK_5", "when:1", serial=2)
            + running(1)  # duplicate
            + envelope("PROCESS_LOG_STDOUT", "processname:web groupname:web channel:stdout\nhello\r\n", serial=3)
            + envelope("SOME_FUTURE_EVENT", "x:y", serial=4)
            + envelope("PROCESS_STATE_RUNNING", "no fields here", serial=5)
            + envelope("PROCESS_STATE_RUNNING", state_payload("wéb", pid=9), serial=6))
    header_lines = 7 + 1  # seven events and one malformed line

    out, inbox, _ = run_listener(text)

    assert PROTOCOL_ONLY.fullmatch(out)
    assert out.count("RESULT 2\nOK") == header_lines
    assert inbox.take(0).hints == [ProcessStateChange("web", "RUNNING", "STARTING", 100),
                                   ProcessStateChange("wéb", "RUNNING", "STARTING", 9)]


def test_identifier_with_a_space_still_reads():
    # [supervisord] identifier= is free text and supervisord writes it as server:ID.
    text = ("ver:3.0 server:my sup serial:7 pool:consul poolserial:7 eventname:PROCESS_GROUP_ADDED "
            "len:14\ngroupname:web\n")
    event = read_event(stream(text))
    assert event.name == "PROCESS_GROUP_ADDED" and event.payload == "groupname:web\n"


def test_a_poolserial_gap_asks_for_a_reconcile(caplog):
    # supervisord's full buffer dropped poolserials 3 and 4 (the oldest go first).
    caplog.set_level("INFO", logger="supervisor_consul")
    text = "".join(envelope("TICK_5", "when:1", serial=serial, poolserial=serial) for serial in (1, 2, 5))
    _, inbox, listener = run_listener(text)
    assert inbox.take(0).reconcile
    assert listener.lost == 2
    assert "dropped 2 event(s) for pool consul" in caplog.text


@pytest.mark.parametrize("poolserials", [(0, 1, 2, 3), (7, 8, 0, 1), (5, 6, 6, 7)],
                         ids=["in order", "new pool after a reload", "redelivered"])
def test_no_gap_no_reconcile(poolserials):
    text = "".join(envelope("TICK_5", "when:1", serial=100 + i, poolserial=ps) for i, ps in enumerate(poolserials))
    _, inbox, listener = run_listener(text)
    assert not inbox.take(0).reconcile
    assert listener.lost == 0


def test_a_malformed_header_asks_for_a_reconcile():
    _, inbox, _ = run_listener("this is no header\n")
    assert inbox.take(0).reconcile


@pytest.mark.parametrize("header", [
    "ver:3.0 eventname:TICK_5 len:\u00b2\n",  # str.isdigit() says yes, int() says no
    "ver:3.0 eventname:TICK_5 len:\u0663\n",  # int() reads it as 3; supervisord never writes it
    "ver:3.0 eventname:TICK_5 len:" + "9" * 5000 + "\n",  # past int()'s digit limit
])
def test_a_len_of_no_ascii_number_is_skipped_not_a_crash(header):
    out, inbox, listener = run_listener(header + running(2))
    assert out == "READY\n" + "RESULT 2\nOKREADY\n" * 2
    assert (listener.skipped, listener.events) == (1, 1)
    assert inbox.take(0).hints == [ProcessStateChange("web", "RUNNING", "STARTING", 100)]


def test_a_poolserial_of_no_ascii_number_is_no_gap_and_no_crash():
    text = envelope("TICK_5", "when:1", serial=1, poolserial=1).replace("poolserial:1", "poolserial:\u00b2")
    _, inbox, listener = run_listener(text + running(2))
    assert listener.lost == 0 and listener.events == 2


def test_pools_remembered_are_bounded():
    text = "".join(envelope("TICK_5", "when:1", serial=n).replace("pool:consul", f"pool:p{n}") for n in range(100))
    _, _, listener = run_listener(text)
    assert len(listener._poolserials) <= listener_module.MAX_POOLS


def test_an_oversized_event_is_answered_and_keeps_the_stream_in_step(monkeypatch, caplog):
    monkeypatch.setattr(protocol, "MAX_PAYLOAD_CHARS", 80)  # running() fits
    out, inbox, listener = run_listener(envelope("PROCESS_LOG_STDOUT", "x" * 81, serial=1) + running(2))
    assert out == "READY\n" + "RESULT 2\nOKREADY\n" * 2
    assert (listener.skipped, listener.events, listener.lost) == (1, 1, 0)  # its poolserial still counts
    assert inbox.take(0).reconcile
    assert "event PROCESS_LOG_STDOUT serial 1 has 81 characters of payload" in caplog.text
