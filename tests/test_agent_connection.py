"""agent.connection(): options, then the Consul CLI's CONSUL_* variables, then defaults.

No network: Agent() only builds a py-consul client.
"""
from __future__ import annotations

import shutil
import ssl
from types import SimpleNamespace

import pytest

from supervisor_consul.agent import Agent, ConsulError
from supervisor_consul.connection import Connection, SettingError, connection
from tests.secure_agent import TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Real PEM files: a CA, and a client certificate and key it signed."""
    ca = TestCA(tmp_path_factory.mktemp("pki"), "unit-ca")
    client = ca.issue("client", client=True)
    return SimpleNamespace(ca=str(ca.cert), cert=str(client.cert), key=str(client.key))


@pytest.fixture
def token_file(tmp_path):
    def make(text: str, name: str = "token") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return make


# -- address ---------------------------------------------------------------------------


def test_defaults():
    conn = connection(env={})
    assert conn == Connection(scheme="http", host="127.0.0.1", port=8500)
    assert conn.endpoint == "http://127.0.0.1:8500"
    assert conn.verify is True


@pytest.mark.parametrize("addr, scheme, host, port", [
    ("10.0.0.5:8600", "http", "10.0.0.5", 8600),
    ("consul.local:8500", "http", "consul.local", 8500),
    ("consul.local", "http", "consul.local", 8500),
    ("http://10.0.0.5:8600", "http", "10.0.0.5", 8600),
    ("http://10.0.0.5", "http", "10.0.0.5", 8500),
    ("https://consul.local", "https", "consul.local", 8501),
    ("https://consul.local:8443", "https", "consul.local", 8443),
    ("https://consul.local:8443/", "https", "consul.local", 8443),
])
def test_http_addr_forms(addr, scheme, host, port):
    conn = connection(http_addr=addr, env={})
    assert (conn.scheme, conn.host, conn.port) == (scheme, host, port)


def test_env_address_used_without_option():
    conn = connection(env={"CONSUL_HTTP_ADDR": "10.1.1.1:9500"})
    assert (conn.scheme, conn.host, conn.port) == ("http", "10.1.1.1", 9500)


def test_option_beats_env():
    conn = connection(http_addr="10.2.2.2:8500", env={"CONSUL_HTTP_ADDR": "10.1.1.1:9500"})
    assert conn.host == "10.2.2.2"


@pytest.mark.parametrize("value", ["true", "1", "TRUE", "yes"])
def test_consul_http_ssl_makes_a_bare_address_https(value):
    assert connection(env={"CONSUL_HTTP_SSL": value}).endpoint == "https://127.0.0.1:8500"
    assert connection(http_addr="consul.local:8501", env={"CONSUL_HTTP_SSL": value}).scheme == "https"
    assert connection(http_addr="consul.local", env={"CONSUL_HTTP_SSL": value}).endpoint == \
        "https://consul.local:8501"


def test_consul_http_ssl_false():
    assert connection(env={"CONSUL_HTTP_SSL": "false"}).scheme == "http"


def test_bad_consul_http_ssl_is_a_setting_error():
    with pytest.raises(SettingError, match="CONSUL_HTTP_SSL"):
        connection(env={"CONSUL_HTTP_SSL": "sometimes"})


def test_consul_http_ssl_verify_false():
    assert connection(env={"CONSUL_HTTP_SSL_VERIFY": "false"}).verify is False


@pytest.mark.parametrize("addr", ["ftp://consul.local:8500", "consul.local:abc", "consul.local:99999",
                                  ":8500", "http://consul.local:8500/v1", "unix:///run/consul.sock"])
def test_bad_option_address_names_the_option(addr):
    with pytest.raises(SettingError, match="--http-addr") as raised:
        connection(http_addr=addr, env={})
    assert addr in str(raised.value)


def test_bad_env_address_names_the_variable():
    with pytest.raises(SettingError, match="CONSUL_HTTP_ADDR"):
        connection(env={"CONSUL_HTTP_ADDR": "consul.local:abc"})


def test_ipv6_address():
    conn = connection(http_addr="[::1]:8500", env={})
    assert conn.endpoint == "http://[::1]:8500"
    assert Agent(conn).client.http.base_uri == "http://[::1]:8500"


# -- token -------------------------------------------------------------------------------


def test_no_token():
    assert connection(env={}).token is None


def test_token_option():
    assert connection(token="opt", env={}).token == "opt"


def test_token_env():
    assert connection(env={"CONSUL_HTTP_TOKEN": "env"}).token == "env"


def test_token_option_beats_env():
    assert connection(token="opt", env={"CONSUL_HTTP_TOKEN": "env"}).token == "opt"


def test_token_file_option(token_file):
    assert connection(token_file=token_file("from-file\n"), env={}).token == "from-file"


def test_token_file_env(token_file):
    assert connection(env={"CONSUL_HTTP_TOKEN_FILE": token_file(" from-env-file \n")}).token == "from-env-file"


def test_token_file_option_beats_token_file_env(token_file):
    env = {"CONSUL_HTTP_TOKEN_FILE": token_file("env-file", "a")}
    assert connection(token_file=token_file("opt-file", "b"), env=env).token == "opt-file"


def test_token_option_beats_token_files(token_file):
    env = {"CONSUL_HTTP_TOKEN_FILE": token_file("env-file", "a")}
    assert connection(token="opt", token_file=token_file("opt-file", "b"), env=env).token == "opt"


def test_token_option_means_the_token_file_is_not_read(tmp_path):
    assert connection(token="opt", token_file=str(tmp_path / "missing"), env={}).token == "opt"


def test_token_file_option_beats_token_env(token_file):
    assert connection(token_file=token_file("opt-file"), env={"CONSUL_HTTP_TOKEN": "env"}).token == "opt-file"


def test_token_file_env_beats_token_env_as_consul_does(token_file):
    env = {"CONSUL_HTTP_TOKEN_FILE": token_file("env-file"), "CONSUL_HTTP_TOKEN": "env"}
    assert connection(env=env).token == "env-file"


def test_unreadable_token_file(tmp_path):
    missing = str(tmp_path / "no-such-token")
    with pytest.raises(SettingError, match="token file") as raised:
        connection(token_file=missing, env={})
    assert missing in str(raised.value)


def test_empty_token_file_is_a_setting_error(token_file):
    with pytest.raises(SettingError, match="--token-file: the Consul token file .* is empty"):
        connection(token_file=token_file(" \n"), env={})


def test_token_source_is_named_never_the_token(token_file):
    path = token_file("secret-from-file")
    assert connection(token="t", env={}).token_source == "--token"
    assert connection(token_file=path, env={}).token_source == f"--token-file {path}"
    assert connection(env={"CONSUL_HTTP_TOKEN_FILE": path}).token_source == f"CONSUL_HTTP_TOKEN_FILE {path}"
    assert connection(env={"CONSUL_HTTP_TOKEN": "t"}).token_source == "CONSUL_HTTP_TOKEN"
    assert connection(env={}).token_source == ""
    assert "secret-from-file" not in repr(connection(token_file=path, env={}))


def test_unreadable_token_file_from_env(tmp_path):
    with pytest.raises(SettingError, match="token file"):
        connection(env={"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "no-such-token")})


# -- TLS ----------------------------------------------------------------------------------


def test_client_cert_without_key():
    with pytest.raises(SettingError, match="client-key"):
        connection(client_cert="/etc/consul/client.pem", env={})


def test_client_key_without_cert_from_env():
    with pytest.raises(SettingError, match="client-cert"):
        connection(env={"CONSUL_CLIENT_KEY": "/etc/consul/client-key.pem"})


def test_tls_files_from_options_and_env():
    conn = connection(client_cert="/c.pem", env={"CONSUL_CLIENT_KEY": "/k.pem", "CONSUL_CACERT": "/ca.pem"})
    assert (conn.client_cert, conn.client_key, conn.ca_file) == ("/c.pem", "/k.pem", "/ca.pem")
    assert connection(ca_file="/opt.pem", env={"CONSUL_CACERT": "/ca.pem"}).ca_file == "/opt.pem"


# -- the py-consul client ---------------------------------------------------------------------


def test_agent_uses_the_resolved_token_not_the_environment(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    conn = connection(token="resolved", env={})
    agent = Agent(conn)
    assert agent.client.token == "resolved"
    assert agent.client.prepare_headers()["X-Consul-Token"] == "resolved"


def test_agent_without_token_sends_none_even_with_env(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    agent = Agent(connection(env={}))
    assert agent.client.token is None
    assert "X-Consul-Token" not in agent.client.prepare_headers()


def test_agent_client_address_and_tls(pki):
    conn = connection(http_addr="https://consul.local:8443", ca_file=pki.ca, client_cert=pki.cert,
                      client_key=pki.key, env={})
    agent = Agent(conn)
    assert agent.endpoint == "https://consul.local:8443"
    assert agent.client.http.base_uri == "https://consul.local:8443"
    assert agent.client.http.verify == pki.ca
    assert agent.client.http.cert == (pki.cert, pki.key)
    assert agent.client.http.session.trust_env is False


def test_https_verifies_with_our_own_context_only(pki):
    agent = Agent(connection(http_addr="https://consul.local:8443", ca_file=pki.ca, env={}))
    adapter = agent.client.http.session.get_adapter("https://consul.local:8443/v1/agent/services")
    kwargs = adapter.poolmanager.connection_pool_kw
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED and "server_hostname" not in kwargs
    # Only the CA given, not certifi's bundle on top (requests' default).
    assert [c["subject"] for c in kwargs["ssl_context"].get_ca_certs()] == [((("commonName", "unit-ca"),),)]


def test_tls_server_name_is_sni_and_the_name_checked(pki):
    agent = Agent(connection(http_addr="https://127.0.0.1:8501", ca_file=pki.ca, tls_server_name="consul.test",
                             env={}))
    kwargs = agent.client.http.session.get_adapter("https://127.0.0.1:8501/").poolmanager.connection_pool_kw
    assert kwargs["server_hostname"] == kwargs["assert_hostname"] == "consul.test"
    assert connection(env={"CONSUL_TLS_SERVER_NAME": "env.test"}).tls_server_name == "env.test"
    assert connection(tls_server_name="opt.test", env={"CONSUL_TLS_SERVER_NAME": "env.test"}).tls_server_name \
        == "opt.test"


def test_verify_off_mounts_nothing(pki):
    agent = Agent(connection(http_addr="https://127.0.0.1:8501", env={"CONSUL_HTTP_SSL_VERIFY": "false"}))
    assert agent.client.http.verify is False
    assert "ssl_context" not in agent.client.http.session.get_adapter("https://x/").poolmanager.connection_pool_kw


def test_plain_http_ignores_tls_files_as_consul_does(tmp_path):
    conn = connection(ca_file=str(tmp_path / "missing.pem"), env={"CONSUL_CAPATH": str(tmp_path / "none")})
    assert conn.scheme == "http"


def test_missing_ca_file_is_a_setting_error_at_start(tmp_path):
    with pytest.raises(SettingError, match="--ca-file/CONSUL_CACERT .*No such file"):
        connection(http_addr="https://127.0.0.1:8501", env={"CONSUL_CACERT": str(tmp_path / "missing.pem")})


def test_unloadable_client_certificate_is_a_setting_error_at_start(pki):
    with pytest.raises(SettingError, match="--client-cert/--client-key"):
        connection(http_addr="https://127.0.0.1:8501", ca_file=pki.ca, client_cert=pki.key, client_key=pki.cert,
                   env={})


def test_ca_path_reads_every_certificate_below_it_as_consul_does(pki, tmp_path):
    capath = tmp_path / "cas"
    (capath / "nested").mkdir(parents=True)
    other = TestCA(tmp_path / "other", "other-ca")
    shutil.copy(other.cert, capath / "a.pem")
    shutil.copy(pki.ca, capath / "nested" / "b.crt")  # no hashed names, any suffix
    conn = connection(http_addr="https://127.0.0.1:8501", env={"CONSUL_CAPATH": str(capath)})
    assert conn.ca_path == str(capath) and conn.ca_file is None
    context = Agent(conn).client.http.session.get_adapter("https://x/").poolmanager.connection_pool_kw["ssl_context"]
    assert sorted(c["subject"][0][0][1] for c in context.get_ca_certs()) == ["other-ca", "unit-ca"]


def test_ca_file_beats_ca_path(pki, tmp_path):
    conn = connection(http_addr="https://127.0.0.1:8501", ca_file=pki.ca, ca_path=str(tmp_path / "none"), env={})
    context = Agent(conn).client.http.session.get_adapter("https://x/").poolmanager.connection_pool_kw["ssl_context"]
    assert [c["subject"][0][0][1] for c in context.get_ca_certs()] == ["unit-ca"]


@pytest.mark.parametrize("layout, message", [
    ({}, "no CA certificate in it"),
    ({"notes.txt": "not a certificate"}, "notes.txt holds no PEM certificate"),
    (None, "not a directory"),
])
def test_bad_ca_path(tmp_path, layout, message):
    capath = tmp_path / "cas"
    if layout is not None:
        capath.mkdir()
        for name, text in layout.items():
            (capath / name).write_text(text)
    with pytest.raises(SettingError, match=f"--ca-path/CONSUL_CAPATH {capath}: .*{message}"):
        connection(http_addr="https://127.0.0.1:8501", ca_path=str(capath), env={})


# -- what a refusal says ----------------------------------------------------------------------


def _refusing(conn: Connection, mocker, error: Exception) -> Agent:
    agent = Agent(conn)
    mocker.patch.object(agent.client.agent.service, "register", side_effect=error)
    return agent


def _register_error(agent: Agent) -> str:
    with pytest.raises(ConsulError) as raised:
        agent._write("PUT /v1/agent/service/register (web)", agent.client.agent.service.register, "web",
                     service="web")
    assert raised.value.status == 403 and not raised.value.unreachable
    return str(raised.value)


def test_403_without_token_names_the_permission_and_the_anonymous_token(mocker):
    import consul
    agent = _refusing(connection(env={}), mocker, consul.ACLPermissionDenied("Permission denied"))
    message = _register_error(agent)
    assert "403 Permission denied" in message and "needs" not in message
    assert "no token was given, so the anonymous token was used" in message
    assert "grants service:write on web" in message


def test_403_with_a_token_names_where_it_came_from_never_the_token(mocker, token_file):
    import consul
    secret = "5e1f9a2c-6d0b-4c8e-9f3a-7b2d1e0c4a99"
    path = token_file(secret)
    agent = _refusing(connection(token_file=path, env={}), mocker,
                      consul.ACLPermissionDenied(f"Permission denied: Missing service:write on web ({secret})"))
    message = _register_error(agent)
    assert f"the token from --token-file {path} needs a policy granting service:write on web" in message
    assert secret not in message and "<token>" in message


def test_403_acl_not_found_says_the_token_is_unknown(mocker):
    import consul
    agent = _refusing(connection(env={"CONSUL_HTTP_TOKEN": "0000-unknown-token"}), mocker,
                      consul.ACLPermissionDenied("ACL not found"))
    message = _register_error(agent)
    assert "the agent knows no token with the SecretID from CONSUL_HTTP_TOKEN" in message
    assert "0000-unknown-token" not in message


def test_a_404_answer_is_an_error_not_a_success(mocker):
    from supervisor_consul import agent
    from supervisor_consul.health import Health
    client = agent.Agent(connection(http_addr="127.0.0.1:1", env={}))
    mocker.patch.object(client.client.agent.check, "ttl_pass", return_value=False)
    with pytest.raises(agent.ConsulError) as raised:
        client.update_ttl("x:process", Health("passing", "RUNNING pid 1"), "web")
    assert raised.value.status == 404 and raised.value.lost


def test_unverified_tls_is_said_once_not_on_every_request(caplog, recwarn):
    agent = Agent(connection(http_addr="https://127.0.0.1:1", env={"CONSUL_HTTP_SSL_VERIFY": "false"}))
    assert "is not verified" in caplog.text
    for _ in range(2):
        with pytest.raises(ConsulError):
            agent.read_owned("owner")
    assert not [w for w in recwarn if "Unverified HTTPS" in str(w.message)]


@pytest.mark.parametrize("token", ["two\nlines-token", "pasted’quote-token", "with space-token"])
def test_a_token_that_cannot_be_a_header_is_a_setting_error_that_never_echoes_it(tmp_path, token):
    path = tmp_path / "token"
    path.write_text(token)
    with pytest.raises(SettingError) as error:
        connection(token_file=str(path), env={})
    assert token not in str(error.value) and "token" in str(error.value)


def test_a_token_is_redacted_before_a_message_is_cut():
    from supervisor_consul.agent import _text
    token = "s3cr3t-token-abcdef"
    assert token[:8] not in _text(ValueError("x" * 290 + token), token)


# -- basic auth, variables that mean nothing here (issue 14) ------------------------------


def test_http_auth_from_the_option_or_consul_http_auth():
    assert connection(http_auth="ops:s3cret", env={}).http_auth == ("ops", "s3cret")
    assert connection(env={"CONSUL_HTTP_AUTH": "ops"}).http_auth == ("ops", "")
    assert connection(http_auth="a:b", env={"CONSUL_HTTP_AUTH": "c:d"}).http_auth == ("a", "b")
    assert "s3cret" not in repr(connection(http_auth="ops:s3cret", env={}))


def test_http_auth_reaches_the_agent_as_basic_auth():
    import base64
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        agent = Agent(connection(http_addr=f"127.0.0.1:{server.server_address[1]}", http_auth="ops:s3cret", env={}))
        agent.owned("nobody")
    finally:
        server.shutdown()
        server.server_close()
    assert seen and seen[0] == "Basic " + base64.b64encode(b"ops:s3cret").decode()


def test_consul_namespace_is_said_not_silently_dropped():
    from supervisor_consul.connection import ignored
    assert ignored({}) == []
    (message,) = ignored({"CONSUL_NAMESPACE": "team-a"})
    assert message.startswith("CONSUL_NAMESPACE='team-a' is not used: namespaces are Consul Enterprise's")


def test_log_level_takes_supervisords_names():
    import logging

    from supervisor_consul import cli
    for name, level in (("warn", logging.WARNING), ("warning", logging.WARNING), ("trace", logging.DEBUG),
                        ("blather", logging.DEBUG), ("critical", logging.CRITICAL)):
        args = cli.parser().parse_args(["listen", "--log-level", name])
        assert cli.LOG_LEVELS[args.log_level] == level
