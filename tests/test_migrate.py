"""migrate-ianitor (issue 15): ianitor's command lines read, the files edited line
by line, and the migrated programs passing in a real agent behind a real supervisord."""
from __future__ import annotations

import configparser
import difflib
import os
import pathlib
import subprocess
import sys

import pytest

from supervisor_consul import config, ianitor, layout, migrate, stanza
from tests.dig import dig, srv_ports
from tests.harness import LOOPBACK, ConsulAgent, fetched, free_port, run_cli, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent


# -- ianitor's command line ---------------------------------------------------------

@pytest.mark.parametrize("command", [
    "ianitor --port 9999 netcat -- nc -l 9999",
    "/usr/local/bin/ianitor --port=9999 netcat -- nc -l 9999",
    "python3 -m ianitor netcat --port 9999 -- nc -l 9999",
    "/opt/venv/bin/python3.11 -m ianitor --port 9999 netcat -- nc -l 9999",
])
def test_each_way_of_running_ianitor_is_read(command):
    assert ianitor.parse(command) == ianitor.Wrapped("netcat", "nc -l 9999", port=9999)


def test_every_option_in_both_forms_and_the_wrapped_command_as_written():
    wrapped = ianitor.parse('ianitor --consul-agent=127.0.0.1:8600 --ttl 5 --heartbeat=1 --tags http '
                            '--tags=v1 --id web-1 --address 127.0.0.2 -vv web -- sh -c "echo -- %(ENV_X)s"')
    assert wrapped == ianitor.Wrapped("web", 'sh -c "echo -- %(ENV_X)s"', consul_agent=("127.0.0.1", 8600),
                                      ttl=5.0, heartbeat=1.0, tags=("http", "v1"), service_id="web-1",
                                      address="127.0.0.2", verbose=2)
    assert ianitor.parse("ianitor --consul-agent localhost x -- y").consul_agent == ("localhost", 8500)


@pytest.mark.parametrize("command, why", [
    ("ianitor netcat nc -l 9999", "no `--`"),
    ("ianitor netcat --", "nothing after"),
    ("ianitor --port nine netcat -- nc", "invalid int"),
    ("ianitor --bogus 1 netcat -- nc", "unrecognized"),
    ("ianitor -- nc -l 9999", "service_name"),
    ("ianitor 'netcat -- nc", "cannot be split"),
])
def test_what_cannot_be_read_says_why(command, why):
    with pytest.raises(ianitor.Unparsable, match=why):
        ianitor.parse(command)


@pytest.mark.parametrize("command", ["nc -l 9999", "/usr/bin/ianitor-ng x -- y", "python3 -m http.server", ""])
def test_other_commands_are_not_ianitor(command):
    with pytest.raises(ianitor.NotIanitor):
        ianitor.parse(command)


# -- where things sit in a file ---------------------------------------------------------

def test_layout_finds_sections_and_keys_as_supervisor_reads_them():
    text = ("; top\n[program:a]\ncommand = x   ; note\n  continued\n\n  more\n# comment\nautorestart=true\n\n"
            "[Program:B]\nCommand=y\n")
    places = layout.places(text)
    lines = text.splitlines(keepends=True)
    assert places["program:a"].header == 1 and places["program:a"].keys == {"command": 2, "autorestart": 7}
    assert places["Program:B"].keys == {"command": 10}  # keys fold case, section names do not
    assert layout.value_lines(lines, 2) == range(2, 6)
    assert layout.section_end(lines, places["program:a"]) == 7
    assert layout.split_value(lines[2]) == ("command = ", "x", "   ; note\n")


# -- the plan ---------------------------------------------------------------------------

MAIN = """\
; my supervisord
[supervisord]
logfile=/tmp/x.log

[program:netcat]
command=ianitor --port 9999 netcat -- nc -l 9999   ; the recipe
autorestart=true

[program:web]
command = ianitor --tags http --tags=v1 --address 127.0.0.2 --ttl 5 --id web-1 web-svc -- python3 -m http.server
[program:plain]
command=sleep 1
"""


def planned(tmp_path, main: str = MAIN, more: dict[str, str] | None = None) -> migrate.Plan:
    (tmp_path / "supervisord.conf").write_text(main)
    for name, text in (more or {}).items():
        (tmp_path / name).write_text(text)
    configuration = config.read(str(tmp_path / "supervisord.conf"))
    texts = {path: pathlib.Path(path).read_text() for path in configuration.files}
    return migrate.plan(configuration, texts, "host", "supervisor-consul")


def removed_and_added(before: str, after: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in list(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True)))[2:]:
        if line.startswith("-"):
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
    return removed, added


def test_only_the_command_lines_change_and_sections_are_added(tmp_path):
    result = planned(tmp_path)
    path = str(tmp_path / "supervisord.conf")
    removed, added = removed_and_added(MAIN, result.after[path])
    assert removed == ["command=ianitor --port 9999 netcat -- nc -l 9999   ; the recipe\n",
                       "command = ianitor --tags http --tags=v1 --address 127.0.0.2 --ttl 5 --id web-1 web-svc -- "
                       "python3 -m http.server\n"]
    assert "command=nc -l 9999   ; the recipe\n" in added
    assert "command = python3 -m http.server\n" in added
    migrated = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    migrated.read_string(result.after[path])
    assert dict(migrated["consul:netcat"]) == {"port": "9999"}
    assert dict(migrated["consul:web"]) == {"name": "web-svc", "tags": "http,v1", "address": "127.0.0.2", "ttl": "5s"}
    listener = dict(migrated[stanza.LISTENER_SECTION])
    assert listener.pop("command") == "supervisor-consul listen -c %(here)s/supervisord.conf"
    assert listener == dict(stanza.LISTENER_KEYS)
    assert stanza.RPCINTERFACE_SECTION in migrated
    web = next(found for found in result.migrated if found.program == "web")
    assert any(note.startswith("--id web-1 gives way to the listener's instance IDs: supervisord:")
               and note.endswith(":web:web") for note in web.notes)
    assert not result.left and not result.blocking


def test_the_listener_stanza_is_the_samples(tmp_path):
    sample = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    sample.read(ROOT / "etc" / "supervisord.conf.sample")
    assert {key: sample[stanza.LISTENER_SECTION][key] for key, _ in stanza.LISTENER_KEYS} == dict(stanza.LISTENER_KEYS)
    assert dict(sample[stanza.RPCINTERFACE_SECTION]) == dict(stanza.RPCINTERFACE_KEYS)


def test_programs_that_cannot_move_are_left_and_named(tmp_path):
    result = planned(tmp_path, MAIN + "[program:broken]\ncommand=ianitor --port nine broken -- sleep 1\n"
                                      "[program:comma]\ncommand=ianitor --tags 'a,b' comma -- sleep 1\n"
                                      "[program:had]\ncommand=ianitor had -- sleep 1\n[consul:had]\n")
    left = {entry.section: entry.reason for entry in result.left}
    assert "invalid int value: 'nine'" in left["program:broken"]
    assert "comma" in left["program:comma"]
    assert "[consul:had] exists already" in left["program:had"]
    path = str(tmp_path / "supervisord.conf")
    removed, _ = removed_and_added(result.before[path], result.after[path])
    assert not any(f" {word} -- sleep" in line for line in removed for word in ("broken", "comma", "had"))


def test_two_agents_stop_everything(tmp_path):
    result = planned(tmp_path, "[supervisord]\n[program:a]\ncommand=ianitor --consul-agent h1 a -- sleep 1\n"
                               "[program:b]\ncommand=ianitor --consul-agent h2:8501 b -- sleep 1\n")
    assert result.blocking and "different Consul agents" in result.blocking[0]
    assert "h1:8500" in result.blocking[0] and "h2:8501" in result.blocking[0]


def test_an_existing_listener_is_kept(tmp_path):
    result = planned(tmp_path, MAIN + "[eventlistener:mine]\ncommand=supervisor-consul listen\nevents=TICK_5\n"
                                      "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory=x:y\n")
    assert result.added == []


# -- against a real supervisord and agent ---------------------------------------------------

def test_migrate_write_then_update_makes_them_passing(tmp_path, supervisord_factory):
    agent = ConsulAgent(tmp_path / "consul")
    agent.start()
    try:
        run_the_migration(tmp_path, agent, supervisord_factory)
    finally:
        agent.stop()


def run_the_migration(tmp_path, agent: ConsulAgent, supervisord_factory):
    ianitor_dir = fetched("get-ianitor")
    web_port = free_port()
    at = f"--consul-agent {agent.http_addr}"
    # On PATH and by path (ianitor 0.1.0 has no __main__: `python -m ianitor` is read, but cannot run).
    included = ("# a program of its own\n[program:sleeper]\n"
                f"command=ianitor {at} --ttl=30 sleeper -- sleep 600\nstartsecs=1\n")
    web = (f"{ianitor_dir}/ianitor {at} --tags http --tags=v1 --address {LOOPBACK} --port {web_port} "
           f"--heartbeat 2 web -- {sys.executable} -m http.server {web_port} --bind {LOOPBACK}")
    programs = (
        f"[program:netcat]\ncommand=ianitor {at} --port 9999 netcat -- nc -l 9999\nautorestart=true\n\n"
        f"; the web server\n[program:web]\ncommand = {web}\nstartsecs=1\n\n"
        "[program:broken]\ncommand=ianitor --port nine broken -- sleep 600\n\n"
        "[include]\nfiles = %(here)s/conf.d/*.conf\n")
    workdir = tmp_path / "sv0"
    (workdir / "conf.d").mkdir(parents=True)
    (workdir / "conf.d" / "sleeper.conf").write_text(included)
    sv = supervisord_factory(programs, env={"PATH": f"{ianitor_dir}:{os.environ['PATH']}"})
    # Before: ianitor registers them, but its TTL passes are GETs, which the agent refuses.
    wait_for(lambda: {"netcat", "web", "sleeper"} <= set(agent.services()), timeout=30, message="ianitor's own")
    assert agent.checks()["service:netcat"]["Status"] == "critical"
    files = {path: pathlib.Path(path).read_bytes() for path in (sv.conf, workdir / "conf.d" / "sleeper.conf")}

    done = run_cli("migrate-ianitor", "-c", str(sv.conf), "--write")
    assert done.returncode == 1, done  # one program is left as it is
    assert "[program:broken] left as it is" in done.stdout and "invalid int value: 'nine'" in done.stdout
    assert "--heartbeat 2 has no equivalent" in done.stdout
    for path, before in files.items():
        after = pathlib.Path(path).read_bytes()
        removed, added = removed_and_added(before.decode(), after.decode())
        assert all(line.startswith(("command=", "command = ")) and "ianitor" in line for line in removed), removed
        assert len(removed) == (2 if path == sv.conf else 1)
        assert not any(line.startswith("command") and "ianitor" in line for line in added), added
        backup = pathlib.Path(path).with_name(f".{pathlib.Path(path).name}.ianitor.bak")
        assert backup.read_bytes() == before
    assert "command=ianitor --port nine broken -- sleep 600\n" in sv.conf.read_text()

    for verb in ("reread", "update"):
        result = sv.ctl(verb)
        assert result.returncode == 0, result

    def passing(name: str, port: int | None = None):
        ok = [entry for entry in agent.health(name) if all(c["Status"] == "passing" for c in entry["Checks"])]
        return ok if ok and (port is None or ok[0]["Service"]["Port"] == port) else None

    netcat = wait_for(lambda: passing("netcat", 9999), timeout=60, message="netcat passing")
    web_entries = wait_for(lambda: passing("web", web_port), timeout=60, message="web passing")
    wait_for(lambda: passing("sleeper"), timeout=60, message="sleeper passing")
    assert netcat[0]["Service"]["ID"].startswith("supervisord:")
    assert web_entries[0]["Service"]["Tags"] == ["http", "v1"]
    assert web_entries[0]["Service"]["Address"] == LOOPBACK
    assert srv_ports(wait_for(lambda: dig(LOOPBACK, agent.dns_port, "netcat.service.consul", "SRV") or None,
                              timeout=20)) == [9999]
    assert sv.state("broken") != "RUNNING"

    # ianitor's own registration stays behind, as the migration says; its command removes it.
    assert "consul services deregister -id netcat" in done.stdout
    assert agent.checks()["service:netcat"]["Status"] == "critical"
    subprocess.run([agent.binary, "services", "deregister", f"-http-addr={agent.http_addr}", "-id", "netcat"],
                   check=True, capture_output=True, timeout=30)
    assert "netcat" not in agent.services()
