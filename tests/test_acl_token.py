"""acl_token.Token: a token file read again when it changes, on force, never echoed."""
from __future__ import annotations

import logging
import os

import pytest

from supervisor_consul.acl_token import Token, TokenError, read_file
from supervisor_consul.agent import Agent, ConsulError
from supervisor_consul.connection import connection

OLD, NEW = "11111111-aaaa-4bbb-8ccc-000000000001", "22222222-aaaa-4bbb-8ccc-000000000002"


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "consul.token"
    p.write_text(OLD + "\n")
    return p


def token_of(path) -> Token:
    return Token(read_file(str(path), "--token-file"), f"--token-file {path}", str(path), "--token-file")


def rewrite(path, text: str) -> None:
    """In place, as consul-template does; the mtime moved on so the change is seen even
    when the file system's clock is coarse."""
    before = os.stat(path).st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_an_unchanged_file_is_not_read_again(path, mocker):
    token = token_of(path)
    opened = mocker.spy(__import__("builtins"), "open")
    assert token.reload() is False
    assert opened.call_count == 0


def test_a_file_rewritten_in_place_gives_the_new_token(path, caplog):
    token = token_of(path)
    rewrite(path, NEW)
    with caplog.at_level(logging.INFO):
        assert token.reload() is True
    assert token.value == NEW
    assert f"the Consul token in --token-file {path} changed" in caplog.text
    assert OLD not in caplog.text and NEW not in caplog.text
    assert token.secrets == (NEW, OLD)
    assert token.described().startswith(f"--token-file {path} (as re-read at ")


def test_a_file_replaced_by_a_rename_gives_the_new_token(path):
    token = token_of(path)
    fresh = path.with_name("fresh")
    fresh.write_text(NEW)
    os.replace(fresh, path)  # as Vault agent's sink does
    assert token.reload() is True and token.value == NEW


def test_force_reads_even_when_the_file_looks_unchanged(path):
    token = token_of(path)
    stat = os.stat(path)
    path.write_text(NEW.replace("2", "3") + "\n")  # the same size as OLD + "\n"
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert token.reload() is False  # the same signature: not worth a read
    assert token.reload(force=True) is True


def test_the_same_token_written_again_is_no_change(path):
    token = token_of(path)
    rewrite(path, OLD + "\n\n")
    assert token.reload() is False and token.described() == f"--token-file {path}"


@pytest.mark.parametrize("text", ["", "  \n", "half written\n"])
def test_a_file_caught_empty_or_unusable_keeps_the_old_token_and_says_so_once(path, caplog, text):
    token = token_of(path)
    rewrite(path, text)
    assert token.reload() is False and token.reload() is False
    assert token.value == OLD
    [line] = [r.getMessage() for r in caplog.records if "keeping the token read before" in r.getMessage()]
    assert str(path) in line and "half" not in line
    rewrite(path, NEW)
    assert token.reload() is True and token.value == NEW


def test_a_file_gone_keeps_the_old_token(path, caplog):
    token = token_of(path)
    path.unlink()
    assert token.reload() is False and token.value == OLD
    assert "cannot read the Consul token file" in caplog.text


def test_a_token_not_from_a_file_never_changes():
    token = Token("t" * 12, "CONSUL_HTTP_TOKEN")
    assert token.reload(force=True) is False


def test_read_file_names_the_file_never_the_token(tmp_path):
    p = tmp_path / "t"
    p.write_text("two words-secret")
    with pytest.raises(TokenError) as raised:
        read_file(str(p), "CONSUL_HTTP_TOKEN_FILE")
    assert "secret" not in str(raised.value) and str(p) in str(raised.value)


def test_agent_acl_not_found_rereads_the_file_and_retries_once(path, mocker):
    import consul
    agent = Agent(connection(token_file=str(path), env={}))
    sent = []

    def services():
        sent.append(agent.client.token)
        if agent.client.token == OLD:
            raise consul.ACLPermissionDenied("ACL not found")
        return {}

    mocker.patch.object(agent.client.agent, "services", side_effect=services)
    mocker.patch.object(agent.client.agent, "checks", return_value={})
    path.write_text(NEW)  # even with a signature the stat cannot tell apart: the 403 forces a read
    assert agent.owned("owner") == {}
    assert sent == [OLD, NEW]


def test_agent_acl_not_found_with_an_unchanged_file_names_the_file(path, mocker):
    import consul
    agent = Agent(connection(token_file=str(path), env={}))
    mocker.patch.object(agent.client.agent, "services", side_effect=consul.ACLPermissionDenied("ACL not found"))
    with pytest.raises(ConsulError) as raised:
        agent.owned("owner")
    message = str(raised.value)
    assert (f"the agent knows no token with the SecretID from --token-file {path}: give an existing "
            f"token's SecretID; it is read again when the file changes") in message
    assert OLD not in message


def test_agent_redacts_the_old_token_as_well_as_the_new(path, mocker):
    import consul
    agent = Agent(connection(token_file=str(path), env={}))
    rewrite(path, NEW)
    assert agent.refresh_token() is True and agent.client.token == NEW
    mocker.patch.object(agent.client.agent, "services",
                        side_effect=consul.ConsulException(f"500 echo {OLD} {NEW}"))
    with pytest.raises(ConsulError) as raised:
        agent.owned("owner")
    assert OLD not in str(raised.value) and NEW not in str(raised.value)
