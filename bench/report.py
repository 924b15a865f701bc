"""One row per figure: what was measured, beside its limit or baseline from the same run."""
from __future__ import annotations

import datetime
import json
import pathlib
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import version


@dataclass
class Row:
    benchmark: str  # e.g. "latency RUNNING -> passing"
    figure: str  # e.g. "median 4.1 ms, p99 9.0 ms"
    baseline: str  # the limit or the other approach, measured in the same run
    ratio: float | None  # figure / baseline where that means something (lower is better unless said)
    target: str  # the target, as text
    met: bool | None  # None: not judged


def table(rows: list[Row]) -> list[str]:
    lines = ["| benchmark | figure | baseline (same run) | ratio | target | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        lines.append(f"| {row.benchmark} | {row.figure} | {row.baseline} | {ratio} | {row.target} | {met} |")
    return lines


def machine() -> str:
    """The machine the figures came from, in one line."""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    cores = len([line for line in open("/proc/cpuinfo") if line.startswith("processor")])
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    consul = subprocess.run([_consul(), "version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return (f"{cpu}, {cores} cores, {mem_kib / 1024 / 1024:.0f} GiB; Linux {platform.release()}; "
            f"Python {platform.python_version()}; supervisor {version('supervisor')}; "
            f"py-consul {version('py-consul')}; {consul[0] if consul else 'consul ?'}")


def _consul() -> str:
    from tests.harness import consul_binary
    return consul_binary()


def dump(rows: list[Row], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump([asdict(r) for r in rows], f, indent=1)



BEGIN, END = "<!-- results: made by python -m bench --doc (bench/report.py) -->", "<!-- /results -->"


def load(path: str) -> list[Row]:
    with open(path, encoding="utf-8") as f:
        return [Row(**row) for row in json.load(f)]


def write_doc(path: str, rows: list[Row], runs: str) -> None:
    """The table of `rows` between the markers of the doc at `path`, with the machine and `runs` (when
    and how they were measured) above it; the rest of the doc stays as written."""
    doc = pathlib.Path(path)
    text = doc.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{path}: needs one line {BEGIN} and one {END}")
    before, _, rest = text.partition(BEGIN + "\n")
    _, _, after = rest.partition(END)
    body = "\n".join([f"Machine: {machine()}; {runs}.", "", *table(rows), ""])
    doc.write_text(f"{before}{BEGIN}\n{body}{END}{after}", encoding="utf-8")


if __name__ == "__main__":
    # python -m bench.report DOC RUN.json...: the rows of several runs (python -m bench --json) into DOC.
    doc, *runs = sys.argv[1:]
    write_doc(doc, [row for run in runs for row in load(run)],
              f"{len(runs)} run(s) of `python -m bench`, {datetime.date.today().isoformat()}")
