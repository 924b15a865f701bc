"""Issue 3, items 9 (ACLs) and 10 (TLS): the listener under a real supervisord
against a real Consul agent with `default_policy = "deny"` and/or HTTPS."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest

from tests.faults import converge
from tests.harness import listener, run_cli, wait_for
from tests.secure_agent import CountingProxy, SecureAgent, TestCA
from tests.test_integration import listener_log, status_of, unique, wait_passing

CONSUL_VARIABLES = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_HTTP_TOKEN",
                    "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_CLIENT_CERT",
                    "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME")
# What the listener asks the agent for; the test itself reads only /v1/health and /v1/agent/self.
LISTENER_REQUESTS = r"/v1/agent/(services|checks|service/|check/)"


CLAIM_RULE = 'service "supervisord" { policy = "write" }'  # the listener's claim (claim.py)


def environment(**values: str) -> dict[str, str]:
    """supervisord's, so the listener's, environment: none of the runner's CONSUL_* variables, plus values."""
    return {**{name: "" for name in CONSUL_VARIABLES}, **values}


def program(name: str, keys: str = "") -> str:
    return f"[program:app]\ncommand=sleep 300\n[consul:app]\nname={name}\n{keys}\n"


def stanza(agent: SecureAgent, connection_options: str) -> str:
    """test_integration's listener stanza with these connection options instead of its --http-addr."""
    return listener(agent).replace(f" --http-addr {agent.http_addr}",
                                   f" {connection_options}" if connection_options else "")


def log_lines(sv, text: str) -> list[str]:
    return [line for line in listener_log(sv).splitlines() if text in line]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA with the agent's and a client's certificates, and a second CA nobody trusts."""
    ca = TestCA(tmp_path_factory.mktemp("pki"), "test-ca")
    other = TestCA(tmp_path_factory.mktemp("other-pki"), "other-ca")
    return SimpleNamespace(ca=ca, other=other,
                           server=ca.issue("server"),  # SAN IP:127.0.0.1, DNS:localhost
                           named_server=ca.issue("named-server", ips=(), dns=("consul.test",)),
                           client=ca.issue("client", client=True),
                           stranger=other.issue("stranger", client=True))


@pytest.fixture
def secure_agent(tmp_path):
    """make(**SecureAgent options) -> a started agent, stopped at teardown.

    Ask for this fixture before supervisord_factory: teardown runs in
    reverse, so every supervisord stops while its agent still answers.
    """
    started: list[SecureAgent] = []

    def make(**options) -> SecureAgent:
        agent = SecureAgent(tmp_path / f"agent{len(started)}", **options)
        started.append(agent)
        agent.start()
        return agent

    try:
        yield make
    finally:
        for agent in reversed(started):
            agent.stop()


# ---------------------------------------------------------------- 9. ACLs


@pytest.mark.fault("9a. ACL: write token works")
def test_acl_token_with_service_write_registers_heartbeats_and_deregisters(secure_agent, supervisord_factory,
                                                                           tmp_path, converged):
    agent = secure_agent(acl=True)
    name = unique("acl")
    # The least a token needs: write on the service's own name and the claim's; no node, agent or key rule.
    agent.policy(f"{name}-write", f'service "{name}" {{ policy = "write" }}\n{CLAIM_RULE}')
    token_file = tmp_path / "consul.token"
    token_file.write_text(agent.token(f"{name}-write")["SecretID"] + "\n")
    started = time.monotonic()
    sv = supervisord_factory(program(name, "ttl=3s") +
                             stanza(agent, f"--http-addr {agent.http_addr} --token-file {token_file}"),
                             env=environment())
    wait_passing(agent, name)
    took = time.monotonic() - started
    assert status_of(agent, name) == [("passing", f"RUNNING pid {sv.info('app')['pid']}")]
    # Heartbeats (PUT /v1/agent/check/pass, every ttl/3) are accepted too.
    wait_for(lambda: len(agent.requests_served("/v1/agent/check/pass/")) >= 3, message="three heartbeats")
    assert sv.ctl("stop", "app").returncode == 0
    wait_for(lambda: status_of(agent, name) == [], message="deregistered under ACLs")
    assert sv.ctl("start", "app").returncode == 0
    wait_passing(agent, name)
    assert agent.request_errors("Permission denied") == [] and ": 403 " not in listener_log(sv)
    converged(took, f'token with only service "{name}" and "supervisord" write; heartbeats, stop, start')


@pytest.mark.fault("9a. ACL: write token works")
def test_acl_token_without_the_claim_warns_once_and_works(secure_agent, supervisord_factory, tmp_path, converged):
    agent = secure_agent(acl=True)
    name = unique("noclaim")
    agent.policy(f"{name}-write", f'service "{name}" {{ policy = "write" }}')
    token_file = tmp_path / "consul.token"
    token_file.write_text(agent.token(f"{name}-write")["SecretID"])
    sv = supervisord_factory(program(name, "ttl=3s") +
                             stanza(agent, f"--http-addr {agent.http_addr} --token-file {token_file}"),
                             env=environment())
    started = time.monotonic()
    wait_passing(agent, name)
    took = time.monotonic() - started
    wait_for(lambda: len(agent.request_errors("Missing service:write on supervisord")) >= 2, timeout=75,
             message="the claim asked for twice")
    [line] = log_lines(sv, "going on without the claim")
    assert "403 Permission denied: Missing service:write on supervisord" in line and " WARNING " in line
    assert f"the token from --token-file {token_file} needs a policy granting service:write on supervisord" in line
    assert sv.ctl("stop", "app").returncode == 0
    wait_for(lambda: status_of(agent, name) == [], message="deregistered without the claim")
    converged(took, 'token without "supervisord" write: said once, registers, heartbeats, deregisters')


@pytest.mark.fault("9b. ACL: no/read-only token names the permission")
def test_acl_no_token_or_read_only_token_names_the_missing_permission_once(secure_agent, supervisord_factory,
                                                                           tmp_path, converged):
    agent = secure_agent(acl=True)
    agent.policy("read-only", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }')
    agent.policy("write-all", 'service_prefix "" { policy = "write" }')
    read_only = agent.token("read-only")
    token_file = tmp_path / "read-only.token"
    token_file.write_text(read_only["SecretID"])
    anonymous, reader = unique("anonymous"), unique("reader")
    no_token = supervisord_factory(program(anonymous) + stanza(agent, f"--http-addr {agent.http_addr}"),
                                   env=environment())
    with_token = supervisord_factory(program(reader) + stanza(agent, ""),
                                     env=environment(CONSUL_HTTP_ADDR=agent.http_addr,
                                                     CONSUL_HTTP_TOKEN_FILE=str(token_file)))

    def refusals(name: str) -> int:
        return len(agent.request_errors(f"Missing service:write on {name}"))

    # The same condition twice: the refused register is retried (every 30 s) and refused again.
    wait_for(lambda: refusals(anonymous) >= 2 and refusals(reader) >= 2, timeout=75,
             message="each listener's register refused twice")
    for sv, name, advice in (
            (no_token, anonymous, "no token was given, so the anonymous token was used: give a token whose "
                                  f"policy grants service:write on {anonymous}"),
            (with_token, reader, f"the token from CONSUL_HTTP_TOKEN_FILE {token_file} needs a policy granting "
                                 f"service:write on {reader}")):
        [line] = log_lines(sv, f"({name}): 403 ")  # once, however often it is refused
        assert (f"refused PUT /v1/agent/service/register ({name}): 403 Permission denied: "
                f"Missing service:write on {name}") in line
        assert advice in line
        assert status_of(agent, name) == [] and sv.state("consul") == "RUNNING"
    # The condition changes: the token gets write and the operator says so with HUP (rather than
    # waiting up to 30 s for the retry seen above); it registers, and that is logged once.
    refused = refusals(reader)
    granted = time.monotonic()
    agent.set_token_policies(read_only["AccessorID"], "read-only", "write-all")
    assert with_token.ctl("signal", "HUP", "consul").returncode == 0
    wait_passing(agent, reader, timeout=45)
    took = time.monotonic() - granted
    # The agent shows passing a moment before supervisord has copied the listener's log line.
    wait_for(lambda: log_lines(with_token, "the agent accepts it again"), message="the recovery logged")
    assert len(log_lines(with_token, "the agent accepts it again")) == 1
    assert len(log_lines(with_token, f"({reader}): 403 ")) == 1 and len(log_lines(no_token, f"({anonymous}): 403 ")) == 1
    converged(took, f"403 logged once over {refused} refusals; policy granted + HUP -> passing")


@pytest.mark.fault("9b. ACL: no/read-only token names the permission")
def test_acl_unknown_token_is_named_as_unknown_once(secure_agent, supervisord_factory, converged):
    agent = secure_agent(acl=True)
    name, unknown = unique("unknown"), "6b0e4f7e-1111-4222-8333-944455556666"
    sv = supervisord_factory(program(name) + stanza(agent, f"--http-addr {agent.http_addr}"),
                             env=environment(CONSUL_HTTP_TOKEN=unknown))
    def refusals() -> int:
        return len(agent.request_errors("url=/v1/agent/services", 'error="ACL not found"'))

    wait_for(lambda: refusals() >= 3, message="three refused reads")
    [line] = log_lines(sv, "ACL not found")
    assert ("refused GET /v1/agent/services: 403 ACL not found; the agent knows no token with the SecretID "
            "from CONSUL_HTTP_TOKEN: give an existing token's SecretID") in line
    assert unknown not in listener_log(sv)
    assert status_of(agent, name) == []
    converged(None, f"ACL not found logged once over {refusals()} refusals")


@pytest.mark.fault("9c. token never shown")
def test_token_never_in_the_log_or_ps(secure_agent, supervisord_factory, tmp_path, converged):
    agent = secure_agent(acl=True)
    agent.policy("write-all", 'service_prefix "" { policy = "write" }')
    from_file, from_env = agent.token("write-all")["SecretID"], agent.token("write-all")["SecretID"]
    token_file = tmp_path / "consul.token"
    token_file.write_text(from_file)
    by_file, by_env = unique("by-file"), unique("by-env")
    started = time.monotonic()
    file_sv = supervisord_factory(program(by_file) +
                                  stanza(agent, f"--http-addr {agent.http_addr} --token-file {token_file}"),
                                  env=environment())
    env_sv = supervisord_factory(program(by_env) + stanza(agent, f"--http-addr {agent.http_addr}"),
                                 env=environment(CONSUL_HTTP_TOKEN=from_env))
    wait_passing(agent, by_file)
    wait_passing(agent, by_env)
    took = time.monotonic() - started
    for sv in (file_sv, env_sv):  # more to log: deregister and register again, at --log-level debug
        sv.ctl("restart", "app")
    wait_for(lambda: len(log_lines(file_sv, "registered")) >= 3 and len(log_lines(env_sv, "registered")) >= 3,
             message="restarts logged")
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=30, check=True).stdout
    for sv, secret, source in ((file_sv, from_file, f"token from --token-file {token_file}"),
                               (env_sv, from_env, "token from CONSUL_HTTP_TOKEN")):
        pid = sv.info("consul")["pid"]
        [row] = [row for row in ps.splitlines() if row.split(None, 1)[0] == str(pid)]
        assert "supervisor_consul listen" in row  # the right process was looked at
        assert secret not in ps
        assert secret.encode() not in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        log = listener_log(sv)
        assert source in log and " DEBUG " in log
        assert secret not in log and secret not in sv.log_text()
        assert secret not in agent.log_text()  # sent as a header, never in a URL the agent logs
    converged(took, "not in the debug log, supervisord's log, ps or /proc/PID/cmdline")


@pytest.mark.integration
@pytest.mark.fault("9c. token never shown")
def test_cli_output_never_shows_the_token(tmp_path, converged):
    secret = "4f1c2b3a-9d8e-4a7b-8c6d-5e4f3a2b1c0d"
    configuration = tmp_path / "supervisord.conf"
    configuration.write_text("[supervisord]\n[program:a]\ncommand=sleep 1\n[consul:a]\nport=80\n")
    token_file, missing = tmp_path / "consul.token", str(tmp_path / "missing")
    token_file.write_text(secret)
    listen = ["listen", "-c", str(configuration)]
    runs = [
        (["--help"], 0, "listen"),
        (["--version"], 0, "supervisor-consul"),
        (["listen", "--help"], 0, "--token-file"),
        (["check", "-c", str(configuration)], 0, "OK"),
        ([*listen, "--token-file", missing], 2, f"cannot read the Consul token file {missing}"),
        ([*listen, "--token-file", str(token_file), "--http-addr", "consul:http"], 2, "--http-addr 'consul:http'"),
        ([*listen, "--token", secret, "--http-addr", "ftp://127.0.0.1:1"], 2, "--http-addr 'ftp://127.0.0.1:1'"),
        ([*listen, "--token-file", str(token_file), "--http-addr", "https://127.0.0.1:1", "--ca-file", missing], 2,
         f"--ca-file/CONSUL_CACERT {missing}"),
    ]
    for args, status, expected in runs:
        # The token is in the environment too, where a careless message might pick it up.
        run = run_cli(*args, env={**os.environ, **environment(CONSUL_HTTP_TOKEN=secret)})
        output = run.stdout + run.stderr
        assert (run.returncode, expected in output) == (status, True), (args, output)
        assert secret not in output, args
    converged(None, f"{len(runs)} commands: help, version, check, error exits")


def rotate(token_file: pathlib.Path, secret: str, by_rename: bool) -> None:
    """As consul-template rewrites a file in place, or as Vault agent's sink replaces it."""
    if by_rename:
        fresh = token_file.with_name(token_file.name + ".new")
        fresh.write_text(secret + "\n")
        os.replace(fresh, token_file)
    else:
        token_file.write_text(secret + "\n")


def two_tokens(secure_agent, tmp_path: pathlib.Path, prefix: str):
    """An ACL agent, a service name, two tokens that may write it (the old and the new)
    and a token file holding the old one."""
    agent = secure_agent(acl=True)
    name = unique(prefix)
    agent.policy(f"{name}-write", f'service "{name}" {{ policy = "write" }}\n{CLAIM_RULE}')
    old, new = agent.token(f"{name}-write"), agent.token(f"{name}-write")
    token_file = tmp_path / "consul.token"
    token_file.write_text(old["SecretID"])
    return agent, name, old, new, token_file


def instance_statuses(agent: SecureAgent, name: str) -> list[str]:
    """The agent's own view (the catalog's lags on output): each instance's health, its worst check's
    status (its liveness check, the alias of the claim, turns critical when the claim's heartbeat stops)."""
    worst: dict[str, str] = {}
    order = ("passing", "warning", "critical")
    for check in agent.checks().values():
        if check["ServiceName"] == name:
            seen = worst.get(check["ServiceID"], "passing")
            worst[check["ServiceID"]] = max(seen, check["Status"], key=order.index)
    return list(worst.values())


@pytest.mark.fault("9d. ACL: token file rotated in place")
@pytest.mark.parametrize("by_rename", [False, True], ids=["--token-file rewritten", "CONSUL_HTTP_TOKEN_FILE renamed"])
def test_a_rotated_token_file_is_used_without_a_restart(secure_agent, supervisord_factory, tmp_path, converged,
                                                       by_rename):
    agent, name, old, new, token_file = two_tokens(secure_agent, tmp_path, "rotated")
    options, env = (f"--http-addr {agent.http_addr}", environment(CONSUL_HTTP_TOKEN_FILE=str(token_file))) \
        if by_rename else (f"--http-addr {agent.http_addr} --token-file {token_file}", environment())
    sv = supervisord_factory(program(name, "ttl=3s") + stanza(agent, options), env=env)
    wait_passing(agent, name)
    pid = sv.info("consul")["pid"]

    rotated = time.monotonic()
    rotate(token_file, new["SecretID"], by_rename)
    agent.delete_token(old["AccessorID"])  # as the rotating tool revokes the old one
    wait_for(lambda: log_lines(sv, "changed; using the new one"), timeout=10, message="the new token picked up")
    picked_up = time.monotonic() - rotated
    # Two TTLs of heartbeats after the old token is gone: the instance never turns critical.
    heartbeats = len(agent.requests_served("/v1/agent/check/pass/"))
    statuses = []
    while time.monotonic() - rotated < 2 * 3:
        statuses.extend(instance_statuses(agent, name))
        time.sleep(0.1)
    assert set(statuses) == {"passing"}, statuses
    assert len(agent.requests_served("/v1/agent/check/pass/")) >= heartbeats + 3
    # A call that met the old token's deletion first was retried with the new one: no refusal is logged.
    assert not log_lines(sv, "ACL not found") and not log_lines(sv, ": 403 ")
    assert old["SecretID"] not in listener_log(sv) and new["SecretID"] not in listener_log(sv)
    seconds = converge(agent, sv)
    assert sv.info("consul")["pid"] == pid  # no restart needed
    converged(picked_up + seconds, f"new token used {picked_up:.1f} s after the file changed; "
                                   f"{len(statuses)} samples over 2 ttl, all passing")


@pytest.mark.fault("9d. ACL: token file rotated in place")
def test_a_token_deleted_before_its_file_is_rotated_is_named_then_replaced(secure_agent, supervisord_factory,
                                                                          tmp_path, converged):
    agent, name, old, new, token_file = two_tokens(secure_agent, tmp_path, "revoked")
    sv = supervisord_factory(program(name, "ttl=3s") +
                             stanza(agent, f"--http-addr {agent.http_addr} --token-file {token_file}"),
                             env=environment())
    wait_passing(agent, name)

    agent.delete_token(old["AccessorID"])  # revoked before the new token is written
    wait_for(lambda: log_lines(sv, "ACL not found"), timeout=10, message="the refusal logged")
    [line] = log_lines(sv, "ACL not found")
    assert f"the agent knows no token with the SecretID from --token-file {token_file}" in line
    wait_for(lambda: instance_statuses(agent, name) == ["critical"], timeout=10, message="critical within ttl")

    rotated = time.monotonic()
    rotate(token_file, new["SecretID"], by_rename=False)
    wait_for(lambda: instance_statuses(agent, name) == ["passing"], timeout=10, message="passing with the new token")
    took = time.monotonic() - rotated
    assert sv.ctl("signal", "HUP", "consul").returncode == 0  # HUP reads it too, and changes nothing now
    seconds = converge(agent, sv)
    assert len(log_lines(sv, "ACL not found")) == 1
    converged(took + seconds, f"old token revoked first: ACL not found named the file once; "
                              f"passing {took:.1f} s after the file changed")


# ---------------------------------------------------------------- 10. TLS


@pytest.mark.fault("10a. TLS verified by default")
def test_tls_with_the_agents_ca_from_an_option_or_the_variables(secure_agent, supervisord_factory, pki,
                                                                converged):
    agent = secure_agent(tls=pki.server, ca=pki.ca)
    by_option, by_variables = unique("tls-option"), unique("tls-variables")
    started = time.monotonic()
    option_sv = supervisord_factory(
        program(by_option) + stanza(agent, f"--http-addr https://{agent.https_addr} --ca-file {pki.ca.cert}"),
        env=environment())
    variables_sv = supervisord_factory(program(by_variables) + stanza(agent, ""), env=environment(
        CONSUL_HTTP_ADDR=agent.https_addr, CONSUL_HTTP_SSL="true", CONSUL_CACERT=str(pki.ca.cert)))
    wait_passing(agent, by_option)
    took = time.monotonic() - started
    wait_passing(agent, by_variables)
    for sv in (option_sv, variables_sv):
        assert log_lines(sv, f"Consul agent https://{agent.https_addr}, no token")
        assert not log_lines(sv, " WARNING ")
    converged(took, "https with --ca-file; CONSUL_HTTP_SSL=true + CONSUL_CACERT")


@pytest.mark.fault("10a. TLS verified by default")
def test_tls_without_a_ca_option_trusts_only_the_system_store(secure_agent, supervisord_factory, pki, converged):
    agent = secure_agent(tls=pki.server, ca=pki.ca)
    untrusted, trusted = unique("untrusted"), unique("system-store")
    https = f"--http-addr https://{agent.https_addr}"
    untrusted_sv = supervisord_factory(program(untrusted) + stanza(agent, https), env=environment())
    started = time.monotonic()
    # The system trust store, as the Consul CLI's: OpenSSL reads SSL_CERT_FILE as Go does.
    supervisord_factory(program(trusted) + stanza(agent, https), env=environment(SSL_CERT_FILE=str(pki.ca.cert)))
    wait_passing(agent, trusted)
    took = time.monotonic() - started
    [line] = wait_for(lambda: log_lines(untrusted_sv, "TLS with the Consul agent"), message="the TLS error")
    assert f"TLS with the Consul agent at https://{agent.https_addr} failed: [SSL: CERTIFICATE_VERIFY_FAILED]" in line
    assert ("the agent's certificate is not signed by the system's CAs: give the CA that signed it with "
            "--ca-file/CONSUL_CACERT") in line
    assert status_of(agent, untrusted) == []
    converged(took, "unknown CA refused; system store (SSL_CERT_FILE) trusted")


@pytest.mark.fault("10a. TLS verified by default")
def test_tls_ca_path_and_server_name(secure_agent, supervisord_factory, pki, tmp_path, converged):
    agent = secure_agent(tls=pki.named_server, ca=pki.ca)  # a certificate for consul.test, not 127.0.0.1
    ca_path = tmp_path / "cas"
    (ca_path / "nested").mkdir(parents=True)
    shutil.copy(pki.other.cert, ca_path / "other.pem")
    shutil.copy(pki.ca.cert, ca_path / "nested" / "test-ca.crt")  # Consul's way: any names, any depth
    named, unnamed = unique("server-name"), unique("no-server-name")
    started = time.monotonic()
    supervisord_factory(program(named) + stanza(
        agent, f"--http-addr https://{agent.https_addr} --ca-path {ca_path} --tls-server-name consul.test"),
        env=environment())
    unnamed_sv = supervisord_factory(program(unnamed) + stanza(agent, ""), env=environment(
        CONSUL_HTTP_ADDR=f"https://{agent.https_addr}", CONSUL_CAPATH=str(ca_path)))
    wait_passing(agent, named)
    took = time.monotonic() - started
    [line] = wait_for(lambda: log_lines(unnamed_sv, "TLS with the Consul agent"), message="the TLS error")
    assert "doesn't match" in line or "mismatch" in line
    assert ("the agent's certificate is not issued for 127.0.0.1: connect by a name it holds, or give that name "
            "with --tls-server-name/CONSUL_TLS_SERVER_NAME") in line
    assert status_of(agent, unnamed) == []
    converged(took, "--ca-path + --tls-server-name; a name mismatch refused")


@pytest.mark.fault("10b. TLS wrong CA: clear error, no plain HTTP")
def test_tls_wrong_ca_is_one_clear_error_and_never_plain_http(secure_agent, supervisord_factory, pki, converged):
    agent = secure_agent(tls=pki.server, ca=pki.ca)  # its plain HTTP port stays open beside HTTPS
    name = unique("wrong-ca")
    with CountingProxy(agent.https_port) as https:  # in front of the HTTPS port, to count the attempts
        sv = supervisord_factory(
            program(name) + stanza(agent, f"--http-addr https://{https.addr} --ca-file {pki.other.cert}"),
            env=environment())
        wait_for(lambda: https.connections >= 4, timeout=30, message="four TLS attempts")
        [line] = log_lines(sv, "TLS with the Consul agent")  # once, however often it is retried
        attempts = https.connections
    assert f"TLS with the Consul agent at https://{https.addr} failed: [SSL: CERTIFICATE_VERIFY_FAILED]" in line
    assert (f"the agent's certificate is not signed by the CA in --ca-file/CONSUL_CACERT {pki.other.cert}: "
            f"give the CA that signed it with --ca-file/CONSUL_CACERT") in line
    # Nothing reached the agent on either port: it logs every request it serves.
    assert agent.requests_served(LISTENER_REQUESTS) == []
    assert status_of(agent, name) == [] and sv.state("consul") == "RUNNING"
    converged(None, f"{attempts} TLS attempts, 1 log line, 0 requests served")


@pytest.mark.fault("10b. TLS wrong CA: clear error, no plain HTTP")
def test_consul_http_ssl_makes_a_bare_address_https(secure_agent, supervisord_factory, pki, converged):
    agent = secure_agent(tls=pki.server, ca=pki.ca)
    with_ssl, without_ssl = unique("ssl-true"), unique("ssl-unset")
    ssl_sv = supervisord_factory(program(with_ssl) + stanza(agent, ""), env=environment(
        CONSUL_HTTP_ADDR=agent.https_addr, CONSUL_HTTP_SSL="true", CONSUL_CACERT=str(pki.other.cert)))
    # The opposite mistake, for contrast: plain HTTP to the HTTPS port.
    plain_sv = supervisord_factory(program(without_ssl) + stanza(agent, ""),
                                   env=environment(CONSUL_HTTP_ADDR=agent.https_addr))
    [line] = wait_for(lambda: log_lines(ssl_sv, "TLS with the Consul agent"), message="the TLS error")
    assert f"at https://{agent.https_addr} failed: [SSL: CERTIFICATE_VERIFY_FAILED]" in line
    assert "HTTP request to an HTTPS server" not in listener_log(ssl_sv)
    [line] = wait_for(lambda: log_lines(plain_sv, "HTTP request to an HTTPS server"), message="the 400")
    assert (f"Consul agent at http://{agent.https_addr} refused GET /v1/agent/services: 400 Client sent an HTTP "
            f"request to an HTTPS server.; that port speaks https: use --http-addr https://{agent.https_addr} "
            f"or CONSUL_HTTP_SSL=true") in line
    assert agent.requests_served(LISTENER_REQUESTS) == []
    assert status_of(agent, with_ssl) == [] and status_of(agent, without_ssl) == []
    converged(None, "CONSUL_HTTP_SSL=true: https, TLS error; unset: the 400 says so")


@pytest.mark.fault("10c. TLS client certificate")
def test_tls_client_certificate_from_options_or_variables(secure_agent, supervisord_factory, pki, converged):
    agent = secure_agent(tls=pki.server, ca=pki.ca, verify_incoming=True)
    by_option, by_variables = unique("mtls-option"), unique("mtls-variables")
    started = time.monotonic()
    supervisord_factory(program(by_option) + stanza(
        agent, f"--http-addr https://{agent.https_addr} --ca-file {pki.ca.cert} "
               f"--client-cert {pki.client.cert} --client-key {pki.client.key}"), env=environment())
    supervisord_factory(program(by_variables) + stanza(agent, ""), env=environment(
        CONSUL_HTTP_ADDR=agent.https_addr, CONSUL_HTTP_SSL="true", CONSUL_CACERT=str(pki.ca.cert),
        CONSUL_CLIENT_CERT=str(pki.client.cert), CONSUL_CLIENT_KEY=str(pki.client.key)))
    wait_passing(agent, by_option)
    took = time.monotonic() - started
    wait_passing(agent, by_variables)
    converged(took, "verify_incoming_https; --client-cert/--client-key and CONSUL_CLIENT_CERT/KEY")


@pytest.mark.fault("10c. TLS client certificate")
def test_tls_client_certificate_missing_or_from_another_ca(secure_agent, supervisord_factory, pki, tmp_path,
                                                            converged):
    agent = secure_agent(tls=pki.server, ca=pki.ca, verify_incoming=True)
    missing, stranger = unique("no-cert"), unique("stranger")
    https = f"--http-addr https://{agent.https_addr} --ca-file {pki.ca.cert}"
    missing_sv = supervisord_factory(program(missing) + stanza(agent, https), env=environment())
    stranger_sv = supervisord_factory(program(stranger) + stanza(
        agent, f"{https} --client-cert {pki.stranger.cert} --client-key {pki.stranger.key}"), env=environment())
    [line] = wait_for(lambda: log_lines(missing_sv, "TLS with the Consul agent"), message="no certificate: error")
    assert f"TLS with the Consul agent at https://{agent.https_addr} failed: " in line
    assert ("the agent may require a client certificate (verify_incoming): give --client-cert and --client-key "
            "(CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)") in line
    [line] = wait_for(lambda: log_lines(stranger_sv, "TLS with the Consul agent"), message="stranger: error")
    assert (f"the agent refused the client certificate {pki.stranger.cert}: it must be signed by a CA in the "
            f"agent's ca_file") in line
    assert status_of(agent, missing) == [] and status_of(agent, stranger) == []
    assert agent.requests_served(LISTENER_REQUESTS) == []
    # A certificate and key that cannot be loaded stop the listener at start, with one line.
    run = run_cli("listen", "-c", str(missing_sv.conf), *https.split(), "--client-cert",
                            str(pki.client.key), "--client-key", str(pki.client.cert),
                            env={**os.environ, **environment()})
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1
    assert "--client-cert/--client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)" in run.stderr
    converged(None, "no certificate, a stranger's, an unloadable one: each named")
