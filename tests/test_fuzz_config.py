"""Issue 3, item 12: every `[consul:…]` key given invalid values (hypothesis).

`supervisor-consul check` lists every problem, one line each naming the file,
the section `[consul:X]` and the key, and exits 1; the listener leaves out
exactly the programs whose section has a problem.  The invalid values are
stated here from the documented rules (docs/reference.md, the `[consul:PROGRAM]` table), not
from config.py or schema.py's parsers, and written into real configuration
files.  Which keys there are comes from the one declaration, `schema.KEYS`:
every key declared there needs a strategy in BAD_KEYS, or this file fails.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor_consul import cli, config, schema
from tests.harness import listener, run_cli, wait_for
from tests.test_integration import listener_log, unique, wait_passing

pytestmark = pytest.mark.fuzz  # hypothesis: seconds a test; the full suite runs them, `make unit` not

PURE = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
SEVERAL = settings(PURE, max_examples=60)  # each example reads a file with several programs
QUICK = settings(PURE, max_examples=40)  # no file: only what a strategy draws

RESERVED_META = ("external-source", "supervisor-consul-owner", "supervisor-consul-spec", "supervisord-group",
                 "supervisord-process", "supervisord-host")
# The declared names; upper-case parts stand for any name (`meta.KEY`, `check.NAME.header.HEADER`).
DOCUMENTED_KEYS = tuple(key.name for key in schema.KEYS)


# -- the rules, as documented ------------------------------------------------------------

def dns_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", value))


def port(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{1,5}", value)) and 0 < int(value) < 65536


def duration_syntax(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+(?:\.[0-9]+)?|(?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|ms|s|m|h))+", value))


def host_port(value: str) -> bool:
    """HOST:PORT, an IPv6 host in brackets: [::1]:80."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):([0-9]{1,5})", value)
    return match is not None and port(match[2])


def url(value: str, schemes: tuple[str, ...]) -> bool:
    """http(s)://HOST[:PORT]/PATH, tcp://HOST:PORT or grpc://HOST:PORT[/SERVICE], of the schemes given."""
    scheme, sep, rest = value.partition("://")
    if scheme not in schemes or not sep or not rest or any(c.isspace() for c in rest):
        return False
    if scheme in ("http", "https"):
        return not rest.startswith("/")
    return host_port(rest.partition("/")[0] if scheme == "grpc" else rest)


def check(value: str) -> bool:
    """`check =`: ttl, none, or one http, https or tcp check (grpc and exec only as check.NAME)."""
    return value in ("ttl", "none") or url(value, ("http", "https", "tcp"))


def meta_key(key: str) -> bool:
    return (bool(re.fullmatch(r"[A-Za-z0-9_-]{1,128}", key)) and key not in RESERVED_META
            and not key.lower().startswith("consul-"))


def whole(value: str, minimum: int, maximum: int = 2**63 - 1) -> bool:
    return bool(re.fullmatch(r"[0-9]+", value)) and minimum <= int(value) <= maximum


# supervisor's own booleans (supervisor.datatypes.boolean), in any case.
BOOLEANS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def boolean(value: str) -> bool:
    return value.lower() in BOOLEANS


def token(value: str) -> bool:
    """An HTTP token (RFC 9110): what methods and header names are made of."""
    return bool(re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value))


def check_name(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9_-]{1,64}", name))


# Which kinds of check each option of a named check means something to (docs/reference.md: "(http checks only)" …).
# http covers https too; exec checks are run by the listener.
KINDS = ("http", "tcp", "grpc", "exec")
APPLIES = {
    "interval": set(KINDS),
    "timeout": set(KINDS),
    "method": {"http"},
    "header.HEADER": {"http"},
    "body": {"http"},
    "tls_skip_verify": {"http", "grpc"},
    "tls": {"grpc"},
    "success_before_passing": {"http", "tcp", "grpc"},
    "failures_before_critical": {"http", "tcp", "grpc"},
    "restart_after": set(KINDS),
    "restart_grace": set(KINDS),
}
TARGETS = {  # valid check.NAME values of each kind
    "http": ("http://127.0.0.1/health", "https://localhost:8443/ready", "http://[::1]:8080/", "http://web"),
    "tcp": ("tcp://127.0.0.1:5432", "tcp://[::1]:6379", "tcp://db.internal:80"),
    "grpc": ("grpc://127.0.0.1:50051", "grpc://localhost:50051/my.Service"),
    "exec": ("exec /bin/true", "exec /usr/bin/test -f '/tmp/a b'"),
}


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
BAD_BOOLEAN = st.one_of(
    VALUE.filter(lambda v: not boolean(v)),
    st.sampled_from(["2", "-1", "y", "n", "t", "f", "enabled", "disabled", "tru", "oui", "01", "00", "1.0",
                     "\u0661", "\uff59\uff45\uff53", "yes please", "true,false"]),
    BAD_EXPANSION,
)


def bad_whole(minimum: int) -> st.SearchStrategy:
    return st.one_of(
        VALUE.filter(lambda v: not whole(v, minimum)),
        st.sampled_from(["-1", "+1", "1.0", "1e3", "0x10", "\u0661", "\uff11", "1 000", "1_000", "one", "3 3"]
                        + (["0", "00", "-0"] if minimum else [])),
        BAD_EXPANSION,
    )


@dataclass(frozen=True)
class Bad:
    key: str  # as the problem names it
    value: str
    context: str = ""  # "http": needs an http check to be judged as a duration; "ttl": bad beside check = ttl
    beside: tuple[tuple[str, str], ...] = ()  # valid lines the key needs: its check.NAME = URL
    check: str = ""  # NAME of the named check the key is about, if any

    def lines(self) -> list[str]:
        return [f"{self.key}={self.value}", *(f"{key}={value}" for key, value in self.beside)]

    def renamed(self, suffix: str) -> Bad:
        """The same, with its check's NAME made unique in a section of several."""
        if not self.check:
            return self

        def rename(key: str) -> str:
            old = f"check.{self.check}"
            return f"check.{self.check}{suffix}{key[len(old):]}" if key == old or key.startswith(old + ".") else key
        return replace(self, key=rename(self.key), beside=tuple((rename(k), v) for k, v in self.beside),
                       check=self.check + suffix)


def bad(key: str, values: st.SearchStrategy, context: str = "") -> st.SearchStrategy:
    return values.map(lambda value: Bad(key, value, context))


CHECK_NAME = st.one_of(st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True), st.sampled_from(["web", "db", "a-b_c"]))
# Names a check cannot have: supervisor's parser lower-cases keys, so upper case is no mistake;
# no '.' (that would be another key), '=' or ':' (the ini's delimiters).
BAD_CHECK_NAME = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Lu", "Lt"),
                          blacklist_characters=";#%=:.[]"), min_size=1, max_size=16)
    .map(lambda name: name.strip().lower()).filter(lambda name: name and "." not in name and not check_name(name)),
    st.from_regex(r"[a-z0-9]{65,80}", fullmatch=True),
    st.sampled_from(["a b", "w\u00e9b", "a+b", "web!", "\u00e9", "a/b", "(x)"]),
)
# A header name as an ini key can hold it (no '=' or ':'), which is no HTTP token.
BAD_HEADER_NAME = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=";#%=:["),
            min_size=1, max_size=16).map(str.strip).filter(lambda name: name and not token(name)),
    st.sampled_from(["X Token", "X-T\u00f6ken", "X(1)", "X,Y", "X/Y", "X@Y", "X\"Y", "{X}", "X?", "\u00c9"]),
)
GOOD_VALUES = {  # valid values of each option of a named check: (the option after check.NAME., its value)
    "interval": st.tuples(st.just("interval"), st.sampled_from(["5s", "1m", "30", "1h30m"])),
    "timeout": st.tuples(st.just("timeout"), st.sampled_from(["1s", "500ms", "10"])),
    "method": st.tuples(st.just("method"), st.sampled_from(["GET", "POST", "HEAD", "PURGE"])),
    "header.HEADER": st.tuples(st.sampled_from(["header.X-Token", "header.Authorization", "header.x.y"]),
                               st.sampled_from(["abc", "Bearer a b", "", "a=b, c"])),
    "body": st.tuples(st.just("body"), st.sampled_from(['{"ping": 1}', "hello", "a\n  b"])),
    "tls_skip_verify": st.tuples(st.just("tls_skip_verify"), st.sampled_from(["true", "no", "On", "0"])),
    "tls": st.tuples(st.just("tls"), st.sampled_from(["yes", "off", "TRUE", "1"])),
    "success_before_passing": st.tuples(st.just("success_before_passing"), st.sampled_from(["0", "3", "10"])),
    "failures_before_critical": st.tuples(st.just("failures_before_critical"), st.sampled_from(["0", "1", "25"])),
    "restart_after": st.tuples(st.just("restart_after"), st.sampled_from(["1", "3", "10"])),
    "restart_grace": st.tuples(st.just("restart_grace"), st.sampled_from(["30s", "1m", "90"])),
}


def option_of(option: str, values: st.SearchStrategy, stated: str = "") -> st.SearchStrategy:
    """check.NAME.OPTION = a value of `values`, beside a valid check.NAME of a kind it applies to
    (APPLIES[stated or option])."""
    def build(name: str, target: str, value: str) -> Bad:
        return Bad(f"check.{name}.{option}", value, beside=((f"check.{name}", target),), check=name)
    targets = st.sampled_from(sorted(APPLIES[stated or option])).flatmap(lambda kind: st.sampled_from(TARGETS[kind]))
    return st.builds(build, CHECK_NAME, targets, values)


@st.composite
def beside_the_wrong_kind(draw) -> Bad:
    """A valid option of a named check whose kind it does not apply to (method on a tcp check, …)."""
    option = draw(st.sampled_from(sorted(o for o, kinds in APPLIES.items() if kinds != set(KINDS))))
    kind = draw(st.sampled_from(sorted(set(KINDS) - APPLIES[option])))
    name, target = draw(CHECK_NAME), draw(st.sampled_from(TARGETS[kind]))
    suffix, value = draw(GOOD_VALUES[option])
    return Bad(f"check.{name}.{suffix}", value, beside=((f"check.{name}", target),), check=name)


@st.composite
def without_its_check(draw) -> Bad:
    """A valid option of a named check, with no check.NAME = URL in the section."""
    name = draw(CHECK_NAME)
    suffix, value = draw(st.sampled_from(sorted(APPLIES)).flatmap(GOOD_VALUES.__getitem__))
    return Bad(f"check.{name}.{suffix}", value, check=name)


def unknown(key: str) -> bool:
    """Whether no declared key is this option (families included: `meta.x` is one)."""
    return schema.key_of(key) is None


BAD_TAGGED_ADDRESS = st.one_of(
    st.just(""),
    st.builds(lambda a, space, b: a + space + b, VALUE.filter(bool), st.sampled_from([" ", "\t", "\u3000"]),
              VALUE.filter(bool)).filter(lambda v: any(c.isspace() for c in v.strip())),
    # ADDRESS:PORT with a port that is none (one ':' only: more would be an IPv6 address)
    st.builds(lambda host, p: f"{host}:{p}", st.sampled_from(["203.0.113.5", "example.com", "h"]),
              st.one_of(VALUE.filter(lambda v: ":" not in v and not port(v)), st.integers(65536, 99999).map(str),
                        st.sampled_from(["0", "00000", "-1", "\u0668\u0660", "80\u00b2", "%(port)s"]))),
    st.builds(lambda host, p: f"[{host}]:{p}", st.sampled_from(["::1", "2001:db8::1"]),
              st.one_of(st.integers(65536, 99999).map(str), st.sampled_from(["0", "00000"]))),
    st.sampled_from([":80", ":", "203.0.113.5:", "h:%(port)s",  # %(port)s: no port= in the section
                     "[::1]:x", "[::1", "[1.2.3.4]", "[::1]:", "a:b:c", "http://h:80"]),
    BAD_EXPANSION,
)
BAD_TARGET = st.one_of(
    VALUE.filter(lambda v: not v.startswith("exec") and not url(v, ("http", "https", "tcp", "grpc"))),
    st.sampled_from(["ttl", "none", "TTL", "http://", "https://", "http:///health", "ftp://h/", "tcp://h",
                     "tcp://h:0", "tcp://h:65536", "tcp://:80", "tcp://h:\u0668\u0660", "http://a b/", "tcp://h:80 x",
                     "tcp://::1:80", "127.0.0.1:80", "grpc://h", "grpc://h:0", "grpc://:50051", "grpc://h:99999/svc",
                     "grpc:///svc", "grpc://h:50051/a b", "exec", "EXEC /bin/true", "execute /bin/true",
                     "exec 'unclosed", 'exec "a', "exec /bin/echo \\", "/bin/true", "tcp://h:%(port)s",
                     "http://h:abc/", "http://h:0/", "https://[::1/", "http://h:99999/"]),
    BAD_EXPANSION,
)

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
    "meta.KEY": st.one_of(
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
    "weights.passing": bad("weights.passing", st.one_of(bad_whole(1), st.integers(65536, 10**7).map(str))),
    "weights.warning": bad("weights.warning", st.one_of(bad_whole(0), st.integers(65536, 10**7).map(str))),
    "enable_tag_override": bad("enable_tag_override", BAD_BOOLEAN),
    "tagged_address.NAME": st.one_of(
        st.builds(lambda name, value: Bad(f"tagged_address.{name}", value),
                  st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
                            st.sampled_from(["wan", "lan", "wan_ipv4", "lan_ipv6"])), BAD_TAGGED_ADDRESS),
        # Consul wants an address of the IP version these names say.
        st.builds(lambda name, value: Bad(f"tagged_address.{name}", value), st.sampled_from(["lan_ipv4", "wan_ipv4"]),
                  st.sampled_from(["example.com", "::1", "[::1]:80", "2001:db8::1"])),
        st.builds(lambda name, value: Bad(f"tagged_address.{name}", value), st.sampled_from(["lan_ipv6", "wan_ipv6"]),
                  st.sampled_from(["example.com", "1.2.3.4", "1.2.3.4:80"]))),
    "check": bad("check", st.one_of(
        VALUE.filter(lambda v: v != "" and not check(v)),
        st.sampled_from(["TTL", "None", "http://", "https://", "http:///health", "ftp://h/", "tcp://h", "tcp://h:0",
                         "tcp://h:65536", "tcp://:80", "tcp://h:\u0668\u0660", "http://a b/", "tcp://h:80 x",
                         "127.0.0.1:80",
                         # grpc and exec checks are check.NAME's only
                         "grpc://127.0.0.1:50051", "grpc://h:80/svc", "exec /bin/true"]),
        BAD_EXPANSION)),
    "interval": st.one_of(bad("interval", BAD_DURATION, "http"), bad("interval", ANY_DURATION, "ttl")),
    "timeout": st.one_of(bad("timeout", BAD_DURATION, "http"), bad("timeout", ANY_DURATION, "ttl")),
    "check.NAME": st.one_of(
        st.builds(lambda name, target: Bad(f"check.{name}", target, check=name), CHECK_NAME, BAD_TARGET),
        st.builds(lambda name, target: Bad(f"check.{name}", target, check=name), BAD_CHECK_NAME,
                  st.sampled_from([t for targets in TARGETS.values() for t in targets]))),
    "check.NAME.interval": option_of("interval", BAD_DURATION),
    "check.NAME.timeout": option_of("timeout", BAD_DURATION),
    "check.NAME.method": option_of("method", st.one_of(
        VALUE.filter(lambda v: not token(v)),
        st.sampled_from(["GET POST", "GET/1", "G(ET)", "GET,", "\u00c9T", 'PO"ST', "{GET}", "GET@", "[GET]"]),
        BAD_EXPANSION)),
    # A header value is one line; an ini value is one line unless continued on indented lines.
    "check.NAME.header.HEADER": st.one_of(
        st.builds(lambda bad_key, header: replace(bad_key, key=bad_key.key.replace(".header.X-Token",
                                                                                      f".header.{header}")),
                  option_of("header.X-Token", VALUE, "header.HEADER"), BAD_HEADER_NAME),
        option_of("header.X-Token", st.one_of(
            BAD_EXPANSION, st.builds(lambda a, b: f"{a}\n  {b}", VALUE.filter(bool), VALUE.filter(bool))),
            "header.HEADER")),
    "check.NAME.body": option_of("body", BAD_EXPANSION),  # any text is a body
    "check.NAME.tls_skip_verify": option_of("tls_skip_verify", BAD_BOOLEAN),
    "check.NAME.tls": option_of("tls", BAD_BOOLEAN),
    "check.NAME.success_before_passing": option_of("success_before_passing", bad_whole(0)),
    "check.NAME.failures_before_critical": option_of("failures_before_critical", bad_whole(0)),
    "check.NAME.restart_after": option_of("restart_after", bad_whole(1)),
    "check.NAME.restart_grace": option_of("restart_grace", BAD_DURATION),
    "connect": bad("connect", st.one_of(VALUE.filter(lambda v: v not in ("none", "sidecar")),
                                        st.sampled_from(["Sidecar", "mesh", "true", "envoy"]), BAD_EXPANSION)),
    # DESTINATION:LOCAL_PORT, comma-separated (a bad one is named with or without connect = sidecar)
    "connect.upstreams": st.builds(lambda value: Bad("connect.upstreams", value),
                                   st.one_of(st.sampled_from(["db", "db:", ":9191", "db:0", "db:65536", "d b:80",
                                                              "db:9191,cache", "-db:80", "db:eighty", "db:\u0668\u0660"]),
                                             BAD_EXPANSION)),
    # drain may be zero (no drain): only what is no duration at all, or past Consul's limit, is bad.
    "drain": bad("drain", BAD_DURATION.filter(lambda v: not duration_syntax(v) or v.endswith("99999999999h")
                                              or v == "2562048h")),
    "ttl": bad("ttl", st.one_of(BAD_DURATION, st.sampled_from(["999ms", "0.5s", "500000us"]))),
    "deregister_after": bad("deregister_after", BAD_DURATION.filter(lambda v: v.lower() != "off")),
    "on_fatal": bad("on_fatal", st.one_of(VALUE.filter(lambda v: v not in ("deregister", "critical")),
                                          st.sampled_from(["Critical", "DEREGISTER", "restart"]), BAD_EXPANSION)),
    # -- not keys: rules between them
    "unknown": st.builds(lambda key, value: Bad(key, value), st.one_of(
        st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
        st.builds(lambda prefix, rest: f"{prefix}.{rest}",
                  st.sampled_from(["weights", "tagged_address", "check.web", "check.web.header", "interval",
                                   "tags", "enable_tag_override"]),
                  st.from_regex(r"[a-z0-9_.]{0,12}", fullmatch=True)),
        st.sampled_from(["weights", "weight", "tagged_address", "tagged_addresses", "enable_tag_overrides", "meta",
                         "meta.", "checks", "check.", "check..interval", "tls", "method", "header"]),
    ).filter(unknown), VALUE),
    "option beside the wrong kind of check": beside_the_wrong_kind(),
    "option without its check.NAME": without_its_check(),
}
NOT_KEYS = ("unknown", "option beside the wrong kind of check", "option without its check.NAME")


@st.composite
def bad_section(draw) -> tuple[list[Bad], str]:
    """Some invalid keys of one [consul:X] section, and the section's lines."""
    kinds = draw(st.lists(st.sampled_from(sorted(BAD_KEYS)), min_size=1, max_size=4, unique=True))
    # Each named check its own NAME, so that one Bad's check.NAME = URL is no other's.
    bads = [draw(BAD_KEYS[kind]).renamed(f"-{n}") for n, kind in enumerate(kinds)]
    # interval/timeout are bad either as durations beside an http check, or at all beside
    # check = ttl: one context per section (beside an unreadable check, as durations).
    context = "http" if "check" in kinds else next((b.context for b in bads if b.context), "")
    bads = [b for b in bads if b.context in ("", context)] or [draw(BAD_KEYS["port"])]
    lines = [line for b in bads for line in b.lines()]
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


# -- the declaration and the strategies ---------------------------------------------------------


def test_every_declared_key_has_an_invalid_value_strategy():
    # A key added to schema.KEYS without a strategy here fails the suite; so does a strategy
    # left behind for a key no longer declared.
    assert set(DOCUMENTED_KEYS) - set(BAD_KEYS) == set(), "declared keys without a BAD_KEYS strategy"
    assert set(BAD_KEYS) - set(DOCUMENTED_KEYS) == set(NOT_KEYS), "BAD_KEYS strategies for undeclared keys"


def test_every_option_of_a_named_check_has_its_kinds_stated():
    options = {key.name[len("check.NAME."):] for key in schema.KEYS if key.name.startswith("check.NAME.")}
    assert options == set(APPLIES) == set(GOOD_VALUES)


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
def test_each_strategy_draws_the_key_it_is_for(kind):
    @QUICK
    @given(BAD_KEYS[kind])
    def each(bad_key: Bad):
        found = schema.key_of(bad_key.key)
        if kind == "unknown":
            assert found is None
        elif kind in NOT_KEYS:
            assert found is not None and found[0].name.startswith("check.NAME.")
        else:
            # `meta.` (an empty meta key) is no key at all; never another key than the one meant.
            assert found is None or found[0].name == kind, (bad_key, found)

    each()


# -- one key at a time ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
def test_every_key_with_an_invalid_value_is_one_named_problem(kind):
    @PURE
    @given(BAD_KEYS[kind])
    def each(bad_key: Bad):
        body = "\n".join(bad_key.lines()) + ("\ncheck=http://127.0.0.1/health" if bad_key.context == "http"
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


GOOD_BODIES = ("", "port={port}\ntags=a,b\nmeta.v=1",
               "port={port}\nweights.passing=3\nweights.warning=0\nenable_tag_override=yes\n"
               "tagged_address.wan=203.0.113.5:%(port)s\ncheck.api=http://127.0.0.1:%(port)s/health\n"
               "check.api.method=HEAD\ncheck.api.header.X-Token=abc\ncheck.db=tcp://127.0.0.1:5432\n"
               "check.db.interval=30s\ncheck.job=exec /bin/true\ncheck.job.timeout=2s")


@SEVERAL
@given(st.lists(bad_section(), min_size=1, max_size=4), st.integers(0, 3))
def test_every_problem_of_every_section_is_listed_and_only_those_programs_left_out(sections, goods):
    bodies = {f"bad{n}": body for n, (_, body) in enumerate(sections)}
    bodies.update({f"good{n}": GOOD_BODIES[n].format(port=8000 + n) for n in range(goods)})
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


# -- valid values stay valid -----------------------------------------------------------------


@pytest.mark.parametrize("lines", [
    "weights.passing=1", "weights.warning=0", "weights.passing=65535\nweights.warning=65535", "weights.passing=007",
    *(f"enable_tag_override={value}" for value in (*BOOLEANS, "TRUE", "Off", "Yes")),
    "tagged_address.wan=203.0.113.5", "tagged_address.wan=203.0.113.5:80", "tagged_address.lan_ipv6=2001:db8::1",
    "tagged_address.wan_ipv6=[2001:db8::1]:443", "tagged_address.virtual=example.com:65535",
    "tagged_address.lan_ipv4=10.0.0.1\ntagged_address.wan_ipv4=203.0.113.5:8080",
    "port=80\ntagged_address.wan=203.0.113.5:%(port)s",
    "check=ttl\ncheck.x=exec /bin/true", "check=none\ncheck.t=tcp://[::1]:6379\ncheck.t.failures_before_critical=3",
    "port=50051\ncheck.g=grpc://127.0.0.1:%(port)s/my.Service\ncheck.g.tls=yes\ncheck.g.tls_skip_verify=true",
    "check.x=http://127.0.0.1/\ncheck.x.body=line one\n  line two\ncheck.x.header.X-A=1\ncheck.x.header.x-a=2",
])
def test_documented_values_of_the_new_keys_are_accepted(tmp_path, lines):
    path = write_config(tmp_path, {"web": lines})
    configuration = config.read(path)
    assert configuration.problems == ()
    assert set(configuration.services) == {"web"}


@SEVERAL
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.sets(st.sampled_from(sorted(APPLIES)), max_size=4)),
                min_size=1, max_size=3), st.data())
def test_named_checks_with_the_options_of_their_kind_are_accepted(checks, data):
    lines = ["port=8080"]
    for n, (kind, options) in enumerate(checks):
        lines.append(f"check.c{n}={data.draw(st.sampled_from(TARGETS[kind]))}")
        # restart_grace is documented as going with restart_after
        options = options | {"restart_after"} if "restart_grace" in options else options
        for option in sorted(o for o in options if kind in APPLIES[o]):
            suffix, value = data.draw(GOOD_VALUES[option])
            lines.append(f"check.c{n}.{suffix}={value}")
    with tempfile.TemporaryDirectory() as directory:
        configuration = config.read(write_config(Path(directory), {"web": "\n".join(lines)}))
    assert configuration.problems == ()
    assert set(configuration.services) == {"web"}


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
    "badnamed": ("weights.passing=0\nenable_tag_override=maybe\ntagged_address.wan=203.0.113.5:0\n"
                 "check.api=http://127.0.0.1/\ncheck.api.tls=yes\ncheck.db=tcp://127.0.0.1:5432\n"
                 "check.db.method=GET\ncheck.job.interval=5s\ncheck.x y=exec /bin/true\n"
                 "check.rpc=grpc://127.0.0.1:0",
                 {"weights.passing", "enable_tag_override", "tagged_address.wan", "check.api.tls", "check.db.method",
                  "check.job.interval", "check.x y", "check.rpc"}),
}


@pytest.mark.fault("12. invalid [consul:*] values")
def test_invalid_sections_under_real_supervisord(consul_agent, supervisord_factory, converged):
    names = {program: unique(program) for program in ("good", "goodhttp", "goodnew", *INVALID)}
    text = (f"[program:good]\ncommand=sleep 300\n[consul:good]\nname={names['good']}\nport=8080\n"
            f"[program:goodhttp]\ncommand=sleep 300\n[consul:goodhttp]\nname={names['goodhttp']}\ntags=x\n"
            f"meta.version=1.2\nttl=5s\n"
            f"[program:goodnew]\ncommand=sleep 300\n[consul:goodnew]\nname={names['goodnew']}\nport=8081\n"
            f"weights.passing=3\nweights.warning=0\nenable_tag_override=yes\n"
            f"tagged_address.wan=203.0.113.5:%(port)s\n")
    for program, (keys, _) in INVALID.items():
        text += f"[program:{program}]\ncommand=sleep 300\n[consul:{program}]\nname={names[program]}\n{keys}\n"
    start = time.monotonic()
    sv = supervisord_factory(text + listener(consul_agent))
    wait_passing(consul_agent, names["good"])
    wait_passing(consul_agent, names["goodhttp"])
    wait_passing(consul_agent, names["goodnew"])
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
    assert owned == {"good", "goodhttp", "goodnew"}
    assert all(sv.state(program) == "RUNNING" for program in INVALID)
    assert sv.state("consul") == "RUNNING"
    check = run_cli("check", "-c", str(sv.conf))
    assert check.returncode == 1
    assert sorted(check.stdout.splitlines()) == sorted(str(p) for p in problems)
    converged(took, f"{len(problems)} problems in {len(INVALID)} sections named; only the 3 valid programs "
                    f"registered")
