"""agent.connection(): options, then the Consul CLI's CONSUL_* variables, then defaults.

No network: Agent() only builds a py-consul client.
"""
from __future__ import annotations

import pytest

from supervisor_consul.agent import Agent, Connection, SettingError, connection


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


def test_agent_client_address_and_tls():
    conn = connection(http_addr="https://consul.local:8443", ca_file="/ca.pem", client_cert="/c.pem",
                      client_key="/k.pem", env={})
    agent = Agent(conn)
    assert agent.endpoint == "https://consul.local:8443"
    assert agent.client.http.base_uri == "https://consul.local:8443"
    assert agent.client.http.verify == "/ca.pem"
    assert agent.client.http.cert == ("/c.pem", "/k.pem")
    assert agent.client.http.session.trust_env is False


def test_a_404_answer_is_an_error_not_a_success(mocker):
    from supervisor_consul import agent
    from supervisor_consul.health import Health
    client = agent.Agent(agent.connection(http_addr="127.0.0.1:1", env={}))
    mocker.patch.object(client.client.agent.check, "ttl_pass", return_value=False)
    with pytest.raises(agent.ConsulError) as raised:
        client.update_ttl("x:process", Health("passing", "RUNNING pid 1"), "web")
    assert raised.value.status == 404 and raised.value.lost
