"""The `[consul:PROGRAM]` keys of issue 11 end to end: weights, enable_tag_override,
tagged_address.NAME, check.NAME (http with method, headers, body and thresholds;
grpc; tcp; exec) and `[consul:PROGRAM:KEY]` further services, each proven against
a real Consul agent, a real supervisord and real servers (tests/http_probe.py,
tests/grpc_health.py), and through the real `dig` where DNS is the point.

Consul 1.8.7's /v1/agent/checks gives an empty Definition, so an HTTP check's
method, headers and body are proven by what the probe received, and its
thresholds by what the agent logged while counting them.
"""
from __future__ import annotations

import os
import pathlib
import platform
import uuid

from supervisor_consul import instance
from tests import grpc_health, http_probe
from tests.dig import dig, srv_ports
from tests.harness import LOOPBACK, ConsulAgent, free_port, free_port_prefix, listener, wait_for
from tests.test_dns import node_target


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def owner_of(sv) -> str:
    """The owner id the listener of this supervisord gives its instances."""
    return instance.owner_id(platform.node(), os.path.normpath(str(sv.conf)), "supervisor")


def service_of(agent: ConsulAgent, sid: str) -> dict:
    return agent.services()[sid]


def checks_of(agent: ConsulAgent, sid: str) -> dict[str, dict]:
    """The agent's checks of one instance, by CheckID (read from the agent itself:
    an output-only change reaches the catalog only lazily)."""
    return {cid: c for cid, c in agent.checks().items() if c["ServiceID"] == sid}


def statuses(agent: ConsulAgent, sid: str) -> dict[str, str]:
    return {cid: c["Status"] for cid, c in checks_of(agent, sid).items()}


def wait_status(agent: ConsulAgent, check_id: str, status: str, output: str | None = None,
                timeout: float = 20, sv=None) -> dict:
    """The check once it has `status` (and `output`); on the deadline the error has what the
    agent logged of the check, and with `sv`, what its listener registered."""
    def reached():
        check = agent.checks().get(check_id)
        return check if check and check["Status"] == status and (output is None or check["Output"] == output) \
            else None
    try:
        return wait_for(reached, timeout=timeout,
                        message=f"{check_id} {status}" + (f" with output {output!r}" if output is not None else ""))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logged_about(agent, check_id, sv)}") from None


def logged_about(agent: ConsulAgent, check_id: str, sv=None, lines: int = 30) -> str:
    """For a failure's message: the agent's log lines of a check, and its listener's (de)registrations."""
    agent_lines = [line for line in consul_log(agent).splitlines() if check_id in line][-lines:]
    text = "the agent's log of it:\n" + "\n".join(agent_lines)
    if sv is not None:
        registrations = [line for line in listener_log(sv).splitlines() if "registered" in line][-lines:]
        text += "\nthe listener's registrations:\n" + "\n".join(registrations)
    return text


def consul_log(agent: ConsulAgent) -> str:
    return agent.log_path.read_text(errors="replace")


def listener_log(sv) -> str:
    path = sv.workdir / "listener.log"
    return path.read_text(errors="replace") if path.exists() else ""


def executable(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# ------------------------------------------------------------ every key at once

def web_config(agent: ConsulAgent, tmp_path: pathlib.Path, name: str) -> dict:
    """A supervisord with every key of the issue: `web` is the HTTP probe on its
    port (the http and tcp checks reach it), `rpc` the gRPC health server on its own,
    and a script check prints what it was given."""
    port, grpc_port = free_port(), free_port()
    record, status_file = tmp_path / "requests.jsonl", tmp_path / "status"
    script = executable(tmp_path / "healthcheck", """#!/bin/sh
printf 'group=%s process=%s pid=%s mode=%s args=' "$SUPERVISOR_GROUP_NAME" "$SUPERVISOR_PROCESS_NAME" \\
    "$SUPERVISOR_PROCESS_PID" "$PROBE_MODE"
for arg; do printf '[%s]' "$arg"; done
echo
""")
    config = f"""
[program:web]
{http_probe.program_lines(port, record, status_file=status_file)}environment=PROBE_MODE="full"
startsecs=0
[program:rpc]
{grpc_health.program_lines(grpc_port, ["my.pkg.Service"])}startsecs=0
[consul:web]
name={name}
port={port}
tags = http, v2
weights.passing = 10
weights.warning = 1
enable_tag_override = true
tagged_address.wan = 203.0.113.5:80
tagged_address.lan = 127.0.0.1:%(port)s
check.api = http://127.0.0.1:%(port)s/health
check.api.interval = 1s
check.api.timeout = 2s
check.api.method = POST
check.api.header.Authorization = Bearer abc
check.api.body = {{"deep": true}}
check.api.success_before_passing = 2
check.api.failures_before_critical = 3
check.rpc = grpc://127.0.0.1:{grpc_port}/my.pkg.Service
check.rpc.interval = 1s
check.rpc.tls = false
check.db = tcp://127.0.0.1:%(port)s
check.db.interval = 1s
check.self = exec {script} --quick "two words" "$HOME"
check.self.interval = 30s
""" + listener(agent)
    return dict(config=config, port=port, grpc_port=grpc_port, record=record, status_file=status_file,
                script=script)


def test_every_key_is_registered_as_written(consul_agent, supervisord_factory, tmp_path):
    name = unique("web")
    web = web_config(consul_agent, tmp_path, name)
    sv = supervisord_factory(web["config"])
    pid = sv.wait_state("web", "RUNNING")["pid"]
    owner = owner_of(sv)
    sid = f"supervisord:{owner}:web"
    ids = {f"{sid}:process", f"{sid}:supervisord", f"{sid}:check:api", f"{sid}:check:rpc", f"{sid}:check:db",
           f"{sid}:check:self"}
    wait_for(lambda: statuses(consul_agent, sid) == dict.fromkeys(ids, "passing"), timeout=30,
             message="every check of web passing")

    service = service_of(consul_agent, sid)
    assert service["Service"] == name
    assert service["Port"] == web["port"]
    assert service["Tags"] == ["http", "v2"]
    assert service["Weights"] == {"Passing": 10, "Warning": 1}
    assert service["EnableTagOverride"] is True
    assert service["TaggedAddresses"] == {"wan": {"Address": "203.0.113.5", "Port": 80},
                                          "lan": {"Address": "127.0.0.1", "Port": web["port"]}}
    meta = service["Meta"]
    assert {k: meta[k] for k in ("external-source", "supervisor-consul-owner", "supervisord-group",
                                 "supervisord-process", "supervisord-host")} == {
        "external-source": "supervisord", "supervisor-consul-owner": owner, "supervisord-group": "web",
        "supervisord-process": "web", "supervisord-host": platform.node()}
    assert meta["supervisor-consul-spec"]

    checks = checks_of(consul_agent, sid)
    shown = {cid: (c["Name"], c["Type"], c["Notes"]) for cid, c in checks.items()}
    port, grpc_port = web["port"], web["grpc_port"]
    assert shown == {
        f"{sid}:process": ("supervisord process web", "ttl", ""),
        f"{sid}:supervisord": (f"supervisord and its listener ({owner})", "alias", ""),
        f"{sid}:check:api": ("api (web)", "http", f"http POST http://127.0.0.1:{port}/health every 1s"),
        f"{sid}:check:rpc": ("rpc (web)", "grpc", f"grpc 127.0.0.1:{grpc_port}/my.pkg.Service every 1s"),
        f"{sid}:check:db": ("db (web)", "tcp", f"tcp 127.0.0.1:{port} every 1s"),
        f"{sid}:check:self": ("self (web)", "ttl",
                              f"exec {web['script']} --quick \"two words\" \"$HOME\" "
                              f"(run by supervisor-consul every 30s)"),
    }
    assert all(c["ServiceName"] == name for c in checks.values())
    assert checks[f"{sid}:process"]["Output"] == f"RUNNING pid {pid}"
    # The script ran in the program's environment, told which process it checks, its
    # arguments split as a shell would and handed over as they are (no shell expands $HOME).
    assert checks[f"{sid}:check:self"]["Output"] == \
        f"group=web process=web pid={pid} mode=full args=[--quick][two words][$HOME]"
    # Consul's own checks reach the real servers.
    assert f"127.0.0.1:{grpc_port}/my.pkg.Service" in checks[f"{sid}:check:rpc"]["Output"]
    assert "200 OK" in checks[f"{sid}:check:api"]["Output"]
    assert "Success" in checks[f"{sid}:check:db"]["Output"]
    # The catalog has the service as the agent does.
    [entry] = consul_agent.health(name)
    assert entry["Service"]["ID"] == sid
    assert entry["Service"]["Weights"] == {"Passing": 10, "Warning": 1}
    assert entry["Service"]["TaggedAddresses"]["wan"] == {"Address": "203.0.113.5", "Port": 80}


def test_http_check_sends_method_header_body_and_keeps_its_thresholds(consul_agent, supervisord_factory,
                                                                      tmp_path):
    name = unique("web")
    web = web_config(consul_agent, tmp_path, name)
    sv = supervisord_factory(web["config"])
    sid = f"supervisord:{owner_of(sv)}:web"
    api = f"{sid}:check:api"

    def health_requests() -> list[dict]:
        return [r for r in http_probe.read_records(web["record"]) if r["path"] == "/health"]

    wait_status(consul_agent, api, "passing", sv=sv)
    requests = health_requests()
    assert requests
    for request in requests:
        assert request["method"] == "POST"
        assert request["headers"].get("Authorization") == "Bearer abc"
        assert request["body"] == '{"deep": true}'

    # Consul 1.8.7 takes a check's first result as it is (its counters start at the
    # thresholds); from then on the thresholds hold, and the agent logs each count.
    # failures_before_critical = 3: two 503s in a row keep it passing, the third makes it critical.
    before = len(health_requests())
    answer(web["status_file"], 503)
    wait_status(consul_agent, api, "critical", sv=sv)
    # A request just before the flip may have got a 503 too.
    assert len(health_requests()) - before >= 2, logged_about(consul_agent, api, sv)
    assert "503" in consul_agent.checks()[api]["Output"]
    for count in (1, 2):
        assert threshold_logged(consul_agent, "Check failed but has not reached failure threshold", api,
                                f"failure_count={count}", "failure_threshold=3"), logged_about(consul_agent, api, sv)
    # success_before_passing = 2: one 200 is not enough to pass again.
    answer(web["status_file"], 200)
    wait_status(consul_agent, api, "passing", sv=sv)
    assert threshold_logged(consul_agent, "Check passed but has not reached success threshold", api,
                            "success_count=1", "success_threshold=2"), logged_about(consul_agent, api, sv)
    assert all(r["method"] == "POST" and r["body"] == '{"deep": true}' for r in health_requests())


def answer(status_file: pathlib.Path, status: int) -> None:
    """Have the probe answer `status` from its next request on (replaced whole: a request
    reading the file as it is written would find it empty and answer 200)."""
    partial = status_file.with_name(status_file.name + ".new")
    partial.write_text(f"{status}\n")
    os.replace(partial, status_file)


def threshold_logged(agent: ConsulAgent, message: str, check_id: str, *fields: str) -> bool:
    """Whether the agent logged `message: check=CHECK_ID ... FIELDS...` (hclog's key=value pairs)."""
    return any(f"{message}: " in line and f"check={check_id} " in line and all(f" {f}" in line for f in fields)
               for line in consul_log(agent).splitlines())


# ------------------------------------------------------------------------ gRPC

def test_grpc_check_follows_the_real_health_server(consul_agent, supervisord_factory):
    name, port = unique("rpc"), free_port()
    sv = supervisord_factory(f"""
[program:rpc]
{grpc_health.program_lines(port, ["my.pkg.Service"])}startsecs=0
[consul:rpc]
name={name}
port={port}
check.rpc = grpc://127.0.0.1:%(port)s/my.pkg.Service
check.rpc.interval = 1s
check.rpc.tls = false
check.ghost = grpc://127.0.0.1:%(port)s/no.such.Service
check.ghost.interval = 1s
""" + listener(consul_agent))
    sid = f"supervisord:{owner_of(sv)}:rpc"
    rpc, ghost = f"{sid}:check:rpc", f"{sid}:check:ghost"
    wait_status(consul_agent, rpc, "passing")
    # The service name is what the check asks about: one the server does not know is critical.
    wait_status(consul_agent, ghost, "critical")
    assert consul_agent.checks()[rpc]["Type"] == "grpc"

    assert sv.ctl("signal", "USR1", "rpc").returncode == 0  # NOT_SERVING
    wait_status(consul_agent, rpc, "critical")
    assert sv.state("rpc") == "RUNNING"
    assert statuses(consul_agent, sid)[f"{sid}:process"] == "passing"

    assert sv.ctl("signal", "USR2", "rpc").returncode == 0  # SERVING
    wait_status(consul_agent, rpc, "passing")
    assert statuses(consul_agent, sid)[ghost] == "critical"


# ---------------------------------------------------------------- script checks

def test_script_check_exit_codes_are_passing_warning_critical_with_the_output(consul_agent, supervisord_factory,
                                                                              tmp_path):
    name, out, code = unique("scripted"), tmp_path / "out", tmp_path / "code"
    out.write_text("all good\n")
    code.write_text("0\n")
    sv = supervisord_factory(f"""
[program:scripted]
command=sleep 300
[consul:scripted]
name={name}
check.probe = exec /bin/sh -c 'cat {out}; exit $(cat {code})'
check.probe.interval = 1s
check.probe.timeout = 2s
""" + listener(consul_agent))
    sid = f"supervisord:{owner_of(sv)}:scripted"
    probe = f"{sid}:check:probe"
    check = wait_status(consul_agent, probe, "passing", "all good")
    assert check["Type"] == "ttl" and check["Name"] == "probe (scripted)"

    for text, exit_code, status in (("degraded", 1, "warning"), ("down", 2, "critical"),
                                    ("all good again", 0, "passing")):
        out.write_text(text + "\n")
        code.write_text(f"{exit_code}\n")
        wait_status(consul_agent, probe, status, text)
        # The process itself is fine all along.
        assert statuses(consul_agent, sid)[f"{sid}:process"] == "passing"


def test_weights_decide_the_srv_weight_in_dns(consul_agent, supervisord_factory, tmp_path):
    name, port, code = unique("weighted"), free_port(), tmp_path / "code"
    code.write_text("0\n")
    sv = supervisord_factory(f"""
[program:weighted]
command=sleep 300
[consul:weighted]
name={name}
port={port}
weights.passing = 10
weights.warning = 1
check.probe = exec /bin/sh -c 'exit $(cat {code})'
check.probe.interval = 1s
""" + listener(consul_agent))
    sid = f"supervisord:{owner_of(sv)}:weighted"
    server, dns_port, target = LOOPBACK, consul_agent.dns_port, node_target(consul_agent)

    def srv() -> list[str]:
        return dig(server, dns_port, f"{name}.service.consul", "SRV")

    # Field order: priority weight port target.
    wait_for(lambda: srv() == [f"1 10 {port} {target}"], message="SRV weight 10 while every check passes")
    code.write_text("1\n")
    wait_status(consul_agent, f"{sid}:check:probe", "warning")
    wait_for(lambda: srv() == [f"1 1 {port} {target}"], message="SRV weight 1 while a check warns")
    code.write_text("0\n")
    wait_for(lambda: srv() == [f"1 10 {port} {target}"], message="SRV weight 10 again")
    code.write_text("2\n")
    wait_for(lambda: srv() == [], message="no SRV record while a check is critical")


# ------------------------------------------------------------ further services

def test_further_service_per_process_with_numprocs(consul_agent, supervisord_factory):
    program = f"web{uuid.uuid4().hex[:8]}"  # unique, so the default names are too
    web_prefix, metrics_prefix = free_port_prefix(3), free_port_prefix(3, digits=2)
    web_ports = [int(f"{web_prefix}{n}") for n in (1, 2, 3)]
    metrics_ports = [int(f"{metrics_prefix}{n:02d}") for n in (1, 2, 3)]
    sv = supervisord_factory(f"""
[program:{program}]
command=sleep 300
process_name=%(program_name)s_%(process_num)d
numprocs=3
numprocs_start=1
[consul:{program}]
port={web_prefix}%(process_num)d
tags=http
[consul:{program}:metrics]
port={metrics_prefix}%(process_num)02d
tags=prometheus
""" + listener(consul_agent, buffer_size=100))
    owner = owner_of(sv)
    metrics = f"{program}-metrics"  # the name a further service gets by default
    server, dns_port = LOOPBACK, consul_agent.dns_port

    def ports(service: str) -> list[int]:
        return srv_ports(dig(server, dns_port, f"{service}.service.consul", "SRV"))

    wait_for(lambda: ports(program) == web_ports, message=f"SRV of {program} on {web_ports}")
    wait_for(lambda: ports(metrics) == metrics_ports, message=f"SRV of {metrics} on {metrics_ports}")

    services = consul_agent.services()
    for n, web_port, metrics_port in zip((1, 2, 3), web_ports, metrics_ports):
        process = f"{program}_{n}"
        main = services[f"supervisord:{owner}:{program}:{process}"]
        further = services[f"supervisord:{owner}:{program}:{process}:metrics"]
        assert (main["Service"], main["Port"], main["Tags"]) == (program, web_port, ["http"])
        assert (further["Service"], further["Port"], further["Tags"]) == (metrics, metrics_port, ["prometheus"])
        assert further["Meta"]["supervisord-group"] == program and further["Meta"]["supervisord-process"] == process
        # Each service of the process has its own process-state check and its liveness, passing.
        for sid in (main["ID"], further["ID"]):
            assert statuses(consul_agent, sid) == {f"{sid}:process": "passing", f"{sid}:supervisord": "passing"}

    assert sv.ctl("stop", f"{program}:{program}_2").returncode == 0
    wait_for(lambda: ports(program) == [web_ports[0], web_ports[2]], message="web instance 2 gone from DNS")
    wait_for(lambda: ports(metrics) == [metrics_ports[0], metrics_ports[2]], message="metrics instance 2 gone")
    left = {sid for sid in consul_agent.services() if sid.startswith(f"supervisord:{owner}:")}
    assert left == {f"supervisord:{owner}:{program}:{program}_{n}{suffix}" for n in (1, 3)
                    for suffix in ("", ":metrics")}
