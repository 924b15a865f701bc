"""ianitor command lines: what a `command=ianitor ... NAME -- PROGRAM ...` says.

ianitor (0.1.0, the last release) wraps a program and registers it in Consul
itself.  Its options, as its own argparse declares them: --consul-agent
HOST[:PORT] (default localhost:8500), --ttl SECONDS (float, default 10),
--heartbeat SECONDS, --tags TAG (repeatable), --id, --address, --port (int),
-v/--verbose (counted), then the service name; everything after the first `--`
is the wrapped command, run without a shell.  The same argparse reads them
here, prefixes (`--consul`) and `--opt=value` included, so a command line means
to this module what it meant to ianitor.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass

DEFAULT_AGENT_PORT = 8500  # ianitor's, for a --consul-agent without a port
DEFAULT_AGENT = ("localhost", DEFAULT_AGENT_PORT)


@dataclass(frozen=True)
class Wrapped:
    """One ianitor invocation, as written."""

    service_name: str
    command: str  # the wrapped command: the text after `--`, exactly as written
    consul_agent: tuple[str, int] | None = None  # None: not given (ianitor's default)
    ttl: float | None = None  # seconds; None: not given (ianitor's 10)
    heartbeat: float | None = None
    tags: tuple[str, ...] = ()
    service_id: str | None = None
    address: str | None = None
    port: int | None = None
    verbose: int = 0


class NotIanitor(Exception):
    """The command does not run ianitor."""


class Unparsable(Exception):
    """The command runs ianitor, but not in a way this module can read."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise Unparsable(message)


def _agent(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not colon:
        return text, DEFAULT_AGENT_PORT
    if not host or not port.isdigit():
        raise ValueError(text)
    return host, int(port)


def _parser() -> _Parser:
    parser = _Parser(prog="ianitor", add_help=False)
    parser.add_argument("--consul-agent", type=_agent)
    parser.add_argument("--ttl", type=float)
    parser.add_argument("--heartbeat", type=float)
    parser.add_argument("--tags", action="append", default=[])
    parser.add_argument("--id")
    parser.add_argument("--address")
    parser.add_argument("--port", type=int)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("service_name")
    return parser


def _ianitor_args(argv: list[str]) -> list[str]:
    """The arguments ianitor gets, if argv runs it: `ianitor`, `/path/to/ianitor`, or
    `python -m ianitor` (any python, by path or not)."""
    if argv and os.path.basename(argv[0]) == "ianitor":
        return argv[1:]
    if len(argv) >= 3 and re.fullmatch(r"python[0-9.]*", os.path.basename(argv[0])) and argv[1:3] == ["-m", "ianitor"]:
        return argv[3:]
    raise NotIanitor


def parse(command: str) -> Wrapped:
    """What `command` (a supervisord command= value) tells ianitor; NotIanitor when it
    does not run ianitor, Unparsable (saying why) when it runs it in a way that
    cannot be read."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        if re.match(r"\s*(\S*/)?ianitor\b|\s*\S*python[0-9.]*\s+-m\s+ianitor\b", command):
            raise Unparsable(f"the command cannot be split into words: {exc}") from None
        raise NotIanitor from None
    args = _ianitor_args(argv)
    if "--" not in args:
        raise Unparsable("no `--` before the wrapped command")
    split = args.index("--")
    options, wrapped = args[:split], args[split + 1:]
    if not wrapped:
        raise Unparsable("nothing after `--`: no command to run")
    parsed = _parser().parse_args(options)
    if parsed.help:
        raise Unparsable("-h/--help: ianitor only prints its usage")
    return Wrapped(
        service_name=parsed.service_name,
        command=_text_after_separator(command, len(argv) - len(wrapped)),
        consul_agent=parsed.consul_agent,
        ttl=parsed.ttl,
        heartbeat=parsed.heartbeat,
        tags=tuple(parsed.tags),
        service_id=parsed.id,
        address=parsed.address,
        port=parsed.port,
        verbose=parsed.verbose,
    )


def _text_after_separator(command: str, words_before: int) -> str:
    """The wrapped command as written (its quoting and %(...)s kept): the text after the
    `--` that ends the first `words_before` words (the `--` counted)."""
    for match in re.finditer(r"(?<!\S)--(?!\S)", command):
        try:
            words = shlex.split(command[:match.end()])
        except ValueError:
            continue  # inside quotes: not the separator
        if len(words) == words_before and words[-1] == "--":
            return command[match.end():].strip()
    raise Unparsable("cannot find the `--` in the command as written")
