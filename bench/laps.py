"""A crash loop's pace: how often supervisord respawns a program with
`startsecs=0` that exits at once, beside the same loop under no listener.

supervisord reaps a dead child, and respawns it, only when its poll wakes:
the child's pipes closing, its one-second timeout, or a write by a listener.
A listener's write that lands just after the death (an answer sent a few ms
late, a log line about it) wakes it at once, and the next lap begins.  The
rows show that on a childutils listener that answers at once or late, and on
this listener at `info` and at `debug` (a log line per death).  Figures, not a
verdict: the flapping rule keeps such a loop critical at about one agent write
a second whatever its pace (fault 15).
"""
from __future__ import annotations

import pathlib
import sys
import tempfile
import time

from bench.report import Row
from tests.harness import ConsulAgent, Supervisord, listener, wait_for

ANSWERING = pathlib.Path(__file__).with_name("answering.py")
LOOP = """
[program:loop]
command=sh -c 'exit 1'
startsecs=0
autorestart=true
stdout_logfile=NONE
stderr_logfile=NONE
[consul:loop]
name=laps
"""


def _childutils(delay: float) -> str:
    return (f"\n[eventlistener:answering]\ncommand={sys.executable} {ANSWERING} {delay}\nevents=PROCESS_STATE\n"
            "priority=-2\nstderr_logfile=%(here)s/answering.log\n")


def _exits(sv: Supervisord) -> int:
    return sv.logfile.read_text(errors="replace").count("exited: loop ")


def laps(workdir: pathlib.Path, stanza: str, seconds: float) -> float:
    """Exits a second over `seconds`, once the loop has begun."""
    sv = Supervisord(workdir, LOOP + stanza)
    sv.start()
    try:
        wait_for(lambda: _exits(sv) >= 2, timeout=30, message="the loop begun")
        before = _exits(sv)
        time.sleep(seconds)  # the window is the measurement, not a wait for a condition
        return (_exits(sv) - before) / seconds
    finally:
        sv.stop()


def run(quick: bool) -> list[Row]:
    seconds = 3.0 if quick else 15.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-laps-") as tmp, ConsulAgent(pathlib.Path(tmp) / "consul") as agent:
        base = pathlib.Path(tmp)
        alone = laps(base / "none", "", seconds)
        variants = [
            ("a childutils listener, answering at once", _childutils(0.0)),
            ("a childutils listener, answering 2 ms late", _childutils(0.002)),
            ("a childutils listener, answering 10 ms late", _childutils(0.010)),
            ("this listener, --log-level info (the README's stanza)", listener(agent, log_level="info")),
            ("this listener, --log-level debug", listener(agent, log_level="debug")),
        ]
        baseline = f"no listener: {alone:.1f} exits/s"
        for i, (what, stanza) in enumerate(variants):
            pace = laps(base / f"v{i}", stanza, seconds)
            rows.append(Row(f"crash loop pace, startsecs=0, exit at once: {what} ({seconds:g} s)",
                            f"{pace:.1f} exits/s", baseline, pace / alone if alone else None, "-", None))
    return rows


if __name__ == "__main__":
    from bench.report import table
    print("\n".join(table(run(quick="--quick" in sys.argv))))
