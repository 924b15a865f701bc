"""Footprint (issue 4): the listener at 1000 instances in steady state, beside one wrapper per service.

Both topologies (bench/topology.py): `-dev`, and a server with a client agent
that supervisord and the wrappers talk to; each row says which, and its
baseline ran on the same one.

The listener: a real supervisord runs `sleep` as one program with
numprocs=1000 (`--quick`: 50, with ttl=3s so steady state comes sooner) and
the listener as its [eventlistener:consul];
once the agent shows every instance passing and then, for a whole heartbeat period, nothing but heartbeats,
a window of 60 s (`--quick`: 5 s) measures
- its RSS (VmRSS, sampled each second, the largest) and PSS (smaps_rollup), from /proc;
- its CPU: utime + stime from /proc/PID/stat over the window, as % of one core;
- its requests to the agent (the agent at INFO; bench/instrument logs them): heartbeats
  (TTL passes) per second beside the limit instances ÷ (ttl/3), the time
  between two heartbeats of one instance, and every other request, each of
  which in steady state would be a request that changes nothing.

The wrappers: bench/wrapper.py (stdlib only: the lightest Python wrapper),
one per service with its own `sleep`, a tenth as many, measured over the same
window and multiplied by ten.  Their RSS sum counts the interpreter's shared
pages once per process; PSS shares them out, so it is the fairer total.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench import requestlog
from bench.report import Row
from bench.topology import TOPOLOGIES
from tests.harness import ConsulAgent, Supervisord, descendants, pid_alive, wait_for

TTL_SECONDS = 15  # the default ttl
QUICK_TTL_SECONDS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRAPPER = pathlib.Path(__file__).with_name("wrapper.py")
SCALE = 10  # wrappers measured: instances ÷ SCALE


def steady_after(ttl: float) -> float:
    """Steady state: a whole heartbeat period (ttl/3, plus the sync loop's 1 s wake-up) of nothing but passes."""
    return ttl / 3 + 1.5


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS  # fields 14 and 15: utime, stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def conf(instances: int, http_addr: str, listener_log: pathlib.Path, request_log: pathlib.Path,
         program: str = "svc", keys: str = "", listen_args: str = "") -> str:
    """The listener finds this file itself, from supervisord's command line.  `keys`: more
    lines of the [consul:PROGRAM] section; `listen_args`: more options of `listen`."""
    command = f"{sys.executable} -m supervisor_consul listen --http-addr {http_addr} {listen_args}".rstrip()
    return (
        f"[program:{program}]\n"
        "command=sleep 100000\n"
        "process_name=%(program_name)s_%(process_num)04d\n"
        f"numprocs={instances}\n"
        "startsecs=0\n"
        "stopsignal=KILL\n"
        "stdout_logfile=NONE\n"
        "stderr_logfile=NONE\n"
        "\n"
        f"[consul:{program}]\n"
        "port=2%(process_num)04d\n"
        f"{keys}\n"
        "\n"
        "[eventlistener:consul]\n"
        f"command={command}\n"
        "events=PROCESS_STATE,PROCESS_GROUP,TICK_5\n"
        "buffer_size=1000\n"
        "priority=-2\n"
        "autorestart=true\n"
        f'environment=PYTHONPATH="{requestlog.INSTRUMENT}",BENCH_REQUEST_LOG="{request_log}"\n'
        "stdout_logfile=NONE\n"
        f"stderr_logfile={listener_log}\n"
    )


def passing(agent: ConsulAgent, name: str) -> int:
    """How many instances of the service `name` the agent holds with every check passing
    (however many checks each has: a TTL check, an alias of the claim, ...)."""
    statuses: dict[str, set[str]] = {}
    for check in agent.checks().values():
        if check.get("ServiceName") == name:
            statuses.setdefault(check["ServiceID"], set()).add(check["Status"])
    return sum(1 for found in statuses.values() if found == {"passing"})


def settled(log: requestlog.RequestLog, offset: int, seconds: float) -> bool:
    """True once the agent has logged no write but TTL passes for `seconds`: steady state.  Reads
    (the listener's look at its claim) and writes the agent refused (the claim asked for again
    under a token that may not have it) change nothing, so they do not count."""
    requests = log.requests(offset)
    others = [r.at for r in requests if r.method != "GET" and r.kind != "PUT pass" and r.status < 400]
    return bool(requests) and time.time() - max(others, default=0.0) >= seconds


def window(pids: list[int], seconds: float, log: requestlog.RequestLog) -> dict:
    """Measure the processes and the agent's requests over `seconds`."""
    offset = log.offset()
    cpu = sum(cpu_seconds(p) for p in pids)
    started = time.monotonic()
    largest = 0
    while True:
        largest = max(largest, sum(rss_kib(p) for p in pids))
        left = started + seconds - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))  # the window itself
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(p) for p in pids) - cpu
    return {"seconds": elapsed, "cpu": cpu / elapsed, "rss_kib": largest,
            "pss_kib": sum(pss_kib(p) for p in pids), "requests": log.requests(offset)}


def heartbeat_times(requests: list[requestlog.Request]) -> dict[str, list[float]]:
    """When each check was passed, by check."""
    times: dict[str, list[float]] = {}
    for request in requests:
        if request.kind == "PUT pass":
            times.setdefault(request.url.split("?", 1)[0], []).append(request.at)
    return times


def heartbeat_gaps(requests: list[requestlog.Request]) -> list[float]:
    return [b - a for ts in heartbeat_times(requests).values() for a, b in zip(ts, ts[1:])]


def heartbeat_rate(requests: list[requestlog.Request], seconds: float) -> float:
    """The long-run passes/s: every check's own rate (passes ÷ the span between its first and
    last), summed; a check passed once in the window counts once per window.  Heartbeats come in
    bursts (instances registered within a moment), so a window's plain count depends on how many
    bursts it caught."""
    return sum((len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else len(ts) / seconds
               for ts in heartbeat_times(requests).values())


def measure_listener(instances: int, seconds: float, workdir: pathlib.Path, agent: ConsulAgent,
                     ttl: float = TTL_SECONDS) -> dict:
    log = requestlog.RequestLog(workdir / "listener-requests.log")
    listener_log = workdir / "listener.log"
    offset = log.offset()
    supervisord = Supervisord(workdir / "supervisord", conf(instances, agent.http_addr, listener_log, log.path,
                                                            keys=f"ttl={ttl:g}s"))
    try:
        supervisord.start()
        wait_for(lambda: passing(agent, "svc") == instances, timeout=60 + instances / 5,
                 interval=0.5, message=f"{instances} instances passing")
        pid = supervisord.info("consul")["pid"]
        wait_for(lambda: settled(log, offset, steady_after(ttl)), timeout=120, interval=0.5,
                 message="steady state")
        result = window([pid], seconds, log)
        starts = listener_log.read_text(errors="replace").count(" listening; Consul agent ")
        if starts != 1:
            raise RuntimeError(f"the listener started {starts} times; see {listener_log}")
        return result
    finally:
        supervisord.cleanup()


def measure_wrappers(count: int, seconds: float, workdir: pathlib.Path, agent: ConsulAgent,
                     ttl: float = TTL_SECONDS) -> dict:
    log = requestlog.RequestLog(workdir / "wrapper-requests.log")
    offset = log.offset()
    wrappers: list[subprocess.Popen] = []
    children: dict[int, int] = {}
    try:
        for i in range(count):
            wrappers.append(subprocess.Popen(
                [sys.executable, str(WRAPPER), agent.http_addr, f"wrapper-{i:04d}", "wrapped", str(30000 + i),
                 f"{ttl:g}", "--", "sleep", "100000"], stdin=subprocess.DEVNULL,
                env={**os.environ, "BENCH_REQUEST_LOG": str(log.path)}))
        wait_for(lambda: passing(agent, "wrapped") == count, timeout=60 + count / 2, interval=0.5,
                 message=f"{count} wrappers passing")
        for w in wrappers:
            children.update((child, w.pid) for child in descendants(w.pid))
        pids = [w.pid for w in wrappers]
        wait_for(lambda: settled(log, offset, steady_after(ttl)), timeout=120, interval=0.5,
                 message="steady state")
        return window(pids, seconds, log)
    finally:
        for w in wrappers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)  # it stops its child and deregisters
        for w in wrappers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(timeout=10)
        for child in children:
            if pid_alive(child):
                os.kill(child, signal.SIGKILL)


def run(quick: bool) -> list[Row]:
    instances, seconds = (50, 5.0) if quick else (1000, 60.0)
    ttl = QUICK_TTL_SECONDS if quick else TTL_SECONDS
    rows: list[Row] = []
    for name, topology in TOPOLOGIES.items():
        print(f"bench: footprint on {name} ...", file=sys.stderr, flush=True)
        workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-footprint-"))
        try:
            with topology(workdir / "consul") as consul:
                ours = measure_listener(instances, seconds, workdir, consul.agent, ttl)
                theirs = measure_wrappers(instances // SCALE, seconds, workdir, consul.agent, ttl)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows.extend(rows_for(name, instances, ttl, ours, theirs))
    return rows


def rows_for(topology: str, instances: int, ttl: float, ours: dict, theirs: dict) -> list[Row]:
    limit = instances / (ttl / 3)
    kinds = requestlog.counts(ours["requests"])
    heartbeats = kinds.get("PUT pass", 0) / ours["seconds"]
    wasted = {k: n for k, n in kinds.items() if k.startswith("PUT") and k != "PUT pass"}
    reads = {k: n for k, n in kinds.items() if k.startswith("GET")}
    gaps = heartbeat_gaps(ours["requests"])
    gap_text = (f"{min(gaps):.2f}/{statistics.median(gaps):.2f}/{max(gaps):.2f} s" if gaps else "none")
    rate = heartbeat_rate(ours["requests"], ours["seconds"])
    their_kinds = requestlog.counts(theirs["requests"])
    their_heartbeats = their_kinds.get("PUT pass", 0) / theirs["seconds"] * SCALE
    rss_mb, pss_mb = ours["rss_kib"] / 1024, ours["pss_kib"] / 1024
    their_rss, their_pss = theirs["rss_kib"] / 1024 * SCALE, theirs["pss_kib"] / 1024 * SCALE
    measured = f"{instances // SCALE} measured ×{SCALE}"
    where = f"{instances} instances, {topology}"
    return [
        Row(f"footprint: listener memory, {where}",
            f"RSS {rss_mb:.1f} MB (PSS {pss_mb:.1f} MB)",
            f"{instances} wrappers ({measured}): RSS {their_rss:.0f} MB, PSS {their_pss:.0f} MB",
            pss_mb / their_pss, "RSS ≤ 50 MB", rss_mb <= 50),  # the ratio: PSS to PSS, shared pages shared out
        Row(f"footprint: listener CPU, {where}",
            f"{ours['cpu']:.1%} of a core over {ours['seconds']:.0f} s",
            f"{instances} wrappers ({measured}): {theirs['cpu'] * SCALE:.1%} of a core",
            ours["cpu"] / (theirs["cpu"] * SCALE) if theirs["cpu"] else None, "-", None),
        Row(f"footprint: heartbeat requests, {where}",
            f"{rate:.1f} passes/s (each check's own rate, summed; {heartbeats:.1f}/s counted in the window); "
            f"one check's heartbeats {gap_text} apart (min/median/max); "
            f"other writes: {wasted or 'none'}; reads: {reads or 'none'}",
            f"limit {instances} ÷ ({ttl:g} s / 3) = {limit:.0f}/s; wrappers ({measured}): "
            f"{their_heartbeats:.1f}/s",
            rate / limit, "≤ instances ÷ (ttl/3); no write that changes nothing",
            # Gaps between answers: a slow answer (a busy agent) shortens the next gap by its own wait.
            min(gaps, default=ttl) >= ttl / 3 * 0.9 and not wasted),
    ]


if __name__ == "__main__":
    from bench.report import table
    print("\n".join(table(run(quick="--quick" in sys.argv))))
