"""The metrics endpoint (`listen --metrics-addr`): the metrics the loops update (with
the fakes of test_sync.py), the claim that carries the endpoint, the option's
errors, and a real Prometheus that finds the endpoint through Consul and scrapes it."""
from __future__ import annotations

import http.server
import io
import json
import platform
import socket
import sys
import threading
import urllib.request

import pytest
from prometheus_client import generate_latest

from supervisor_consul import claim, instance
from supervisor_consul.agent import ConsulError
from supervisor_consul.config import Configuration
from supervisor_consul.events import ProcessStateChange
from supervisor_consul.health import PASSING
from supervisor_consul.inbox import Inbox
from supervisor_consul.listener import Listener
from supervisor_consul.metrics import Endpoint, Kind, Metrics, Result, parse_endpoint
from supervisor_consul.sync import Sync
from tests.harness import LOOPBACK, ConsulAgent, free_port, free_port_prefix, listener, run_cli, wait_for
from tests.prometheus import Prometheus, prometheus_binary, sample_config
from tests.test_protocol import envelope, stream
from tests.test_sync import CONFIGFILE, HOST, ME, OWNER, World, service, sid

P = "supervisor_consul_"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"{P}{name}", labels)


def operations(metrics: Metrics) -> dict[tuple[str, str], float]:
    """The operations counted, by (kind, result), zeros left out."""
    counted = {(kind.value, result.value): sample(metrics, "operations_total", kind=kind.value, result=result.value)
               for kind in Kind for result in Result}
    return {key: value for key, value in counted.items() if value}


@pytest.fixture
def world() -> World:
    w = World(service("web"), service("api"))
    w.supervisor.set("web", "RUNNING", pid=42)
    w.supervisor.set("api", "RUNNING", pid=43)
    return w


# -- what the sync loop updates ---------------------------------------------------------


def test_a_first_round_counts_its_registrations_and_is_in_step(world):
    metrics = world.sync.metrics
    world.monotonic.advance(0)  # the fakes' clocks stand still: a reconcile takes 0 s here
    world.deliver()
    assert operations(metrics) == {("register", "ok"): 2}
    assert sample(metrics, "instances_owned") == 2
    assert sample(metrics, "agent_reachable") == 1
    assert sample(metrics, "last_sync_success_timestamp_seconds") == world.wall()
    assert sample(metrics, "reconcile_duration_seconds_count") == 1
    assert sample(metrics, "reconcile_duration_seconds_bucket", le="0.01") == 1


def test_every_kind_and_result_is_there_from_the_start():
    # rate() and increase() need a series before its first increment to count that increment.
    text = generate_latest(Metrics().registry).decode()
    for kind in ("register", "update_ttl", "deregister"):
        for result in ("ok", "refused", "lost", "unreachable"):
            assert f'{P}operations_total{{kind="{kind}",result="{result}"}} 0.0' in text
    assert f"# TYPE {P}reconcile_duration_seconds histogram" in text
    assert f"# TYPE {P}last_sync_success_timestamp_seconds gauge" in text
    assert f"{P}last_sync_success_timestamp_seconds 0.0" in text  # never: an age alert fires at once


def test_an_unreachable_agent_is_0_keeps_the_last_count_and_stops_the_sync_clock(world):
    metrics = world.sync.metrics
    world.supervisor.set("api", "STOPPED")
    world.deliver()
    synced = world.wall()
    assert sample(metrics, "instances_owned") == 1
    world.agent.unreachable = True
    world.supervisor.set("api", "RUNNING", pid=43)
    world.wall.advance(1)
    world.monotonic.advance(1)  # the claim not due for a look: the registration meets the agent gone
    world.deliver(ProcessStateChange("api", "RUNNING", "STARTING", pid=43))
    assert operations(metrics) == {("register", "ok"): 1, ("register", "unreachable"): 1}
    assert sample(metrics, "agent_reachable") == 0
    assert sample(metrics, "instances_owned") == 1  # as last known: whether it is still so is unknown
    assert sample(metrics, "last_sync_success_timestamp_seconds") == synced

    world.agent.unreachable = False
    world.wall.advance(10)
    world.monotonic.advance(10)  # past the backoff
    world.deliver()
    assert operations(metrics) == {("register", "ok"): 2, ("register", "unreachable"): 1}
    assert sample(metrics, "agent_reachable") == 1
    assert sample(metrics, "instances_owned") == 2
    assert sample(metrics, "last_sync_success_timestamp_seconds") == world.wall()
    assert sample(metrics, "reconcile_duration_seconds_count") == 2  # the first and the one after the outage


def test_a_refused_operation_is_counted_and_holds_the_sync_clock_until_it_is_accepted(world):
    metrics = world.sync.metrics
    register = world.agent.register

    def refuse_api(registration, *args, **kwargs):
        if registration.service_id == sid("api"):
            raise ConsulError("refused PUT /v1/agent/service/register: 403 Permission denied", status=403)
        return register(registration, *args, **kwargs)

    world.agent.register = refuse_api
    world.deliver()
    assert operations(metrics) == {("register", "ok"): 1, ("register", "refused"): 1}
    assert sample(metrics, "agent_reachable") == 1  # it answered
    assert sample(metrics, "instances_owned") == 1
    assert sample(metrics, "last_sync_success_timestamp_seconds") == 0

    world.agent.register = register
    world.wall.advance(31)
    world.monotonic.advance(31)  # REFUSED_RETRY
    world.deliver()
    assert operations(metrics)[("register", "ok")] == 2
    assert sample(metrics, "last_sync_success_timestamp_seconds") == world.wall()


def test_a_heartbeat_for_a_check_the_agent_lost_is_counted_lost():
    world = World(service("web"), claimed=False)  # without the claim every instance beats its own TTL
    world.supervisor.set("web", "RUNNING", pid=42)
    world.round()

    def lost(*args, **kwargs):
        raise ConsulError("answered PUT /v1/agent/check/pass: 404 not found", status=404)

    world.agent.update_ttl = lost
    world.monotonic.advance(5)
    world.sync.converge()
    assert operations(world.sync.metrics) == {("register", "ok"): 1, ("update_ttl", "lost"): 1}


def test_a_yielded_claim_is_never_in_step(world):
    twin = claim.Incarnation(ME.boot, ME.pid_ns, ME.mnt_ns, 5000, 1)
    world.agent.claims[OWNER] = claim.Seen(twin, PASSING, "another supervisord")
    world.sync.holder.keeper = claim.Keeper(ME, started=lambda pid: 1)  # the twin is alive
    world.deliver()
    assert operations(world.sync.metrics) == {}
    assert sample(world.sync.metrics, "last_sync_success_timestamp_seconds") == 0


# -- what the event loop counts -----------------------------------------------------------


def test_the_event_loops_counts_are_read_at_scrape_time():
    metrics = Metrics()
    text = "".join(envelope("TICK_5", "when:1", serial=serial, poolserial=serial) for serial in (1, 2, 5))
    text += "ver:3.0 garbled\n"
    listener = Listener(stream(text), io.StringIO(), Inbox())
    metrics.count_events(listener)
    assert sample(metrics, "events_read_total") == 0
    listener.run()
    assert sample(metrics, "events_read_total") == 4
    assert sample(metrics, "events_unreadable_total") == 1
    assert sample(metrics, "events_dropped_total") == 2  # poolserials 3 and 4


# -- the claim carries the endpoint -------------------------------------------------------


CLAIM_CONFIGURATION = Configuration("/etc/current.conf", identifier="web-tier")


def test_without_metrics_the_claim_is_registered_as_before():
    # As 0.1.0 registered it, byte for byte: an upgrade without --metrics-addr re-registers nothing.
    registration = instance.of_claim("0123456789ab", "node1", CLAIM_CONFIGURATION, ME, "15s", "6m")
    assert registration.fingerprint == "33e8038b8fe27775"
    assert json.dumps(registration.payload("passing"), sort_keys=True) == (
        '{"Address": "", "Checks": [{"CheckID": "supervisord:0123456789ab:alive", '
        '"DeregisterCriticalServiceAfter": "6m", "Name": "supervisord pid 4242 and its listener", '
        '"Status": "passing", "TTL": "15s"}], "ID": "supervisord:0123456789ab", "Meta": {"external-source": '
        '"supervisord", "supervisor-consul-owner": "0123456789ab", "supervisor-consul-spec": "33e8038b8fe27775", '
        '"supervisord-config": "/etc/current.conf", "supervisord-host": "node1", "supervisord-identifier": '
        '"web-tier", "supervisord-incarnation": "boot-1/4026531836/4026531832/4242/777", "supervisord-pid": '
        '"4242"}, "Name": "supervisord", "Port": 0, "Tags": []}')


def test_with_metrics_the_claim_carries_the_endpoint_for_consul_sd():
    plain = instance.of_claim("0123456789ab", "node1", CLAIM_CONFIGURATION, ME, "15s", "6m")
    registration = instance.of_claim("0123456789ab", "node1", CLAIM_CONFIGURATION, ME, "15s", "6m",
                                     ("10.0.0.7", 9187))
    body = registration.payload("passing")
    assert (body["Address"], body["Port"], body["Tags"]) == ("10.0.0.7", 9187, ["metrics"])
    assert body["Meta"]["metrics_path"] == "/metrics"
    assert body["Checks"] == plain.payload("passing")["Checks"]
    assert registration.fingerprint != plain.fingerprint  # a listener given the option re-registers its claim


def test_the_sync_registers_the_claim_with_the_advertised_endpoint():
    world = World(service("web"))
    world.supervisor.set("web", "RUNNING", pid=42)
    endpoint = parse_endpoint(":9187")
    world.sync = Sync(world.agent, CONFIGFILE, HOST, Inbox(), read_config=lambda path: world.configuration,
                      supervisor_factory=lambda configuration: world.supervisor, wall=world.wall,
                      monotonic=world.monotonic, waker=lambda supervisor: None, incarnation=ME, workers=1,
                      background_pulse=False, metrics_endpoint=(endpoint.advertised, endpoint.port))
    registered = []
    register = world.agent.register
    world.agent.register = lambda registration, *a, **k: (registered.append(registration),
                                                           register(registration, *a, **k))
    world.deliver()
    [claimed] = [r for r in registered if r.name == claim.SERVICE]
    # Every address: the claim names none, and consul_sd_configs takes the node's.
    assert (claimed.address, claimed.port, claimed.tags) == ("", 9187, ("metrics",))


# -- --metrics-addr -------------------------------------------------------------------------


@pytest.mark.parametrize("text, endpoint, advertised", [
    ("127.0.0.1:9187", Endpoint("127.0.0.1", 9187), "127.0.0.1"),
    (":9187", Endpoint("", 9187), ""),
    ("0.0.0.0:9187", Endpoint("0.0.0.0", 9187), ""),
    ("[::1]:9187", Endpoint("::1", 9187), "::1"),
    ("[::]:9187", Endpoint("::", 9187), ""),
    ("node1.example:9187", Endpoint("node1.example", 9187), "node1.example"),
])
def test_metrics_addr_forms(text, endpoint, advertised):
    assert parse_endpoint(text) == endpoint and parse_endpoint(text).advertised == advertised


@pytest.mark.parametrize("text", ["9187", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                                  "::1:9187", "[not-v6]:9187", "a b:9187", "http://127.0.0.1:9187"])
def test_a_bad_metrics_addr_says_what_to_give(text):
    with pytest.raises(ValueError, match=r"^--metrics-addr .*: expected HOST:PORT, as 127.0.0.1:9187"):
        parse_endpoint(text)


def test_the_metrics_are_served_in_the_text_format_on_the_endpoint():
    # Its daemon thread serves for the rest of the session: start_http_server returns no handle before 0.20.
    metrics = Metrics()
    metrics.owned(7)
    port = free_port()
    metrics.serve(parse_endpoint(f"{LOOPBACK}:{port}"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{LOOPBACK}:{port}{instance.METRICS_PATH}", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert f"{P}instances_owned 7.0" in resp.read().decode().splitlines()


def _listen(tmp_path, metrics_addr: str):
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n")
    return run_cli("listen", "-c", str(conf), "--http-addr", f"{LOOPBACK}:1", "--metrics-addr", metrics_addr)


@pytest.mark.integration
def test_the_listener_exits_2_at_start_on_a_bad_metrics_addr(tmp_path):
    result = _listen(tmp_path, "localhost")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "--metrics-addr 'localhost': expected HOST:PORT" in line


@pytest.mark.integration
def test_the_listener_exits_2_at_start_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _listen(tmp_path, f"{LOOPBACK}:{port}")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert f"--metrics-addr {LOOPBACK}:{port}: cannot listen there (Address already in use)" in line


# -- a real Prometheus, finding the listener through Consul ---------------------------------


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass  # Prometheus's scrapes, answered 501


def _passing(entry: dict) -> bool:
    return all(check["Status"] == "passing" for check in entry["Checks"])


def test_prometheus_finds_the_listener_by_its_claim_and_only_the_passing_instances(tmp_path, supervisord_factory):
    prometheus_binary()  # fetched (once) before any deadline starts
    with ConsulAgent(tmp_path / "consul") as agent:  # its own: `web` and `supervisord` are this test's alone
        prefix, dead, metrics_port = free_port_prefix(2), free_port(), free_port()
        sv = supervisord_factory(f"""
[program:web]
command={sys.executable} -m http.server {prefix}%(process_num)d --bind 127.0.0.1
process_name=%(program_name)s_%(process_num)d
numprocs=2
numprocs_start=1
[consul:web]
port={prefix}%(process_num)d
check=http://127.0.0.1:%(port)s/
interval=1s
timeout=1s
[program:sick]
command=sleep 300
[consul:sick]
name=web
port={dead}
check=tcp://127.0.0.1:%(port)s
interval=1s
timeout=1s
""" + listener(agent, options=f"--metrics-addr {LOOPBACK}:{metrics_port}"))
        passing = {f"{LOOPBACK}:{prefix}{n}" for n in (1, 2)}

        def settled():
            # Nothing changes once Prometheus runs: its first discovery is the one the test judges.
            entries = agent.health("web")
            return len(entries) == 3 and {f"{LOOPBACK}:{e['Service']['Port']}" for e in entries
                                          if _passing(e)} == passing and entries

        wait_for(settled, timeout=30, message="two web instances passing, the sick one critical")
        [claimed] = wait_for(lambda: [s for s in agent.services().values() if s["Service"] == claim.SERVICE],
                             message="the claim")
        assert (claimed["Address"], claimed["Port"], claimed["Tags"]) == (LOOPBACK, metrics_port, ["metrics"])
        assert claimed["Meta"]["metrics_path"] == "/metrics"

        with Prometheus(tmp_path / "prometheus", sample_config(agent.http_addr)) as prometheus:
            def listener_scraped():
                [target] = prometheus.targets("supervisor-consul")
                return target["health"] == "up" and target

            try:
                target = wait_for(listener_scraped, timeout=90, interval=0.5,
                                  message="Prometheus finding the listener in Consul and scraping it")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nprometheus.log:\n{prometheus.log_text()[-4000:]}") from None
            assert target["scrapeUrl"] == f"http://{LOOPBACK}:{metrics_port}/metrics"
            assert target["labels"]["host"] == platform.node()

            def value(expr: str) -> float:
                [(_, got)] = prometheus.query(expr).items()
                return got

            job = '{job="supervisor-consul"}'
            assert wait_for(lambda: value(f"supervisor_consul_instances_owned{job}") == 3, timeout=30,
                            message="instances_owned 3 in Prometheus")
            assert value(f"supervisor_consul_agent_reachable{job}") == 1
            assert value('supervisor_consul_operations_total{job="supervisor-consul",kind="register",'
                         'result="ok"}') >= 3
            assert value(f"supervisor_consul_events_read_total{job}") > 0
            assert value(f"supervisor_consul_events_dropped_total{job}") >= 0  # a start-up burst may overflow 10
            assert 0 <= value(f"time() - supervisor_consul_last_sync_success_timestamp_seconds{job}") < 90
            assert value(f"supervisor_consul_reconcile_duration_seconds_count{job}") >= 1

            # The other job: exactly the passing instances, each labelled with its process.
            web = wait_for(lambda: prometheus.targets("web"), message="the web job's targets")
            assert {t["labels"]["instance"] for t in web} == passing
            assert sorted(t["labels"]["process"] for t in web) == ["web_1", "web_2"]
            assert sv.state("sick") == "RUNNING"  # critical by its check alone, registered all along

            # Something answers on the sick one's port: its tcp check passes, and Prometheus follows
            # Consul (within consul_sd_configs' refresh_interval, 30 s by default).  It accepts, as a
            # server does: a full accept queue would turn the check critical again.
            cured = http.server.ThreadingHTTPServer((LOOPBACK, dead), _Quiet)
            threading.Thread(target=cured.serve_forever, name="cured", daemon=True).start()
            try:
                cured_too = passing | {f"{LOOPBACK}:{dead}"}
                try:
                    wait_for(lambda: {t["labels"]["instance"] for t in prometheus.targets("web")} == cured_too,
                             timeout=90, interval=0.5, message="the cured instance among the web job's targets")
                except AssertionError as exc:
                    health = [(e["Service"]["Port"], [(c["CheckID"], c["Status"]) for c in e["Checks"]])
                              for e in agent.health("web")]
                    dropped = [t["discoveredLabels"] for t in prometheus.api("targets")["droppedTargets"]]
                    raise AssertionError(f"{exc}\nconsul: {health}\nactive: {prometheus.targets('web')}\n"
                                         f"dropped: {dropped}\nprometheus.log:\n{prometheus.log_text()[-6000:]}") from exc
            finally:
                cured.shutdown()
                cured.server_close()
