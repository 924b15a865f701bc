"""config.read: the [consul:PROGRAM] sections, read through supervisor's own parser."""
from __future__ import annotations

import platform
import textwrap

import pytest
from supervisor.options import make_namespec

from supervisor_consul import cli, config
from supervisor_consul.config import Problem
from supervisor_consul.spec import CheckKind, CheckSpec


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
    assert spec.checks == ()
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
    assert spec.checks == (CheckSpec(CheckKind.HTTP, "http://127.0.0.1:8080/health", "10s", "5s"),)
    assert spec.ttl_check is True


def test_https_check_with_interval_and_timeout(tmp_path):
    path = write(tmp_path, program("web") + textwrap.dedent("""\
        [consul:web]
        check=https://example.com/health
        interval=30
        timeout=2s
        """))
    assert config.read(path).services["web"].checks == (CheckSpec(CheckKind.HTTP, "https://example.com/health", "30s", "2s"),)


def test_tcp_check(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\nport=8080\ncheck=tcp://127.0.0.1:%(port)s\n")
    assert config.read(path).services["web"].checks == (CheckSpec(CheckKind.TCP, "127.0.0.1:8080", "10s", "5s"),)


def test_check_none(tmp_path):
    path = write(tmp_path, program("web") + "[consul:web]\ncheck=none\n")
    spec = config.read(path).services["web"]
    assert spec.ttl_check is False
    assert spec.checks == ()


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
    assert cli.main(["check", "-c", path]) == 2  # nothing could be checked
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


# -- a program in several groups (issue 10, item 5) ------------------------------------------


def test_a_program_in_two_groups_is_an_instance_in_each(tmp_path):
    # supervisord runs g1:twice and g2:twice, and no standalone twice.
    path = write(tmp_path, program("twice") + program("solo")
                 + "[group:g1]\nprograms=twice\n[group:g2]\nprograms=twice\n[consul:twice]\nport=80\n[consul:solo]\n")
    configuration = config.read(path)

    assert configuration.problems == ()
    assert sorted(configuration.services) == ["g1:twice", "g2:twice", "solo"]
    assert [(s.group, s.process, s.name, s.port) for s in (configuration.services["g1:twice"],
                                                           configuration.services["g2:twice"])] == \
        [("g1", "twice", "twice", 80), ("g2", "twice", "twice", 80)]


def test_a_program_with_numprocs_in_two_groups_has_numprocs_in_each(tmp_path):
    path = write(tmp_path, program("web", "numprocs=2\nprocess_name=%(program_name)s_%(process_num)d\n")
                 + "[group:g1]\nprograms=web\n[group:g2]\nprograms=web\n"
                 + "[consul:web]\nmeta.group=%(group_name)s\n")
    services = config.read(path).services

    assert sorted(services) == ["g1:web_0", "g1:web_1", "g2:web_0", "g2:web_1"]
    assert {ns: dict(s.meta)["group"] for ns, s in services.items()} == {
        "g1:web_0": "g1", "g1:web_1": "g1", "g2:web_0": "g2", "g2:web_1": "g2"}


def test_group_name_in_process_name_differs_per_group(tmp_path):
    path = write(tmp_path, program("t", "process_name=%(group_name)s_t\n")
                 + "[group:g1]\nprograms=t\n[group:g2]\nprograms=t\n[consul:t]\n")
    assert sorted(config.read(path).services) == ["g1:g1_t", "g2:g2_t"]


def test_a_program_listed_twice_in_one_group_is_one_process(tmp_path):
    path = write(tmp_path, program("twice") + "[group:g]\nprograms=twice, twice\n[consul:twice]\n")
    configuration = config.read(path)
    assert (sorted(configuration.services), configuration.problems) == (["g:twice"], ())


def test_spaces_around_group_and_program_names_are_stripped_as_supervisord_does(tmp_path):
    path = write(tmp_path, "[program: web ]\ncommand=/bin/sleep 1000\n" + program("a")
                 + "[group: g ]\nprograms= a \n[consul:web]\n[consul:a]\n")
    configuration = config.read(path)
    assert (sorted(configuration.services), configuration.problems) == (["g:a", "web"], ())


@pytest.mark.parametrize("groups, runs", [
    ("[group:g]\nprograms=a\n[group: g]\nprograms=b\n", "a"),  # same priority: the first section
    ("[group:g]\nprograms=a\npriority=500\n[group: g]\nprograms=b\npriority=100\n", "b"),  # lower priority first
])
def test_of_two_groups_of_one_name_only_the_one_supervisord_runs_is_registered(tmp_path, groups, runs):
    path = write(tmp_path, program("a") + program("b") + groups + "[consul:a]\n[consul:b]\n")
    configuration = config.read(path)
    other = "b" if runs == "a" else "a"

    assert sorted(configuration.services) == [f"g:{runs}"]
    [problem] = configuration.problems
    assert (problem.file, problem.section, problem.key) == (path, f"consul:{other}", None)
    assert "group 'g'" in problem.message and "rename one" in problem.message


def test_a_group_named_like_a_program_hides_the_program(tmp_path):
    # supervisord runs a:b, and never program a.
    path = write(tmp_path, program("a") + program("b") + "[group:a]\nprograms=b\n[consul:a]\n[consul:b]\n")
    configuration = config.read(path)
    assert sorted(configuration.services) == ["a:b"]
    assert [p.section for p in configuration.problems] == ["consul:a"]


def test_a_program_defined_twice_is_a_problem(tmp_path):
    path = write(tmp_path, program("web") + "[program: web]\ncommand=/bin/sleep 1001\n" + program("other")
                 + "[consul:web]\n[consul:other]\n")
    configuration = config.read(path)

    [problem] = configuration.problems
    assert (problem.file, problem.section, problem.key) == (path, "consul:web", None)
    assert "[program:web]" in problem.message and "[program: web]" in problem.message
    assert set(configuration.services) == {"other"}


# -- ambiguous sections (issue 10, item 10) --------------------------------------------------


def test_two_consul_sections_for_one_program_are_both_problems(tmp_path):
    path = write(tmp_path, program("dup") + program("other")
                 + "[consul:dup]\nport=1\n[consul: dup]\nport=2\n[consul:other]\n")
    configuration = config.read(path)

    assert [(p.file, p.section, p.key) for p in configuration.problems] == [
        (path, "consul:dup", None), (path, "consul: dup", None)]
    first, second = configuration.problems
    assert f"[consul: dup] in {path}" in first.message and f"[consul:dup] in {path}" in second.message
    assert all("one [consul:dup] section" in p.message for p in configuration.problems)
    # Neither is registered: either may be the one meant.
    assert set(configuration.services) == {"other"}
    assert str(first) == (f"{path}: [consul:dup] another section is for program 'dup' too: [consul: dup] in "
                          f"{path}; put the keys you mean into one [consul:dup] section and remove the other")


@pytest.mark.parametrize("included_section", ["consul:dup ", "consul:dup"])
def test_two_consul_sections_for_one_program_in_two_files_name_each_file(tmp_path, included_section):
    # With the very same name, supervisor's parser merges the two, the later keys winning, and says nothing.
    (tmp_path / "conf.d").mkdir()
    path = write(tmp_path, "[include]\nfiles=conf.d/*.conf\n" + program("dup") + program("web")
                 + "[consul:dup]\nport=1\n[consul:web]\n")
    included = tmp_path / "conf.d" / "dup.conf"
    included.write_text(f"[{included_section}]\nport=2\n")
    configuration = config.read(path)

    assert [(p.file, p.section) for p in configuration.problems] == [(path, "consul:dup"),
                                                                    (str(included), included_section)]
    assert f"[{included_section}] in {included}" in configuration.problems[0].message
    assert f"[consul:dup] in {path}" in configuration.problems[1].message
    assert set(configuration.services) == {"web"}
    assert str(included) in configuration.files


def test_service_names_that_differ_only_in_case_are_problems_naming_both_sections(tmp_path):
    path = write(tmp_path, program("a") + program("b") + program("c")
                 + "[consul:a]\nname=Web\n[consul:b]\nname=web\n[consul:c]\nname=c\n")
    configuration = config.read(path)

    assert [(p.file, p.section, p.key, p.value) for p in configuration.problems] == [
        (path, "consul:a", "name", "Web"), (path, "consul:b", "name", "web")]
    a, b = configuration.problems
    assert f"'web' of [consul:b] in {path}" in a.message and f"'Web' of [consul:a] in {path}" in b.message
    assert all("spell them the same" in p.message for p in configuration.problems)
    assert set(configuration.services) == {"c"}


def test_the_program_name_counts_as_the_service_name_in_a_case_clash(tmp_path):
    path = write(tmp_path, program("Web") + program("api") + "[consul:Web]\n[consul:api]\nname=web\n")
    configuration = config.read(path)

    assert [(p.section, p.key, p.value) for p in configuration.problems] == [
        ("consul:Web", None, "Web"), ("consul:api", "name", "web")]
    assert "(the program name)" in str(configuration.problems[0])
    assert "'Web'" in str(configuration.problems[0])  # the key is None: the name is in the message
    assert configuration.services == {}


def test_the_suggested_spelling_is_the_one_most_sections_use(tmp_path):
    path = write(tmp_path, program("a") + program("b") + program("c")
                 + "[consul:a]\nname=Web\n[consul:b]\nname=Web\n[consul:c]\nname=web\n")
    problems = config.read(path).problems
    assert len(problems) == 3 and all("name = Web in each" in p.message for p in problems)


def test_a_case_clash_across_include_files_names_each_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    path = write(tmp_path, "[include]\nfiles=conf.d/*.conf\n" + program("a") + "[consul:a]\nname=Shop\n")
    included = tmp_path / "conf.d" / "b.conf"
    included.write_text(program("b") + "[consul:b]\nname=shop\n")
    problems = config.read(path).problems

    assert [(p.file, p.section) for p in problems] == [(path, "consul:a"), (str(included), "consul:b")]
    assert f"[consul:b] in {included}" in problems[0].message
    assert f"[consul:a] in {path}" in problems[1].message


def test_several_programs_with_the_same_name_are_one_service(tmp_path):
    path = write(tmp_path, program("a") + program("b") + "[consul:a]\nname=web\nport=1\n[consul:b]\nname=web\nport=2\n")
    configuration = config.read(path)
    assert configuration.problems == ()
    assert {s.name for s in configuration.services.values()} == {"web"} and len(configuration.services) == 2


def test_check_command_lists_ambiguous_sections_and_exits_1(tmp_path, capsys):
    path = write(tmp_path, program("dup") + program("a") + program("b")
                 + "[consul:dup]\n[consul: dup]\n[consul:a]\nname=Web\n[consul:b]\nname=web\n")
    assert cli.main(["check", "-c", path]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(str(p) for p in config.read(path).problems) and len(lines) == 4


# -- config.read against what a real supervisord runs ----------------------------------------

# Each: [program:*]/[group:*] lines; the programs whose [consul:*] is a Problem on purpose; the
# processes supervisord runs that are left unregistered so.
SUPERVISORD_CASES = {
    "two groups": (program("twice") + program("solo") + "[group:g1]\nprograms=twice\n[group:g2]\nprograms=twice\n",
                   (), ()),
    "numprocs in two groups": (program("web", "numprocs=2\nprocess_name=%(program_name)s_%(process_num)d\n")
                               + "[group:g1]\nprograms=web\n[group:g2]\nprograms=web\n", (), ()),
    "group_name in process_name": (program("t", "process_name=%(group_name)s_t\n")
                                   + "[group:g1]\nprograms=t\n[group:g2]\nprograms=t\n", (), ()),
    "listed twice in one group": (program("twice") + "[group:g]\nprograms=twice,twice\n", (), ()),
    # supervisord runs only the first group of a name, in (priority, name) order: b runs nowhere.
    "two groups of one name": (program("a") + program("b") + "[group:g]\nprograms=a\n[group: g]\nprograms=b\n",
                               ("b",), ()),
    "two groups of one name, priorities": (program("a") + program("b") + "[group:g]\nprograms=a\npriority=500\n"
                                           "[group: g]\nprograms=b\npriority=100\n", ("a",), ()),
    "group named like a program": (program("a") + program("b") + "[group:a]\nprograms=b\n", ("a",), ()),
    "spaces in names": ("[program: web ]\ncommand=/bin/sleep 1000\n" + program("a")
                        + "[group: g ]\nprograms= a \n", (), ()),
    # Two programs named web, and supervisord runs both: g:web from one section, web from the other.
    "a program defined twice": (program("web") + "[program: web]\ncommand=/bin/sleep 1001\n"
                                + "[group:g]\nprograms=web\n", ("web",), ("g:web", "web")),
}


@pytest.mark.parametrize("case", sorted(SUPERVISORD_CASES))
def test_what_is_registered_is_what_supervisord_runs(supervisord_factory, case):
    body, problem_programs, unregistered = SUPERVISORD_CASES[case]
    programs = dict.fromkeys(line[len("[program:"):-1].strip() for line in body.splitlines()
                             if line.startswith("[program:"))
    sv = supervisord_factory(body + "".join(f"[consul:{p}]\n" for p in programs))
    runs = {make_namespec(i["group"], i["name"]) for i in sv.rpc().supervisor.getAllProcessInfo()}
    configuration = config.read(str(sv.conf))

    assert {p.section for p in configuration.problems} == {f"consul:{p}" for p in problem_programs}
    assert set(configuration.services) == runs - set(unregistered)


def test_a_file_included_twice_is_no_ambiguity(tmp_path):
    # Two include patterns matching one file: supervisord reads it twice, into the same sections.
    (tmp_path / "conf.d").mkdir()
    path = write(tmp_path, "[include]\nfiles=conf.d/*.conf conf.d/web.conf\n")
    (tmp_path / "conf.d" / "web.conf").write_text(program("web") + "[consul:web]\nport=80\n")
    configuration = config.read(path)
    assert (configuration.problems, sorted(configuration.services)) == ((), ["web"])


@pytest.mark.integration
def test_the_configuration_supervisord_was_started_with_is_found_from_proc(tmp_path):
    import subprocess
    import sys
    path = write(tmp_path, program("web"))
    # A process whose command line reads as supervisord's: `python .../supervisord -n -c PATH`.
    fake = tmp_path / "supervisord"
    fake.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(fake), "-n", "-c", path], cwd=str(tmp_path))
    try:
        from tests.harness import wait_for
        assert wait_for(lambda: config.configfile_of_process(proc.pid), timeout=10) == path
    finally:
        proc.kill()
        proc.wait(timeout=10)
