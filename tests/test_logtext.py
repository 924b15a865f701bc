"""Log hygiene: what an agent answers reaches the log and the terminal escaped."""
from __future__ import annotations

import http.server
import logging
import threading
import time

import pytest

from supervisor_consul import logtext
from tests.faults import converge
from tests.harness import ConsulAgent, free_port, listener, wait_for
from tests.test_integration import listener_log

HOSTILE = "boom\x00\x07\x1b[2J\u202eforged\r2026-01-01 00:00:00 supervisor-consul INFO all is well"


def test_escaped_leaves_printable_text_alone():
    assert logtext.escaped("RUNNING pid 42 — ok, ünïcode") == "RUNNING pid 42 — ok, ünïcode"


def test_escaped_writes_every_unprintable_character_as_an_escape():
    assert logtext.escaped("a\x00b\x1b[31m\u202ec\nd\r\te") == "a\\x00b\\x1b[31m\\u202ec\\nd\\r\\te"


def test_the_formatter_escapes_the_message_and_each_traceback_line(caplog):
    formatter = logtext.Formatter("%(levelname)s %(message)s")
    try:
        raise ValueError(HOSTILE)
    except ValueError as exc:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "agent said %s", (HOSTILE,), (type(exc), exc,
                                                                                                   exc.__traceback__))
    text = formatter.format(record)
    assert not [c for c in text if not c.isprintable() and c != "\n"]
    assert text.split("\n")[0].startswith("ERROR agent said boom\\x00\\x07\\x1b[2J\\u202eforged\\r2026")
    assert text.split("\n")[-1].startswith("ValueError: boom\\x00")


class _Hostile(http.server.BaseHTTPRequestHandler):
    """An 'agent' whose every answer is a 500 full of control bytes."""

    def _answer(self) -> None:
        body = HOSTILE.encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.mark.fault("17. control bytes in the agent's answers")
def test_control_bytes_from_the_agent_are_escaped_in_the_listener_log(supervisord_factory, tmp_path, converged):
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Hostile)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    agent = ConsulAgent(tmp_path / "consul")
    agent.http_port = port  # the real agent comes up on the hostile one's address later
    try:
        sv = supervisord_factory("[program:app]\ncommand=sleep 300\n[consul:app]\n" + listener(agent))
        wait_for(lambda: "forged" in listener_log(sv), message="the agent's answer in the log")
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)
    raw = (sv.workdir / "listener.log").read_bytes()
    assert not [b for b in raw if b < 0x20 and b not in b"\n"], "raw control bytes in the log"
    assert "\u202e" not in raw.decode()
    assert "boom\\x00\\x07\\x1b[2J\\u202eforged 2026-01-01" in raw.decode()  # white space folded to one
    assert not [line for line in raw.decode().splitlines() if line.startswith("2026-01-01 00:00:00")]

    with agent:
        started = time.monotonic()
        assert sv.ctl("signal", "HUP", "consul").returncode == 0
        seconds = converge(agent, sv)
        converged(time.monotonic() - started, f"the hostile answer logged escaped (NUL, BEL, ESC, CR, a bidi "
                                              f"override), no raw control byte, no forged line; a real agent "
                                              f"then: converged in {seconds:.1f} s")
