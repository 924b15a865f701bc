"""Consul Connect sidecars (issue 12, part 3): `connect = sidecar`, upstreams,
and `supervisor-consul connect-proxy` as supervisord programs, over mTLS
through Consul's built-in proxy."""
from __future__ import annotations

import argparse
import subprocess
import sys
import urllib.error
import urllib.request

from supervisor_consul import config, connect_proxy, instance
from tests import http_probe
from tests.harness import ConsulAgent, free_port, listener, wait_for
from tests.test_config import program, write
from tests.test_integration import listener_log, unique


def args(namespec: str, *extra: str) -> argparse.Namespace:
    return argparse.Namespace(namespec=namespec, envoy=False, consul="consul", http_addr=None, extra=list(extra))


def test_the_proxy_command_names_the_instance_id(tmp_path):
    path = write(tmp_path, program("web", "process_name=%(program_name)s_%(process_num)02d\nnumprocs=2")
                 + "[consul:web]\nconnect = sidecar\nconnect.upstreams = db:9191, cache:9192\n"
                 + program("plain") + "[consul:plain]\n")
    configuration = config.read(path)
    sid = instance.instance_id(instance.owner_of("h", configuration), configuration.services["web:web_01"])
    assert connect_proxy.command(args("web:web_01", "-log-level", "debug"), configuration, "h") == [
        "consul", "connect", "proxy", "-sidecar-for", sid, "-log-level", "debug"]
    assert "has no connect = sidecar" in connect_proxy.command(args("plain"), configuration, "h")
    assert "no process with a [consul:*] section" in connect_proxy.command(args("nope"), configuration, "h")
    body = instance.of(configuration.services["web:web_01"], "o", "h").payload("critical")
    assert body["Connect"] == {"SidecarService": {"Proxy": {"Upstreams": [
        {"DestinationName": "db", "LocalBindPort": 9191}, {"DestinationName": "cache", "LocalBindPort": 9192}]}}}


def test_upstreams_need_the_sidecar(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nconnect.upstreams = db:9191\n")
    [problem] = config.read(path).problems
    assert problem.key == "connect.upstreams" and "connect = sidecar" in problem.message


def through(port: int) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=3) as answer:
            return answer.status
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        return type(exc).__name__


def proxy_program(program_name: str, agent: ConsulAgent) -> str:
    return (f"[program:{program_name}-proxy]\ncommand={sys.executable} -m supervisor_consul connect-proxy "
            f"{program_name} --consul {agent.binary} --http-addr {agent.http_addr}\nautorestart=true\n")


def test_a_client_reaches_api_through_its_sidecars_until_an_intention_denies_it(consul_agent, supervisord_factory,
                                                                               tmp_path):
    api, client = unique("api"), unique("client")
    api_port, upstream = free_port(), free_port()
    sv = supervisord_factory(
        f"[program:api]\n{http_probe.program_lines(api_port, tmp_path / 'api.jsonl')}"
        f"[consul:api]\nname={api}\nport={api_port}\nconnect=sidecar\n"
        + proxy_program("api", consul_agent)
        + f"[program:client]\ncommand=sleep 300\n[consul:client]\nname={client}\nport={free_port()}\n"
          f"connect=sidecar\nconnect.upstreams={api}:{upstream}\n"
        + proxy_program("client", consul_agent) + listener(consul_agent))
    sidecar = f"{api}-sidecar-proxy"
    wait_for(lambda: [e for e in consul_agent.health(sidecar)
                      if all(c["Status"] == "passing" for c in e["Checks"])], timeout=60,
             message="api's sidecar registered and passing")
    # A full reconcile leaves the sidecars alone: they carry their instances' meta, but are Consul's to keep.
    reconciles = listener_log(sv).count("reconcile done")
    assert sv.ctl("signal", "HUP", "consul").returncode == 0
    wait_for(lambda: listener_log(sv).count("reconcile done") > reconciles, message="a reconcile after HUP")
    assert consul_agent.health(sidecar) and "deregistered supervisord" not in listener_log(sv)
    # client -> its sidecar's upstream listener -> mTLS -> api's sidecar -> api
    assert wait_for(lambda: through(upstream) == 200, timeout=60, message="api through the mesh") is True
    records = http_probe.read_records(tmp_path / "api.jsonl")
    assert any(r["path"] == "/hello" for r in records)

    denied = subprocess.run([consul_agent.binary, "intention", "create", "-deny", client, api],
                            env={"CONSUL_HTTP_ADDR": consul_agent.http_addr}, capture_output=True, text=True)
    assert denied.returncode == 0, denied.stderr
    wait_for(lambda: through(upstream) != 200, timeout=60, message="refused after the deny intention")

    # Stopping api takes its sidecar out of the catalog with it.
    assert sv.ctl("stop", "api").returncode == 0
    wait_for(lambda: consul_agent.health(sidecar) == [] and consul_agent.health(api) == [], timeout=30,
             message="api and its sidecar deregistered")
