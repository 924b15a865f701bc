"""config.read: the [consul:PROGRAM] sections, read through supervisor's own parser."""
from __future__ import annotations

import platform
import textwrap

import pytest

from supervisor_consul import cli, config
from supervisor_consul.config import ConsulCheck, Problem


def write(directory, body: str, name: str = "supervisord.conf") -> str:
    """A supervisord configuration: a [supervisord] section plus `body`."""
    path = directory / name
    path.write_text("[supervisord]\nlogfile=%(here)s/supervisord.log\npidfile=%(here)s/supervisord.pid\n\n"
                    + textwrap.dedent(body))
    return str(path)


def program(name: str, extra: str = "") -> str:
    return f"[program:{name}]\ncommand=/bin/sleep 1000\n{textwrap.dedent(extra)}\n"


# -- defaults and expansions ----------------------------------------------------


def test_defaults(tmp_path):
    path = write(tmp_path, program("netcat") + "[consul:netcat]\n")
    configuration = config.read(path)

    assert configuration.readable
    assert configuration.problems == ()
    assert configuration.configfile == path
    assert configuration.identifier == "supervisor"
    spec = configuration.services["netcat"]
    assert (spec.namespec, spec.group, spec.process, spec.name) == ("netcat", "netcat", "netcat", "netcat")
    assert spec.port == 0
    assert spec.ttl == "15s"
    assert spec.ttl_seconds == 15
    assert spec.deregister_after == "5m"
    assert spec.deregister_after_seconds == 300
    assert spec.on_fatal == "deregister"
    assert spec.ttl_check is True
    assert spec.check is None
    assert spec.exitcodes == (0,)


def test_programs_without_consul_section_are_not_services(tmp_path):
    path = write(tmp_path, program("web") + program("other") + "[consul:web]\n")
    assert set(config.read(path).services) == {"web"}


def test_numprocs_gives_one_spec_per_process(tmp_path):
    path = write(tmp_path, program("web", """\
        numprocs=3
        numprocs_start=1
        process_name=%(program_name)s_%(process_num)02d
        """) + "[consul:web]\nport=81%(process_num)02d\n")
    services = config.read(path).services

    assert sorted(services) == ["web:web_01", "web:web_02", "web:web_03"]
    assert [services[n].port for n in sorted(services)] == [8101, 8102, 8103]
    assert {services[n].name for n in services} == {"web"}  # named after the program
    assert services["web:web_02"].group == "web"
    assert services["web:web_02"].process == "web_02"


def test_expansions(tmp_path, monkeypatch):
    monkeypatch.setenv("SC_TEST_REGION", "eu-west")
    path = write(tmp_path, program("web", """\
        numprocs=2
        process_name=%(program_name)s_%(process_num)d
        """) + textwrap.dedent("""\
        [consul:web]
        meta.here=%(here)s
        meta.region=%(ENV_SC_TEST_REGION)s
        meta.program=%(program_name)s
        meta.group=%(group_name)s
        meta.numprocs=%(numprocs)d
        meta.node=%(host_node_name)s
        meta.num=%(process_num)d
        """))
    services = config.read(path).services

    assert dict(services["web:web_1"].meta) == {
        "here": str(tmp_path), "region": "eu-west", "program": "web", "group": "web",
        "numprocs": "2", "node": platform.node(), "num": "1",
    }
    assert dict(services["web:web_0"].meta)["num"] == "0"


def test_program_environment_is_an_expansion(tmp_path):
    path = write(tmp_path, program("web", "environment=COLOUR=blue\n") + "[consul:web]\nmeta.colour=%(ENV_COLOUR)s\n")
    assert dict(config.read(path).services["web"].meta) == {"colour": "blue"}


def test_include(tmp_path):
    (tmp_path / "conf.d").mkdir()
    path = write(tmp_path, "[include]\nfiles=conf.d/*.conf\n\n" + program("web") + "[consul:web]\n")
    included = write(tmp_path / "conf.d", program("api") + "[consul:api]\nport=9000\nmeta.dir=%(here)s\n",
                     name="api.conf")
    configuration = config.read(path)

    assert set(configuration.services) == {"web", "api"}
    assert configuration.services["api"].port == 9000
    # supervisord's expand_here: %(here)s is the directory of the file that says it
    assert dict(configuration.services["api"].meta) == {"dir": str(tmp_path / "conf.d")}
    assert included in configuration.files
    assert configuration.files[0] == path


def test_problem_in_an_include_names_the_include_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    path = write(tmp_path, "[include]\nfiles=conf.d/*.conf\n\n" + program("web") + "[consul:web]\n")
    included = str(tmp_path / "conf.d" / "api.conf")
    (tmp_path / "conf.d" / "api.conf").write_text(program("api") + "[consul:api]\nport=abc\n")
    configuration = config.read(path)

    assert configuration.problems == (
        Problem(included, "consul:api", "port", "abc", "port must be a number from 1 to 65535"),)
    assert set(configuration.services) == {"web"}


def test_program_in_a_group(tmp_path):
    path = write(tmp_path, program("a") + program("b") + "[group:g]\nprograms=a,b\n\n[consul:a]\n")
    services = config.read(path).services
    assert set(services) == {"g:a"}
    spec = services["g:a"]
    assert (spec.group, spec.process, spec.name) == ("g", "a", "a")


def test_meta_keys_keep_their_case(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nmeta.Version=1\nmeta.build_ID=abc\n")
    assert config.read(path).services["web"].meta == (("Version", "1"), ("build_ID", "abc"))


def test_other_keys_are_case_insensitive(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nPort=8080\n")
    assert config.read(path).services["web"].port == 8080


def test_tags(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\ntags=a, b ,,c\n")
    assert config.read(path).services["web"].tags == ("a", "b", "c")


def test_http_check(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nport=8080\ncheck=http://127.0.0.1:%(port)s/health\n")
    spec = config.read(path).services["web"]
    assert spec.check == ConsulCheck("http", "http://127.0.0.1:8080/health", "10s", "5s")
    assert spec.ttl_check is True


def test_https_check_with_interval_and_timeout(tmp_path):
    path = write(tmp_path, program("web") + textwrap.dedent("""\
        [consul:web]
        check=https://example.com/health
        interval=30
        timeout=2s
        """))
    assert config.read(path).services["web"].check == ConsulCheck("http", "https://example.com/health", "30s", "2s")


def test_tcp_check(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nport=8080\ncheck=tcp://127.0.0.1:%(port)s\n")
    assert config.read(path).services["web"].check == ConsulCheck("tcp", "127.0.0.1:8080", "10s", "5s")


def test_check_none(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\ncheck=none\n")
    spec = config.read(path).services["web"]
    assert spec.ttl_check is False
    assert spec.check is None


def test_deregister_after_off_and_on_fatal_critical(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nderegister_after=off\non_fatal=critical\nttl=1m30s\n")
    spec = config.read(path).services["web"]
    assert spec.deregister_after is None
    assert spec.deregister_after_seconds is None
    assert spec.on_fatal == "critical"
    assert spec.ttl_seconds == 90


def test_exitcodes_come_from_the_program(tmp_path):
    path = write(tmp_path, program("web", "exitcodes=0,2\n") + "[consul:web]\n")
    assert config.read(path).services["web"].exitcodes == (0, 2)


def test_startsecs_come_from_the_program(tmp_path):
    path = write(tmp_path, program("web", "startsecs=3\n") + "[consul:web]\n" + program("api") + "[consul:api]\n")
    services = config.read(path).services
    assert (services["web"].startsecs, services["api"].startsecs) == (3.0, 1.0)


# -- problems -----------------------------------------------------------------------

PROBLEMS = [
    # (lines of [consul:bad], key, value)
    ("colour=red", "colour", "red"),
    ("port=abc", "port", "abc"),
    ("port=70000", "port", "70000"),
    ("port=0", "port", "0"),
    ("check=ftp://127.0.0.1/health", "check", "ftp://127.0.0.1/health"),
    ("check=tcp://127.0.0.1", "check", "tcp://127.0.0.1"),
    ("ttl=soon", "ttl", "soon"),
    ("ttl=0s", "ttl", "0s"),
    ("deregister_after=never", "deregister_after", "never"),
    ("interval=5s", "interval", "5s"),
    ("check=none\nttl=30s", "ttl", "30s"),
    ("on_fatal=maybe", "on_fatal", "maybe"),
    ("meta.supervisord-host=x", "meta.supervisord-host", "x"),
    ("meta.consul-version=x", "meta.consul-version", "x"),
    ("meta.bad!key=x", "meta.bad!key", "x"),
    ("name=my_web", "name", "my_web"),
    ("name=%(nonsense)s", "name", "%(nonsense)s"),
]


@pytest.mark.parametrize("lines, key, value", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_each_problem_is_one_problem_and_leaves_the_program_out(tmp_path, lines, key, value):
    path = write(tmp_path, program("good") + program("bad") + program("other")
                 + "[consul:good]\nport=8080\n\n"
                 + f"[consul:bad]\n{lines}\n\n"
                 + "[consul:other]\n")
    configuration = config.read(path)

    assert configuration.readable
    assert len(configuration.problems) == 1, configuration.problems
    problem = configuration.problems[0]
    assert (problem.file, problem.section, problem.key, problem.value) == (path, "consul:bad", key, value)
    assert problem.message
    assert set(configuration.services) == {"good", "other"}


def test_section_without_program(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\n\n[consul:ghost]\nport=1\n")
    configuration = config.read(path)

    assert len(configuration.problems) == 1
    problem = configuration.problems[0]
    assert (problem.file, problem.section, problem.key, problem.value) == (path, "consul:ghost", None, None)
    assert "[program:ghost]" in problem.message
    assert set(configuration.services) == {"web"}


def test_program_name_that_is_no_dns_name(tmp_path):
    path = write(tmp_path, program("my_web") + program("web") + "[consul:my_web]\n\n[consul:web]\n")
    configuration = config.read(path)

    assert len(configuration.problems) == 1
    problem = configuration.problems[0]
    assert (problem.file, problem.section, problem.value) == (path, "consul:my_web", "my_web")
    assert "name = my-web" in problem.message  # the fix is suggested
    assert set(configuration.services) == {"web"}


def test_numprocs_problem_reported_once(tmp_path):
    path = write(tmp_path, program("web", """\
        numprocs=3
        process_name=%(program_name)s_%(process_num)02d
        """) + program("netcat") + "[consul:web]\ncolour=red\nport=abc\n\n[consul:netcat]\n")
    configuration = config.read(path)

    assert [(p.key, p.value) for p in configuration.problems] == [("colour", "red"), ("port", "abc")]
    assert set(configuration.services) == {"netcat"}


def test_several_problems_in_one_section_are_all_reported(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nport=abc\non_fatal=maybe\nttl=soon\n")
    configuration = config.read(path)
    assert sorted(p.key for p in configuration.problems) == ["on_fatal", "port", "ttl"]
    assert configuration.services == {}


def test_unreadable_configuration(tmp_path):
    path = write(tmp_path, "this line is no ini syntax\n" + program("web") + "[consul:web]\n")
    configuration = config.read(path)

    assert configuration.readable is False
    assert len(configuration.problems) == 1
    assert configuration.problems[0].file == path
    assert configuration.services == {}


def test_problem_str_is_one_line_with_file_section_key_and_value(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nport=abc\n")
    text = str(config.read(path).problems[0])

    assert "\n" not in text
    for part in (path, "[consul:web]", "port", "'abc'"):
        assert part in text


def test_problem_str_without_key():
    text = str(Problem("/etc/s.conf", "consul:ghost", None, None, "there is no [program:ghost]"))
    assert text == "/etc/s.conf: [consul:ghost] there is no [program:ghost]"


def test_problem_str_of_a_multi_line_value_is_one_line():
    text = str(Problem("/etc/s.conf", "consul:web", "tags", "a,\nb", "bad"))
    assert "\n" not in text


def test_unreadable_configuration_problem_is_one_line(tmp_path):
    path = write(tmp_path, "this line is no ini syntax\n" + program("web"))
    text = str(config.read(path).problems[0])
    assert path in text
    assert "\n" not in text


# -- supervisor-consul check ------------------------------------------------------


def test_check_command_ok(tmp_path, capsys):
    path = write(tmp_path, program("web") + "[consul:web]\nport=8080\n")
    assert cli.main(["check", "-c", path]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    assert path in out


def test_check_command_reports_every_problem(tmp_path, capsys):
    path = write(tmp_path, program("web") + program("api") + "[consul:web]\nport=abc\n\n[consul:api]\ncolour=red\n")
    assert cli.main(["check", "-c", path]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert any("[consul:web]" in line and "port" in line and "'abc'" in line for line in lines)
    assert any("[consul:api]" in line and "colour" in line and "'red'" in line for line in lines)
    assert "OK" not in captured.out
    assert "2 problem(s)" in captured.err


def test_check_command_unreadable(tmp_path, capsys):
    path = write(tmp_path, "garbage line\n" + program("web"))
    assert cli.main(["check", "-c", path]) == 1
    assert "cannot read" in capsys.readouterr().out


# -- what supervisord accepts never stops the listener ------------------------------


def test_process_name_using_the_programs_own_environment(tmp_path):
    # supervisord expands process_name after adding the program's environment=.
    path = write(tmp_path, program("api", 'environment=SUF="x"\nprocess_name=api_%(ENV_SUF)s_%(process_num)d\n'
                                          "numprocs=2\n") + "[consul:api]\nport=80%(process_num)d\n")
    configuration = config.read(path)
    assert configuration.problems == ()
    assert sorted(configuration.services) == ["api:api_x_0", "api:api_x_1"]


def test_group_programs_are_expanded_as_supervisord_does(tmp_path, monkeypatch):
    monkeypatch.setenv("GRP", "web")
    path = write(tmp_path, program("web") + "[group:g]\nprograms=%(ENV_GRP)s\n[consul:web]\n")
    assert sorted(config.read(path).services) == ["g:web"]


def test_a_unicode_digit_in_port_is_a_problem(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nport=80\u00b2\n")
    [problem] = config.read(path).problems
    assert problem.key == "port" and "1 to 65535" in problem.message


def test_an_expansion_problem_does_not_list_every_environment_name(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\ntags=%(ENV_NOT_THERE)s\n")
    [problem] = config.read(path).problems
    assert problem.key == "tags" and "ENV_NOT_THERE" in problem.message
    assert "Available names" not in str(problem) and len(str(problem)) < 400


def test_ttl_below_a_second_is_a_problem(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nttl=500ms\n")
    [problem] = config.read(path).problems
    assert problem.key == "ttl" and "at least 1s" in problem.message
