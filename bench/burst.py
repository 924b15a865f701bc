"""Burst convergence: N processes started at once (`numprocs`, the default
buffer_size=10): when supervisord has them all RUNNING, when Consul has them
all passing, and the ratio of the two, both counted from the start command.

supervisord's own log gives each RUNNING transition to the millisecond; the
agent is polled (keep-alive, every 20 ms) for the passing count.  The plot of
both counts over time goes to docs/burst-N.png.

Both topologies (bench/topology.py): `-dev`, and a server with a client
agent that supervisord's listener talks to (its plots: docs/burst-N-client.png);
the agent-alone limit is measured on a fresh one of the same topology.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import requests

from bench.report import Row
from bench.topology import TOPOLOGIES, Dev, Topology
from supervisor_consul import instance
from supervisor_consul.claim import Incarnation
from supervisor_consul.config import Configuration
from supervisor_consul.health import CRITICAL, PASSING
from supervisor_consul.sending import WORKERS
from supervisor_consul.spec import ServiceSpec
from tests.harness import ConsulAgent, Supervisord, listener, wait_for

SIZES = (100, 300, 1000)
QUICK_SIZES = (20,)
TARGET_RATIO = 1.10
DOCS = Path(__file__).resolve().parent.parent / "docs"
_RUNNING = re.compile(r"^(\S+ \S+) INFO success: (\S+) entered RUNNING state")


def stanza(agent: ConsulAgent, n: int) -> str:
    return f"""
[program:burst]
command=sleep 3600
process_name=%(program_name)s_%(process_num)04d
numprocs={n}
autostart=false
startsecs=1
redirect_stderr=true
stdout_logfile=NONE
[consul:burst]
name=burst
""" + listener(agent, log_level="info")


def _passing(session: requests.Session, agent: ConsulAgent) -> int:
    """Instances of `burst` with every check passing (however many checks each has)."""
    checks = session.get(f"http://{agent.http_addr}/v1/agent/checks", timeout=5).json()
    statuses: dict[str, set[str]] = {}
    for check in checks.values():
        if check["ServiceName"] == "burst":
            statuses.setdefault(check["ServiceID"], set()).add(check["Status"])
    return sum(1 for found in statuses.values() if found == {"passing"})


def one(n: int, workdir: Path, topology: Callable[[Path], Topology] = Dev) -> dict:
    with topology(workdir / "consul") as consul:
        agent = consul.agent
        sv = Supervisord(workdir / "supervisord", stanza(agent, n))
        # INFO still logs each RUNNING transition, which is what we time.
        sv.conf.write_text(sv.conf.read_text().replace("loglevel=debug", "loglevel=info"))
        try:
            sv.start()
            wait_for(lambda: sv.info("consul")["statename"] == "RUNNING", message="the listener RUNNING")
            session = requests.Session()
            samples: list[tuple[float, int]] = []
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    samples.append((time.time(), _passing(session, agent)))
                    done.wait(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            started = time.time()
            watcher.start()
            sv.rpc().supervisor.startProcessGroup("burst", False)
            wait_for(lambda: samples and samples[-1][1] == n, timeout=600, interval=0.05,
                     message=f"{n} passing")
            done.set()
            watcher.join()
            running = sorted(_running_times(sv.log_text()))
            assert len(running) == n, f"{len(running)} RUNNING lines, wanted {n}"
            all_passing = next(t for t, count in samples if count == n)
            lost = sv.log_text().count("event buffer overflowed")
            return {"n": n, "started": started, "running": [t - started for t in running],
                    "passing": [(t - started, c) for t, c in samples],
                    "all_running": running[-1] - started, "all_passing": all_passing - started, "dropped": lost}
        finally:
            sv.cleanup()


def agent_alone(n: int, workdir: Path, topology: Callable[[Path], Topology] = Dev) -> float:
    """Seconds a fresh agent takes for n registrations + TTL passes from a tight
    keep-alive loop: the limit on how fast any client can make n instances pass."""
    with topology(workdir / "consul-alone") as consul:
        session, base = requests.Session(), f"http://{consul.agent.http_addr}"
        started = time.perf_counter()
        for i in range(n):
            sid = f"burst-{i}"
            session.put(f"{base}/v1/agent/service/register", timeout=5, json={
                "Name": "burst", "ID": sid, "Check": {"CheckID": f"{sid}:process", "TTL": "15s",
                                                      "Status": "critical"}}).raise_for_status()
            session.put(f"{base}/v1/agent/check/pass/{sid}:process", params={"note": "RUNNING"},
                        timeout=5).raise_for_status()
        return time.perf_counter() - started


def agent_alone_aliased(n: int, workdir: Path, topology: Callable[[Path], Topology] = Dev,
                        threads: int = WORKERS) -> float:
    """The same for the registrations the listener makes while it holds its claim
    (each instance with its alias of the claim), sent as it sends them (`threads` at
    a time): the limit for this design, since every alias costs the agent a copy of
    all its checks."""
    spec = ServiceSpec(namespec="burst", group="burst", process="burst", name="burst")
    with topology(workdir / "consul-alone-aliased") as consul:
        base = f"http://{consul.agent.http_addr}"
        claim = instance.of_claim("benchburst00", "bench-host", Configuration("/bench.conf"),
                                  Incarnation("b", "1", "1", 1, 1), "10m", None)
        with requests.Session() as session:
            session.put(f"{base}/v1/agent/service/register", timeout=5,
                        json=claim.payload(PASSING)).raise_for_status()
        local = threading.local()

        def one(i: int) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            registration = instance.of(replace(spec, namespec=f"burst:{i}", process=str(i)), "benchburst00",
                                       "bench-host", claimed=True)
            local.session.put(f"{base}/v1/agent/service/register", timeout=10,
                              json=registration.payload(CRITICAL)).raise_for_status()
            local.session.put(f"{base}/v1/agent/check/pass/{registration.ttl_check_id}",
                              params={"note": "RUNNING"}, timeout=10).raise_for_status()

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(n)))
        return time.perf_counter() - started


def _running_times(log: str) -> list[float]:
    times = []
    for line in log.splitlines():
        match = _RUNNING.match(line)
        if match and match[2].startswith("burst_"):
            times.append(datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def plot(result: dict, path: Path, where: str = "-dev") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["n"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.step(result["running"], range(1, n + 1), where="post", label="supervisord: RUNNING")
    ax.step([t for t, _ in result["passing"]], [c for _, c in result["passing"]], where="post",
            label="Consul: passing")
    ax.set_xlabel("seconds since startProcessGroup")
    ax.set_ylabel("processes")
    ax.set_title(f"Burst of {n} processes, {where}, buffer_size=10 ({result['dropped']} events dropped)",
                 fontsize=10)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(quick: bool = False) -> list[Row]:
    rows = []
    for where, topology in TOPOLOGIES.items():
        for n in QUICK_SIZES if quick else SIZES:
            print(f"bench: burst N={n}, {where} ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix=f"bench-burst-{n}-") as tmp:
                result = one(n, Path(tmp), topology)
                alone = agent_alone(n, Path(tmp), topology)
                aliased = agent_alone_aliased(n, Path(tmp), topology)
                if quick:  # the plot's code runs too, into the directory about to go
                    plot(result, Path(tmp) / "burst.png", where)
            if not quick:
                DOCS.mkdir(exist_ok=True)
                plot(result, DOCS / (f"burst-{n}.png" if where == "-dev" else f"burst-{n}-client.png"), where)
            rows.append(row(n, where, result, alone, aliased))
    return rows


def row(n: int, where: str, result: dict, alone: float, aliased: float) -> Row:
    first = min(result["running"])
    # No client can beat this: the agent's own time for n instances, from the first RUNNING.
    best = max(result["all_running"], first + alone)
    best_aliased = max(result["all_running"], first + aliased)
    ratio = result["all_passing"] / best
    return Row(f"burst N={n}, {where}: all passing in Consul", f"{result['all_passing']:.2f} s",
               f"all RUNNING in supervisord {result['all_running']:.2f} s ({result['dropped']} events "
               f"dropped); the agent alone needs {alone:.2f} s for {n} plain register + pass, so no client "
               f"finishes before {best:.2f} s; for the registrations with the alias, {WORKERS} at a time, "
               f"{aliased:.2f} s, so {best_aliased:.2f} s (ours: {result['all_passing'] / best_aliased:.2f}x that)",
               ratio, f"ratio <= {TARGET_RATIO:.2f}" if n == 1000 else "-",
               ratio <= TARGET_RATIO if n == 1000 else None)
