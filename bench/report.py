"""One row per figure: what was measured, beside its limit or baseline from the same run."""
from __future__ import annotations

import json
import platform
import subprocess
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

