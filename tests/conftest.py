"""Shared pytest fixtures: a real Consul agent and real supervisord instances,
and the fault suite's report (issue 3): one row per `@pytest.mark.fault` test.

The report is printed at the end of the run as a Markdown table; with
FAULT_REPORT=PATH it is also written as JSON, and with FAULT_DOC=PATH (`make
faults` sets docs/reliability.md) the table between that file's two marker
lines is replaced by this run's."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.harness import ConsulAgent, Supervisord

_fault_rows: list[dict] = []
FAULT_DOC_BEGIN = "<!-- faults: made by `make faults` (tests/conftest.py, FAULT_DOC) -->"
FAULT_DOC_END = "<!-- /faults -->"


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory):
    """One real `consul agent -dev` for the whole test session."""
    agent = ConsulAgent(tmp_path_factory.mktemp("consul"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def supervisord_factory(tmp_path, request):
    """make(config_text, env=None, **Supervisord options) -> a started Supervisord in its own dir under tmp_path.

    Every one created is cleaned up at teardown, even if the test failed; a failed
    test's report ends with the tail of each one's log (CI keeps no files).
    """
    created: list[Supervisord] = []
    request.node.supervisords = created

    def make(config_text: str, env: dict | None = None, **options) -> Supervisord:
        sv = Supervisord(tmp_path / f"sv{len(created)}", config_text, **options)
        created.append(sv)
        sv.start(env=env)
        return sv

    try:
        yield make
    finally:
        for sv in reversed(created):
            sv.cleanup()


@pytest.fixture
def converged(request):
    """converged(seconds, detail="") records a fault test's figure for the report."""
    def record(seconds: float | None, detail: str = "") -> None:
        request.node.user_properties.append(("converged", seconds))
        if detail:
            request.node.user_properties.append(("detail", detail))
    return record


LOG_TAIL_LINES = 80
# supervisord's debug chatter about the event protocol itself: it would crowd out what happened.
_PROTOCOL_NOISE = re.compile(r"DEBG 'consul' std(out|err) output:$|^b'(READY|RESULT)|DEBG consul: |"
                             r"DEBG (event \d+ sent|rebuffering event)|^$")


def log_tail(path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a supervisord log (the listener's stderr is in it), without protocol chatter."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({exc})"
    kept = [line for line in text.splitlines() if not _PROTOCOL_NOISE.search(line)]
    return "\n".join(kept[-lines:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for sv in getattr(item, "supervisords", ()):
            report.sections.append((f"{sv.logfile} (last {LOG_TAIL_LINES} lines)", log_tail(sv.logfile)))
    marker = item.get_closest_marker("fault")
    if marker is None or not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    properties = dict(item.user_properties)
    _fault_rows.append({"fault": marker.args[0], "result": report.outcome,
                        "converged": properties.get("converged"), "detail": properties.get("detail", ""),
                        "test": item.nodeid, "duration": round(report.duration, 1)})


def pytest_terminal_summary(terminalreporter):
    if not _fault_rows:
        return
    rows = sorted(_fault_rows, key=lambda r: _fault_order(r["fault"]))
    terminalreporter.section("fault suite")
    for line in fault_table(rows):
        terminalreporter.write_line(line)
    path = os.environ.get("FAULT_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    doc = os.environ.get("FAULT_DOC")
    if doc:
        with open(doc, encoding="utf-8") as f:
            text = f.read()
        with open(doc, "w", encoding="utf-8") as f:
            f.write(with_fault_table(text, [fault_stamp(), ""] + fault_table(rows)))
        terminalreporter.write_line(f"fault table written to {doc}")


def _fault_order(name: str) -> tuple[int, str]:
    number = re.match(r"\d*", name)[0]  # "4a. ..." sorts after "4. ..." and before "5. ..."
    return (int(number) if number else 99, name)


def fault_table(rows: list[dict]) -> list[str]:
    """A Markdown table: fault, result, convergence time, what was measured."""
    lines = ["| fault | result | converged in | detail |", "|---|---|---|---|"]
    for row in rows:
        seconds = row["converged"]
        took = "-" if seconds is None else f"{seconds:.1f} s"
        lines.append(f"| {row['fault']} | {row['result']} | {took} | {row['detail']} |")
    return lines


def fault_stamp() -> str:
    """The line above the table in FAULT_DOC: when and with which soak the run was."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"From the `make faults` run of {when} (SOAK_SECONDS={os.environ.get('SOAK_SECONDS', 'unset')})."


def with_fault_table(text: str, table: list[str]) -> str:
    """text with the lines between FAULT_DOC_BEGIN and FAULT_DOC_END replaced by table."""
    before, begin, rest = text.partition(FAULT_DOC_BEGIN + "\n")
    _, end, after = rest.partition(FAULT_DOC_END)
    if not begin or not end:
        raise ValueError(f"FAULT_DOC: no {FAULT_DOC_BEGIN!r} ... {FAULT_DOC_END!r} lines to write the table between")
    return before + begin + "\n".join(table) + "\n" + end + after
