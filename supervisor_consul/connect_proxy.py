"""`supervisor-consul connect-proxy NAMESPEC`: the Consul Connect sidecar proxy
of one process's instance, as a supervisord program of its own.

It finds the instance ID the listener gives the process (an operator never
types generated IDs) and execs `consul connect proxy -sidecar-for ID`, or
`consul connect envoy -sidecar-for ID` with --envoy, so supervisord watches
the proxy itself.  With numprocs: `connect-proxy web:web_%(process_num)02d`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import config, instance
from .agent import Agent, ConsulError
from .connection import connection
from .spec import Connect


def add_parser(commands: argparse._SubParsersAction, configuration_option: Callable[[argparse.ArgumentParser], None]
               ) -> None:
    proxy = commands.add_parser(
        "connect-proxy", usage="%(prog)s NAMESPEC [--envoy] [--consul PATH] [--http-addr ADDR] [-c PATH] [-- ARG ...]",
        help="run the Consul Connect sidecar proxy of a process's instance (connect = sidecar)",
        description="Exec `consul connect proxy -sidecar-for ID` (or `consul connect envoy` with --envoy) for "
                    "the instance of NAMESPEC, as a supervisord program; arguments after -- go to consul.  "
                    "The consul command reads CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN_FILE ... itself.")
    proxy.add_argument("namespec", metavar="NAMESPEC", help="group:name or the program's name; "
                                                            "group:name/KEY for a [consul:PROGRAM:KEY] service")
    proxy.add_argument("--envoy", action="store_true", help="run Envoy (consul connect envoy) instead of "
                                                            "Consul's built-in proxy")
    proxy.add_argument("--consul", metavar="PATH", default="consul", help="the consul command (default: on PATH)")
    proxy.add_argument("--http-addr", metavar="ADDR", help="passed on as -http-addr (else CONSUL_HTTP_ADDR)")
    proxy.set_defaults(extra=[])  # what follows `--` (split off by split_extra: argparse would judge it)
    configuration_option(proxy)
    proxy.set_defaults(run=run)


def command(args: argparse.Namespace, configuration: config.Configuration, host: str) -> list[str] | str:
    """consul's argv, or what is wrong (one line)."""
    spec = configuration.services.get(args.namespec)
    if spec is None:
        return (f"{args.namespec}: no process with a [consul:*] section has that name in "
                f"{configuration.configfile} (supervisorctl's group:name; group:name/KEY for a further service)")
    if spec.connect != Connect.SIDECAR:
        return (f"{configuration.configfile}: [consul:{spec.namespec.split(':')[0]}] has no connect = sidecar, "
                f"so {args.namespec} has no sidecar to proxy for; add it")
    sid = instance.instance_id(instance.owner_of(host, configuration), spec)
    extra = args.extra
    return [args.consul, "connect", "envoy" if args.envoy else "proxy", "-sidecar-for", sid,
            *(["-http-addr", args.http_addr] if args.http_addr else []), *extra]


REGISTERED_WITHIN = 60.0  # seconds: supervisord starts the proxy and the listener together


def _sidecar_registered(service_id: str, http_addr: str | None) -> bool:
    """Wait until the agent has the sidecar: supervisord starts this program alongside the
    listener, which registers it only once the process is RUNNING; the proxy would exit at once
    otherwise, and supervisord give it up (FATAL) after startretries."""
    agent = Agent(connection(http_addr=http_addr))
    deadline = time.monotonic() + REGISTERED_WITHIN
    while time.monotonic() < deadline:
        try:
            if agent.has_service(f"{service_id}-sidecar-proxy"):
                return True
        except ConsulError:
            pass  # the agent may be starting too
        time.sleep(0.5)
    return False


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our arguments, consul's): what follows the first `--` of a connect-proxy command line."""
    argv = list(argv)
    if "connect-proxy" in argv and "--" in argv[argv.index("connect-proxy"):]:
        cut = argv.index("--", argv.index("connect-proxy"))
        return argv[:cut], argv[cut + 1:]
    return argv, []


def run(args: argparse.Namespace, execvp: Callable[..., Any] = os.execvp) -> int:
    if (located := config.read_located(args.configuration)) is None:
        return 2
    _, configuration = located
    argv = command(args, configuration, platform.node())
    if isinstance(argv, str):
        print(f"supervisor-consul connect-proxy: {argv}", file=sys.stderr)
        return 2
    if not _sidecar_registered(argv[argv.index("-sidecar-for") + 1], args.http_addr):
        print(f"supervisor-consul connect-proxy: the listener has not registered {args.namespec}'s sidecar within "
              f"{REGISTERED_WITHIN:g} s; is the process RUNNING, and the listener running?", file=sys.stderr)
        return 2
    print(f"supervisor-consul connect-proxy: {' '.join(argv)}", file=sys.stderr)
    try:
        execvp(argv[0], argv)
    except OSError as exc:
        print(f"supervisor-consul connect-proxy: cannot run {argv[0]}: {exc.strerror}; give --consul PATH",
              file=sys.stderr)
        return 2
    return 0  # only when execvp is not the real one
