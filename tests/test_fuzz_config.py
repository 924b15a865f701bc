"""Issue 3, item 12: every `[consul:…]` key given invalid values (hypothesis).

`supervisor-consul check` lists every problem, one line each naming the file,
the section `[consul:X]` and the key, and exits 1; the listener leaves out
exactly the programs whose section has a problem.  The invalid values are
stated here from the documented rules (README, `[consul:PROGRAM]` table), not
from config.py, and written into real configuration files.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor_consul import cli, config, schema
from tests.harness import listener, run_cli, wait_for
from tests.test_integration import listener_log, unique, wait_passing

PURE = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
SEVERAL = settings(PURE, max_examples=60)  # each example reads a file with several programs

RESERVED_META = ("external-source", "supervisor-consul-owner", "supervisor-consul-spec", "supervisord-group",
                 "supervisord-process", "supervisord-host")
DOCUMENTED_KEYS = ("name", "port", "address", "tags", "check", "interval", "timeout", "ttl", "deregister_after",
                   "on_fatal")


# -- the rules, as documented ------------------------------------------------------------

def dns_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", value))


def port(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{1,5}", value)) and 0 < int(value) < 65536


def duration_syntax(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+(?:\.[0-9]+)?|(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+", value))


def check(value: str) -> bool:
    if value in ("ttl", "none"):
        return True
    scheme, sep, rest = value.partition("://")
    if not sep or not rest or any(c.isspace() for c in rest):
        return False
    if scheme in ("http", "https"):
        return not rest.startswith("/")
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):([0-9]{1,5})", rest)
    return scheme == "tcp" and match is not None and 0 < int(match[2]) < 65536


def meta_key(key: str) -> bool:
    return (bool(re.fullmatch(r"[A-Za-z0-9_-]{1,128}", key)) and key not in RESERVED_META
            and not key.lower().startswith("consul-"))


# -- invalid values -------------------------------------------------------------------------

# What an ini value can hold on one line: no comment starts, no `%` (expansions have their own strategy).
VALUE_CHAR = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=";#%")
VALUE = st.text(VALUE_CHAR, max_size=30).map(str.strip)
BAD_EXPANSION = st.one_of(
    st.builds(lambda before, name, after: f"{before}%({name})s{after}", VALUE,
              st.from_regex(r"x_[a-z]{1,8}", fullmatch=True), VALUE),
    st.sampled_from(["100%", "%d", "%(", "50%off", "%(here)"]),
)
BAD_DURATION = st.one_of(
    VALUE.filter(lambda v: not duration_syntax(v)),
    st.sampled_from(["0", "0s", "0ms0s", "0.5ns", "2562048h", "99999999999h", "\u0661\u0660s", "-1s", "1e3",
                     "10 s", ".", "s", "15S", "1d"]),
    BAD_EXPANSION,
)
ANY_DURATION = st.one_of(BAD_DURATION, st.sampled_from(["10s", "1m", "500ms", "1h30m", "30"]))


@dataclass(frozen=True)
class Bad:
    key: str  # as the problem names it
    value: str
    context: str = ""  # "http": needs an http check to be judged as a duration; "ttl": bad beside check = ttl


def bad(key: str, values: st.SearchStrategy, context: str = "") -> st.SearchStrategy:
    return values.map(lambda value: Bad(key, value, context))


BAD_KEYS: dict[str, st.SearchStrategy] = {
    "name": bad("name", st.one_of(
        VALUE.filter(lambda v: not dns_name(v)),
        st.from_regex(r"[a-z0-9]{64,80}", fullmatch=True),
        st.sampled_from(["-web", "web-", "my_web", "w\u00e9b", "web.service", "a b"]),
        BAD_EXPANSION)),
    "port": bad("port", st.one_of(
        VALUE.filter(lambda v: v != "" and not port(v)),
        st.integers(65536, 10**9).map(str), st.integers(-10**6, 0).map(str),
        st.sampled_from(["\uff18\uff10", "\u0668\u0660", "80\u00b2", "8080.0", "0x50", "eighty"]),
        BAD_EXPANSION)),
    "address": bad("address", st.one_of(
        st.builds(lambda a, space, b: a + space + b, VALUE.filter(bool), st.sampled_from([" ", "\t", "\u3000"]),
                  VALUE.filter(bool)).filter(lambda v: any(c.isspace() for c in v.strip())),
        BAD_EXPANSION)),
    "tags": bad("tags", BAD_EXPANSION),  # any text is a tag; only an expansion can fail
    "meta": st.one_of(
        st.builds(lambda key, value: Bad(f"meta.{key}", value),
                  st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs"),
                                        blacklist_characters=";#=:[%"), max_size=20)
                  .filter(lambda k: not meta_key(k)), VALUE),
        st.builds(lambda key, value: Bad(f"meta.{key}", value),
                  st.one_of(st.sampled_from(RESERVED_META), st.from_regex(r"[Cc]onsul-[a-z]{0,8}", fullmatch=True),
                            st.from_regex(r"[a-z]{129,140}", fullmatch=True)), VALUE),
        st.builds(lambda key, value: Bad(f"meta.{key}", value), st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                  st.one_of(BAD_EXPANSION, st.sampled_from(["\u00e9" * 257, "a" * 513, "\u2603" * 171]))),
    ),
    "check": bad("check", st.one_of(
        VALUE.filter(lambda v: v != "" and not check(v)),
        st.sampled_from(["TTL", "None", "http://", "https://", "http:///health", "ftp://h/", "tcp://h", "tcp://h:0",
                         "tcp://h:65536", "tcp://:80", "tcp://h:\u0668\u0660", "http://a b/", "tcp://h:80 x",
                         "127.0.0.1:80"]),
        BAD_EXPANSION)),
    "interval": st.one_of(bad("interval", BAD_DURATION, "http"), bad("interval", ANY_DURATION, "ttl")),
    "timeout": st.one_of(bad("timeout", BAD_DURATION, "http"), bad("timeout", ANY_DURATION, "ttl")),
    "ttl": bad("ttl", st.one_of(BAD_DURATION, st.sampled_from(["999ms", "0.5s", "500000us"]))),
    "deregister_after": bad("deregister_after", BAD_DURATION.filter(lambda v: v.lower() != "off")),
    "on_fatal": bad("on_fatal", st.one_of(VALUE.filter(lambda v: v not in ("deregister", "critical")),
                                          st.sampled_from(["Critical", "DEREGISTER", "restart"]), BAD_EXPANSION)),
    "unknown": st.builds(lambda key, value: Bad(key, value),
                         st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
                             lambda k: k not in DOCUMENTED_KEYS), VALUE),
}


@st.composite
def bad_section(draw) -> tuple[list[Bad], str]:
    """Some invalid keys of one [consul:X] section, and the section's lines."""
    kinds = draw(st.lists(st.sampled_from(sorted(BAD_KEYS)), min_size=1, max_size=4, unique=True))
    bads = [draw(BAD_KEYS[kind]) for kind in kinds]
    # interval/timeout are bad either as durations beside an http check, or at all beside
    # check = ttl: one context per section (beside an unreadable check, as durations).
    context = "http" if "check" in kinds else next((b.context for b in bads if b.context), "")
    bads = [b for b in bads if b.context in ("", context)] or [draw(BAD_KEYS["port"])]
    lines = [f"{b.key}={b.value}" for b in bads]
    if context == "http" and "check" not in kinds:
        lines.append("check=http://127.0.0.1/health")
    return bads, "\n".join(lines)


def write_config(directory: Path, sections: dict[str, str]) -> str:
    """supervisord.conf with one `sleep` program per entry and its [consul:*] section."""
    text = "[supervisord]\nlogfile=%(here)s/supervisord.log\npidfile=%(here)s/supervisord.pid\n\n"
    for program, body in sections.items():
        text += f"[program:{program}]\ncommand=/bin/sleep 1000\n\n[consul:{program}]\n{body}\n\n"
    path = directory / "supervisord.conf"
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_check(path: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "-c", path])
    return code, out.getvalue().split("\n")[:-1], err.getvalue()


def named(line: str, path: str, program: str, key: str) -> bool:
    return line.startswith(f"{path}: [consul:{program}] {key} = ")


# -- one key at a time ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
def test_every_key_with_an_invalid_value_is_one_named_problem(kind):
    @PURE
    @given(BAD_KEYS[kind])
    def each(bad_key: Bad):
        body = f"{bad_key.key}={bad_key.value}" + ("\ncheck=http://127.0.0.1/health" if bad_key.context == "http"
                                                   else "")
        with tempfile.TemporaryDirectory() as directory:
            path = write_config(Path(directory), {"good": "port=8080", "bad": body})
            configuration = config.read(path)
            assert configuration.readable
            assert set(configuration.services) == {"good"}
            assert {p.section for p in configuration.problems} == {"consul:bad"}
            assert {p.key for p in configuration.problems} == {bad_key.key}
            code, lines, err = run_check(path)
        assert code == 1 and f"{len(lines)} problem(s) in {path}" in err
        assert lines and all(named(line, path, "bad", bad_key.key) for line in lines), lines

    each()


# -- several keys in several sections --------------------------------------------------------


@SEVERAL
@given(st.lists(bad_section(), min_size=1, max_size=4), st.integers(0, 2))
def test_every_problem_of_every_section_is_listed_and_only_those_programs_left_out(sections, goods):
    bodies = {f"bad{n}": body for n, (_, body) in enumerate(sections)}
    bodies.update({f"good{n}": "" if n == 0 else f"port={8000 + n}\ntags=a,b\nmeta.v=1" for n in range(goods)})
    with tempfile.TemporaryDirectory() as directory:
        path = write_config(Path(directory), bodies)
        configuration = config.read(path)
        code, lines, err = run_check(path)

    assert configuration.readable
    assert set(configuration.services) == {f"good{n}" for n in range(goods)}
    assert code == 1 and f"{len(lines)} problem(s) in {path}" in err
    for n, (bads, _) in enumerate(sections):
        for bad_key in bads:
            assert any(named(line, path, f"bad{n}", bad_key.key) for line in lines), (bad_key, lines)
    # Nothing else: every line names one of the keys made invalid, in its own section.
    for line in lines:
        assert any(named(line, path, f"bad{n}", b.key) for n, (bads, _) in enumerate(sections) for b in bads), line


# -- the rest of the documented rules ------------------------------------------------------------


@pytest.mark.parametrize("line", ["ttl=30s", "on_fatal=critical", "interval=5s", "timeout=1s"])
def test_keys_that_need_a_check_are_problems_beside_check_none(tmp_path, line):
    path = write_config(tmp_path, {"web": f"check=none\n{line}"})
    key, value = line.split("=")
    [problem] = config.read(path).problems
    assert (problem.file, problem.section, problem.key, problem.value) == (path, "consul:web", key, value)


@pytest.mark.parametrize("value, kept", [("1m", "1m"), ("off", None)])
def test_deregister_after_beside_check_none_is_the_liveness_checks(tmp_path, value, kept):
    path = write_config(tmp_path, {"web": f"check=none\nderegister_after={value}"})
    configuration = config.read(path)
    assert configuration.problems == ()
    assert configuration.services["web"].deregister_after == kept


def test_too_many_meta_entries_names_the_first_one_over(tmp_path):
    allowed = schema.MAX_META_PAIRS - len(RESERVED_META)
    path = write_config(tmp_path, {"web": "\n".join(f"meta.k{n}=v{n}" for n in range(allowed + 3))})
    [problem] = config.read(path).problems
    assert (problem.section, problem.key, problem.value) == ("consul:web", f"meta.k{allowed}", f"v{allowed}")


def test_a_bad_interval_is_reported_beside_an_unexpandable_check(tmp_path):
    path = write_config(tmp_path, {"web": "check=http://%(x_nope)s/\ninterval=soon\ntimeout=0s"})
    assert sorted(p.key for p in config.read(path).problems) == ["check", "interval", "timeout"]


def test_a_bad_on_fatal_expansion_is_one_problem(tmp_path):
    path = write_config(tmp_path, {"web": "on_fatal=%(x_nope)s"})
    [problem] = config.read(path).problems
    assert problem.key == "on_fatal" and "literal % as %%" in problem.message


@pytest.mark.parametrize("value, accepted", [("2562047h", True), ("2562048h", False), ("1ns", True),
                                             ("0.5ns", False), ("1h30m", True), ("\u0661\u0660s", False),
                                             ("1.s", True), (".5s", True), (".s", False)])
def test_durations_are_what_consul_accepts(tmp_path, value, accepted):
    # Consul reads them with Go's time.ParseDuration: ASCII digits, whole ns in an int64.
    path = write_config(tmp_path, {"web": f"check=http://127.0.0.1/\ninterval={value}"})
    assert (config.read(path).problems == ()) is accepted


# -- under a real supervisord and a real Consul -------------------------------------------------

INVALID = {  # program -> its [consul:*] keys beyond name=; the keys the problems must name
    "badport": ("port=eighty", {"port"}),
    "badcheck": ("check=ftp://127.0.0.1/\ninterval=0s", {"check", "interval"}),
    "badmany": ("ttl=soon\non_fatal=maybe\nmeta.consul-x=1\ncolour=red", {"ttl", "on_fatal", "meta.consul-x",
                                                                          "colour"}),
    "badunicode": ("port=\u0668\u0660\nderegister_after=\u0661\u0660m\nmeta.note=" + "\u00e9" * 300,
                   {"port", "deregister_after", "meta.note"}),
    "badnone": ("check=none\nttl=30s\ntags=100%", {"ttl", "tags"}),
}


@pytest.mark.fault("12. invalid [consul:*] values")
def test_invalid_sections_under_real_supervisord(consul_agent, supervisord_factory, converged):
    names = {program: unique(program) for program in ("good", "goodhttp", *INVALID)}
    text = (f"[program:good]\ncommand=sleep 300\n[consul:good]\nname={names['good']}\nport=8080\n"
            f"[program:goodhttp]\ncommand=sleep 300\n[consul:goodhttp]\nname={names['goodhttp']}\ntags=x\n"
            f"meta.version=1.2\nttl=5s\n")
    for program, (keys, _) in INVALID.items():
        text += f"[program:{program}]\ncommand=sleep 300\n[consul:{program}]\nname={names[program]}\n{keys}\n"
    start = time.monotonic()
    sv = supervisord_factory(text + listener(consul_agent))
    wait_passing(consul_agent, names["good"])
    wait_passing(consul_agent, names["goodhttp"])
    took = time.monotonic() - start

    problems = config.read(str(sv.conf)).problems
    assert {(p.section, p.key) for p in problems} == {(f"consul:{program}", key)
                                                        for program, (_, keys) in INVALID.items() for key in keys}
    # The listener names each problem, once, with file, section and key.
    log = wait_for(lambda: all(str(p) in listener_log(sv) for p in problems) and listener_log(sv),
                   message="every problem in the listener's log")
    for problem in problems:
        assert log.count(f"{problem}; this program stays unregistered") == 1
        assert f"{sv.conf}: [{problem.section}] {problem.key} = " in str(problem)
    # Only the valid programs are in Consul, though every program runs.
    owned = {s["Meta"].get("supervisord-process") for s in consul_agent.services().values()
             if s["Service"] in names.values()}
    assert owned == {"good", "goodhttp"}
    assert all(sv.state(program) == "RUNNING" for program in INVALID)
    assert sv.state("consul") == "RUNNING"
    check = run_cli("check", "-c", str(sv.conf))
    assert check.returncode == 1
    assert sorted(check.stdout.splitlines()) == sorted(str(p) for p in problems)
    converged(took, f"{len(problems)} problems in {len(INVALID)} sections named; only the 2 valid programs "
                    f"registered")
