"""The service model (issue 11): the keys beyond the simple case, read through
supervisor's parser, and the registration each becomes."""
from __future__ import annotations

import json

import pytest

from supervisor_consul import cli, config, instance, schema, show
from supervisor_consul.spec import CheckKind, CheckSpec, OnFatal, ServiceSpec, TaggedAddress
from tests.test_config import program, write

OWNER, HOST = "0123456789ab", "node1"

FULL = """
[consul:web]
port = 8080
tags = http, v2
weights.passing = 10
weights.warning = 1
enable_tag_override = yes
tagged_address.wan = 203.0.113.5:80
tagged_address.lan = 127.0.0.1
tagged_address.lan_ipv6 = [::1]:8080
check.api = http://127.0.0.1:%(port)s/health
check.api.interval = 5s
check.api.timeout = 2s
check.api.method = POST
check.api.header.Authorization = Bearer abc
check.api.header.X-Trace = on
check.api.body = {"deep": true}
check.api.tls_skip_verify = true
check.api.success_before_passing = 2
check.api.failures_before_critical = 3
check.rpc = grpc://127.0.0.1:9090/my.pkg.Service
check.rpc.tls = true
check.db = tcp://127.0.0.1:5432
check.self = exec /usr/local/bin/healthcheck --quick "a b"
check.self.interval = 30s

[consul:web:metrics]
port = 9100
tags = prometheus
"""


def read_full(tmp_path):
    path = write(tmp_path, program("web", "environment=A=1\ndirectory=/tmp") + FULL)
    configuration = config.read(path)
    assert configuration.problems == ()
    return configuration


def test_every_key_is_read(tmp_path):
    spec = read_full(tmp_path).services["web"]
    assert spec.weights == (10, 1)
    assert spec.enable_tag_override is True
    assert spec.tagged_addresses == (TaggedAddress("wan", "203.0.113.5", 80), TaggedAddress("lan", "127.0.0.1"),
                                     TaggedAddress("lan_ipv6", "::1", 8080))
    api, rpc, db, script = spec.checks
    assert api == CheckSpec(CheckKind.HTTP, "http://127.0.0.1:8080/health", "5s", "2s", "api", method="POST",
                            headers=(("Authorization", "Bearer abc"), ("X-Trace", "on")), body='{"deep": true}',
                            tls_skip_verify=True, success_before_passing=2, failures_before_critical=3)
    assert rpc == CheckSpec(CheckKind.GRPC, "127.0.0.1:9090/my.pkg.Service", "10s", "5s", "rpc", grpc_tls=True)
    assert db == CheckSpec(CheckKind.TCP, "127.0.0.1:5432", "10s", "5s", "db")
    assert (script.kind, script.interval, script.command) == (
        CheckKind.SCRIPT, "30s", ("/usr/local/bin/healthcheck", "--quick", "a b"))
    assert (spec.environment, spec.directory) == ((("A", "1"),), "/tmp")


def test_a_further_service_is_its_own_unit(tmp_path):
    configuration = read_full(tmp_path)
    assert set(configuration.services) == {"web", "web/metrics"}
    metrics = configuration.services["web/metrics"]
    assert (metrics.name, metrics.port, metrics.tags, metrics.key, metrics.checks) == (
        "web-metrics", 9100, ("prometheus",), "metrics", ())
    assert [s.unit for s in configuration.of_process("web")] == ["web", "web/metrics"]
    assert instance.instance_id(OWNER, metrics) == f"supervisord:{OWNER}:web:web:metrics"
    # never the ID of a process `web:metrics` (group web, process metrics)
    assert instance.instance_id(OWNER, metrics) != instance.service_id(OWNER, "web:metrics")


def test_the_registration_says_everything(tmp_path):
    spec = read_full(tmp_path).services["web"]
    body = instance.of(spec, OWNER, HOST).payload("critical")
    sid = f"supervisord:{OWNER}:web"
    assert body["Weights"] == {"Passing": 10, "Warning": 1}
    assert body["EnableTagOverride"] is True
    assert body["TaggedAddresses"] == {"wan": {"Address": "203.0.113.5", "Port": 80},
                                       "lan": {"Address": "127.0.0.1", "Port": 0},
                                       "lan_ipv6": {"Address": "::1", "Port": 8080}}
    checks = {c["CheckID"]: c for c in body["Checks"]}
    assert list(checks) == [f"{sid}:process", f"{sid}:check:api", f"{sid}:check:rpc", f"{sid}:check:db",
                            f"{sid}:check:self"]
    assert checks[f"{sid}:check:api"] == {
        "CheckID": f"{sid}:check:api", "Name": "api (web)", "Notes": "http POST http://127.0.0.1:8080/health every 5s",
        "HTTP": "http://127.0.0.1:8080/health", "Method": "POST",
        "Header": {"Authorization": ["Bearer abc"], "X-Trace": ["on"]}, "Body": '{"deep": true}',
        "TLSSkipVerify": True, "Interval": "5s", "Timeout": "2s", "SuccessBeforePassing": 2,
        "FailuresBeforeCritical": 3}
    assert checks[f"{sid}:check:rpc"]["GRPC"] == "127.0.0.1:9090/my.pkg.Service"
    assert checks[f"{sid}:check:rpc"]["GRPCUseTLS"] is True
    assert checks[f"{sid}:check:db"]["TCP"] == "127.0.0.1:5432"
    # A script check is a TTL check the listener writes: interval + timeout + ttl without a result expires it.
    assert checks[f"{sid}:check:self"]["TTL"] == "50s"
    assert "DeregisterCriticalServiceAfter" not in checks[f"{sid}:check:self"]
    json.dumps(body)  # what the agent gets is JSON as it is


@pytest.mark.parametrize("spec, claimed, fingerprint", [
    (ServiceSpec("web:web_01", "web", "web_01", "web", port=8101, tags=("a",), meta=(("v", "1"),)), False,
     "b5a0c1acbdf2c37a"),
    (ServiceSpec("web", "web", "web", "web",
                 checks=(CheckSpec(CheckKind.HTTP, "http://127.0.0.1:80/", "10s", "5s"),)), False,
     "ca27eb8553859af8"),
    (ServiceSpec("app", "app", "app", "app", ttl_check=False), True, "6627a012158d8b5b"),
])
def test_a_section_of_the_simple_case_keeps_the_fingerprint_earlier_versions_gave_it(spec, claimed, fingerprint):
    # As 0.1.0 computed them.  Without the claim (and with `check = none`, with it) an upgrade
    # re-registers nothing; with the claim an instance is re-registered once, keeping its status,
    # since it gains its liveness check (the alias) and its process check's TTL becomes the backstop.
    assert instance.of(spec, OWNER, HOST, claimed=claimed).fingerprint == fingerprint
    if spec.ttl_check:
        assert instance.of(spec, OWNER, HOST, claimed=True).fingerprint != fingerprint


@pytest.mark.parametrize("body, key, words", [
    ("check.api.interval = 5s", "check.api.interval", "no check.api = URL"),
    ("check.db = tcp://127.0.0.1:5432\ncheck.db.method = POST", "check.db.method", "http checks"),
    ("check.api = http://h/\ncheck.api.tls = true", "check.api.tls", "grpc checks"),
    ("check.s = exec /bin/true\ncheck.s.success_before_passing = 2", "check.s.success_before_passing",
     "http, tcp and grpc checks"),
    ("check.s = exec", "check.s", "exec COMMAND"),
    ("check.s = exec 'unclosed", "check.s", "cannot split"),
    ("check = exec /bin/true", "check", "check.NAME = exec /bin/true"),
    ("check = grpc://127.0.0.1:9090", "check", "check.NAME"),
    ("check.a.b = http://h/", "check.a.b", "unknown key"),
    ("check.API = http://h/\ncheck.API.header.Bad Name = x", "check.api.header.Bad Name", "header name"),
    ("weights.passing = 0", "weights.passing", "from 1 to 65535"),
    ("weights.warning = -1", "weights.warning", "from 0 to 65535"),
    ("weights.passing = 65536", "weights.passing", "from 1 to 65535"),  # Consul: 400 Invalid Weights
    ("tagged_address.lan_ipv4 = example.com", "tagged_address.lan_ipv4", "IPv4"),  # Consul: 500
    ("tagged_address.wan_ipv6 = 1.2.3.4", "tagged_address.wan_ipv6", "IPv6"),
    ("tagged_address.x = [::1]:x", "tagged_address.x", "ADDRESS"),
    ("tagged_address.x = a:b:c", "tagged_address.x", "ADDRESS"),
    ("check.x = http://h:abc/", "check.x", "a check is"),  # Consul takes it, but it can never pass
    ("check.x = http://h:0/", "check.x", "a check is"),
    ("enable_tag_override = maybe", "enable_tag_override", "true or false"),
    ("tagged_address.wan = 203.0.113.5:99999", "tagged_address.wan", "1 to 65535"),
    ("tagged_address.wan = a b", "tagged_address.wan", "ADDRESS"),
    ("check.x = grpc://127.0.0.1/svc", "check.x", "grpc://HOST:PORT"),
])
def test_values_consul_would_refuse_are_named_problems(tmp_path, body, key, words):
    path = write(tmp_path, program("web") + f"[consul:web]\n{body}\n")
    configuration = config.read(path)
    assert configuration.services == {}
    assert [p.key for p in configuration.problems] == [key], configuration.problems
    assert words in configuration.problems[0].message
    assert str(configuration.problems[0]).startswith(f"{path}: [consul:web] {key} = ")


def test_large_thresholds_and_bracketed_ipv6_are_what_consul_takes(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\ncheck.x = tcp://127.0.0.1:1\n"
                 "check.x.success_before_passing = 5000000000\ntagged_address.lan_ipv6 = [::1]\n")
    spec = config.read(path).services["web"]
    assert spec.checks[0].success_before_passing == 5000000000
    assert spec.tagged_addresses == (TaggedAddress("lan_ipv6", "::1"),)


def test_a_further_service_needs_a_key_that_can_name_it(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web:a.b]\n")
    [problem] = config.read(path).problems
    assert problem.section == "consul:web:a.b" and "KEY of letters" in problem.message


def test_two_sections_for_one_further_service_are_ambiguous_but_main_and_further_are_not(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\n[consul:web:m]\n[consul: web:m]\n")
    configuration = config.read(path)
    assert set(configuration.services) == {"web"}
    assert {p.section for p in configuration.problems} == {"consul:web:m", "consul: web:m"}


def test_header_names_keep_their_case_and_check_names_do_not(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nCheck.Api = http://h/\ncheck.api.Header.X-Mixed-Case = v\n")
    [check] = config.read(path).services["web"].checks
    assert (check.name, check.headers) == ("api", (("X-Mixed-Case", "v"),))


def test_on_fatal_is_a_closed_set():
    assert {o.value for o in OnFatal} == {"deregister", "critical"}
    assert schema.BY_NAME["on_fatal"].parse("critical") is OnFatal.CRITICAL


def test_every_declared_key_is_recognised_and_documented():
    for key in schema.KEYS:
        example = key.name.replace("NAME", "x").replace("KEY", "k").replace("HEADER", "X-H")
        assert schema.key_of(example)[0] is key
        assert key.doc and key.shown
    assert f"`{schema.KEYS[0].name}`" in schema.reference()


def test_check_show_prints_every_registration_without_consul(tmp_path, capsys):
    path = write(tmp_path, program("web") + FULL)
    assert cli.main(["check", "-c", path, "--show", "--json"]) == 0
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert [(s["process"], s["service"]) for s in shown] == [("web", "web"), ("web", "web-metrics")]
    assert shown[0]["register"]["Weights"] == {"Passing": 10, "Warning": 1}
    assert "OK, 1 process(es) as 2 instance(s) of 2 service(s)" in err
    assert cli.main(["check", "-c", path, "--show"]) == 0
    text = capsys.readouterr().out
    assert "check api (web) (supervisord:" in text and "Method=POST" in text
    assert "TaggedAddresses: wan={Address=203.0.113.5, Port=80}" in text
    assert text.splitlines() == show.text(config.read(path), __import__("platform").node()) + [
        text.splitlines()[-1]]


def test_check_json_needs_show(tmp_path, capsys):
    path = write(tmp_path, program("web") + "[consul:web]\n")
    assert cli.main(["check", "-c", path, "--json"]) == 2
    assert "--json goes with --show" in capsys.readouterr().err
