"""Steady state, both designs: what the listener writes to its agent, and what
reaches the servers' raft log, while nothing changes.

The listener holds a claim (the service `supervisord`, claim.py), whose TTL
check it heartbeats; with it, the instances need (almost) no heartbeats of
their own.  When its ACL token may not write `supervisord`, it goes on
without the claim: every instance's TTL check is passed every ttl/3.  Both
run with the same code, on the production topology (bench/topology.py: one
server, one client agent, both with `default_policy = "deny"`); only the
listener's token differs:

* claim: `service_prefix "" { policy = "write" }` (and node read);
* fallback: the same plus `service "supervisord" { policy = "read" }` (an
  exact rule wins over a prefix in Consul).

For N in 100, 300, 1000 (`--quick`: 10, with ttl=3s and a short window) a
supervisord with one program of numprocs=N and the listener (its requests
logged by bench/instrument, as footprint does) runs until the agent has
every instance passing, the server's catalog has them all passing too
(the client's changes have all been committed), and the listener has
written nothing but TTL passes for a heartbeat period; then a window of
60 s measures:

- the listener's writes (PUTs) to the agent per second, by kind, and its
  CPU (utime + stime) as % of a core;
- the server's raft commit index (`GET /v1/agent/self`:
  Stats.raft.commit_index) at the start and the end: what the steady state
  costs the cluster, beside a window as long on the same cluster once the
  last supervisord is gone and its services with it (Consul's own writes:
  coordinates, ...; taken last, since a cluster just started writes more).

The claim rows' baseline is the fallback at the same N, from the same run.
The plot docs/writes-per-second.png (in --quick: into the run's temporary
directory, then removed) has writes/s over instances, one line per design.
"""
from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from bench import footprint, requestlog
from bench.report import Row
from bench.topology import Production
from tests.harness import Supervisord, wait_for

SIZES = (100, 300, 1000)
QUICK_SIZES = (10,)
WINDOW, QUICK_WINDOW = 60.0, 6.0
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
WRITE_ALL = 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }'
DESIGNS = {  # design -> the listener's ACL policy
    "claim": WRITE_ALL,
    "fallback (no claim)": WRITE_ALL + '\nservice "supervisord" { policy = "read" }',
}


@dataclass
class Steady:
    design: str
    instances: int
    seconds: float
    cpu: float  # fraction of one core
    writes: dict[str, int]  # `PUT pass` (status 200), `PUT register (403)`, ... in the window
    commits: int  # raft commit index growth on the server over the window

    @property
    def writes_per_second(self) -> float:
        return sum(self.writes.values()) / self.seconds


def _writes(requests: list[requestlog.Request]) -> dict[str, int]:
    found: dict[str, int] = {}
    for request in requests:
        if request.method != "GET":
            kind = request.kind if request.status < 400 else f"{request.kind} ({request.status})"
            found[kind] = found.get(kind, 0) + 1
    return dict(sorted(found.items()))


def _catalog_passing(consul: Production, name: str) -> int:
    return len(consul.server._get(f"/v1/health/service/{name}?passing"))


def _clear(consul: Production) -> None:
    """Leaves no instance or claim of a run behind: the next run's window would see them expire."""
    for service_id in consul.agent.services():
        if service_id.startswith("supervisord:"):
            consul.agent.request("PUT", f"/v1/agent/service/deregister/{service_id}")
    wait_for(lambda: set(consul.server._get("/v1/catalog/services")) == {"consul"}, timeout=60, interval=0.2,
             message="the catalog without the last run's services")


def measure(consul: Production, design: str, instances: int, seconds: float, ttl: float,
            workdir: pathlib.Path) -> Steady:
    program = f"steady{instances}{'c' if design == 'claim' else 'f'}"
    workdir.mkdir(parents=True)
    token_file = workdir / "consul.token"
    token_file.write_text(consul.token(f"bench-{design.split()[0]}") + "\n")
    log = requestlog.RequestLog(workdir / "listener-requests.log")
    text = footprint.conf(instances, consul.agent.http_addr, workdir / "listener.log", log.path, program=program,
                          keys=f"ttl={ttl:g}s", listen_args=f"--token-file {token_file}")
    sv = Supervisord(workdir / "supervisord", text)
    try:
        sv.start()
        wait_for(lambda: footprint.passing(consul.agent, program) == instances, timeout=60 + instances / 5,
                 interval=0.5, message=f"{instances} instances passing")
        wait_for(lambda: _catalog_passing(consul, program) == instances, timeout=60, interval=0.5,
                 message=f"{instances} instances passing in the server's catalog")
        wait_for(lambda: footprint.settled(log, 0, footprint.steady_after(ttl)), timeout=120, interval=0.5,
                 message="steady state")
        claimed = any(s["Service"] == "supervisord" for s in consul.agent.services().values())
        if claimed != (design == "claim"):
            raise RuntimeError(f"design {design}, yet the claim is {'' if claimed else 'not '}registered; "
                               f"see {workdir / 'listener.log'}")
        pid = sv.info("consul")["pid"]
        before = consul.commit_index()
        result = footprint.window([pid], seconds, log)
        commits = consul.commit_index() - before
        return Steady(design, instances, result["seconds"], result["cpu"], _writes(result["requests"]), commits)
    finally:
        sv.cleanup()
        _clear(consul)


IDLE_WINDOWS = 3  # Consul's own writes (coordinates, autopilot) come in bursts: the most of several windows


def idle(consul: Production, seconds: float) -> int:
    """The server's commit index growth over `seconds` with nothing of ours running:
    the most over IDLE_WINDOWS windows, since one window may miss a burst of Consul's own."""
    growth = []
    for _ in range(IDLE_WINDOWS):
        before = consul.commit_index()
        time.sleep(seconds)  # the window itself
        growth.append(consul.commit_index() - before)
    return max(growth)


def plot(results: list[Steady], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for design in DESIGNS:
        mine = sorted((r.instances, r.writes_per_second) for r in results if r.design == design)
        ax.plot([n for n, _ in mine], [w for _, w in mine], marker="o", label=design)
    sizes = sorted({r.instances for r in results})
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[str(n) for n in sizes])
    if min(r.writes_per_second for r in results) > 0:
        ax.set_yscale("log")
    else:  # a design that writes nothing at all: linear near 0, logarithmic above
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("instances")
    ax.set_ylabel("listener's writes to the agent per second")
    ax.set_title("Steady state: writes/s against instances (server + client, ACLs)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rows_for(results: list[Steady], ttl: float, baseline: int, window: float) -> list[Row]:
    rows = []
    fallback = {r.instances: r for r in results if r.design != "claim"}
    for r in results:
        figure = (f"{r.writes_per_second:.2f} writes/s ({r.writes or 'none'}); listener CPU {r.cpu:.1%} of a core; "
                  f"raft commit index +{r.commits} over {r.seconds:.0f} s")
        other = fallback.get(r.instances)
        if r.design == "claim" and other is not None:
            base = f"fallback (no claim), same N: {other.writes_per_second:.2f} writes/s, CPU {other.cpu:.1%}"
            ratio = r.writes_per_second / other.writes_per_second if other.writes_per_second else None
        else:
            base = f"every instance every ttl/3: {r.instances} ÷ ({ttl:g} s / 3) = {r.instances / (ttl / 3):.0f}/s"
            ratio = None
        rows.append(Row(f"steady writes/s, {r.instances} instances, {r.design}", figure, base, ratio, "-", None))
    largest = max(r.instances for r in results)
    for r in results:
        if r.instances == largest:
            rows.append(Row(f"raft commit index growth on the server, {window:.0f} s of steady state, "
                            f"{r.instances} instances, {r.design}", f"+{r.commits} entries",
                            f"the same cluster without supervisord, {window:.0f} s "
                            f"(the most of {IDLE_WINDOWS}): +{baseline}",
                            None, "0 beyond Consul's own", r.commits <= baseline))
    return rows


def run(quick: bool) -> list[Row]:
    sizes, seconds, ttl = (QUICK_SIZES, QUICK_WINDOW, 3.0) if quick else (SIZES, WINDOW, 15.0)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-steady-"))
    results: list[Steady] = []
    try:
        with Production(workdir / "consul", acl=True) as consul:
            for design, rules in DESIGNS.items():
                consul.policy(f"bench-{design.split()[0]}", rules)
            for design in DESIGNS:
                for n in sizes:
                    print(f"bench: steady {n} instances, {design} ...", file=sys.stderr, flush=True)
                    results.append(measure(consul, design, n, seconds, ttl, workdir / f"{design.split()[0]}-{n}"))
            print("bench: steady, Consul alone ...", file=sys.stderr, flush=True)
            baseline = idle(consul, seconds)  # last: a cluster just started writes more of its own
        if quick:
            plot(results, workdir / "writes-per-second.png")
        else:
            DOCS.mkdir(exist_ok=True)
            plot(results, DOCS / "writes-per-second.png")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows_for(results, ttl, baseline, seconds)


if __name__ == "__main__":
    from bench.report import table
    print("\n".join(table(run(quick="--quick" in sys.argv))))
