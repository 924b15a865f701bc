"""`supervisorctl consul status` and `supervisorctl consul maint`: the same
commands as `supervisor-consul status` and `maint`, inside supervisorctl.

Enabled by a section in supervisord's configuration:

    [ctlplugin:consul]
    supervisor.ctl_factory = supervisor_consul.ctlplugin:make_consul_controllerplugin
    ; optional, as --http-addr, --token-file ... (else CONSUL_HTTP_ADDR ...):
    http_addr = 127.0.0.1:8500

supervisorctl reads its own configuration file (-c) and talks to supervisord
over its own connection (-s, -u, -p), so the plugin does too.
"""

from __future__ import annotations

import argparse
import shlex
import time
import xmlrpc.client
from typing import Any

from supervisor.supervisorctl import ControllerPluginBase

from . import draining, durations, maintenance, snapshot, status
from .connection import SETTINGS, SettingError, connection
from .rpc import SupervisorError

USAGE = ("consul status [--json]                     each process with a [consul:*] section beside what "
         "Consul shows\n"
         "consul maint NAME [NAME ...] on|off [--reason TEXT]\n"
         "                                           Consul's maintenance mode for those processes' "
         "instances;\n"
         "                                           --reason last: the rest of the line is the reason\n"
         "consul stop NAME [NAME ...] [--drain DURATION]\n"
         "                                           out of DNS for the drain, then stopped\n"
         "consul restart NAME [NAME ...] [--drain DURATION] [--rolling] [--batch N] [--wait-passing TIMEOUT]\n"
         "                                           stopped as by stop, started, back in DNS once passing")


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse would exit the whole supervisorctl shell on a typo."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise _Usage(message or "")


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="consul", add_help=False)
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    status_ = commands.add_parser("status", add_help=False)
    status_.add_argument("--json", action="store_true")
    maint = commands.add_parser("maint", add_help=False)
    maint.add_argument("names", nargs="+")
    maint.add_argument("state", choices=("on", "off"))
    maint.add_argument("--reason")
    for verb in ("stop", "restart"):
        drain = commands.add_parser(verb, add_help=False)
        drain.add_argument("names", nargs="+")
        drain.add_argument("--drain", type=_duration)
        if verb == "restart":
            drain.add_argument("--rolling", action="store_true")
            drain.add_argument("--batch", type=int, default=1)
            drain.add_argument("--wait-passing", type=_duration, default=draining.DEFAULT_WAIT_PASSING)
        drain.set_defaults(restart=verb == "restart", rolling=False, batch=1,
                           wait_passing=draining.DEFAULT_WAIT_PASSING)
    return top


def _duration(text: str) -> str:
    return durations.normalize(text)  # its ValueError reads as a usage error


class _Supervisord:
    """supervisord through supervisorctl's own connection (its -s, -u and -p)."""

    def __init__(self, ctl: Any) -> None:
        self._ctl = ctl

    def all_process_info(self) -> list[dict[str, Any]]:
        return self._call("getAllProcessInfo")

    def signal(self, namespec: str, signal: str) -> None:
        self._call("signalProcess", namespec, signal)

    def stop(self, namespec: str, wait: bool = True) -> None:
        self._call("stopProcess", namespec, wait)

    def start(self, namespec: str, wait: bool = True) -> None:
        self._call("startProcess", namespec, wait)

    def _call(self, method: str, *args: Any) -> Any:
        url = self._ctl.options.serverurl
        try:
            return getattr(self._ctl.get_supervisor(), method)(*args)
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord at {url} answered {method}: {exc.faultString}") from exc
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorError(f"supervisord at {url} cannot be reached for {method}: {exc}") from exc


class ConsulControllerPlugin(ControllerPluginBase):
    name = "consul"

    def __init__(self, controller: Any, **settings: str) -> None:
        super().__init__(controller)
        self.settings = settings  # the section's keys: as SETTINGS, else the Consul CLI's variables

    def do_consul(self, arg: str) -> None:
        try:
            args = _parser().parse_args(_words(arg))
        except (_Usage, ValueError) as exc:
            self._say([f"consul: {exc}".rstrip(), USAGE], 2)
            return
        taken = self._snapshot()
        if taken is None:
            return
        if args.command in ("stop", "restart"):
            if args.batch < 1:
                self._say(["consul: --batch: at least 1", USAGE], 2)
                return
            # Progress as it happens, through supervisorctl's output.
            code = draining.run(taken, _Supervisord(self.ctl), args.names, args.restart, self.ctl.output,
                                args.drain, args.rolling, args.batch, args.wait_passing)
            self._say([], code)
            return
        if args.command == "status":
            lines, code = status.report(taken, args.json, time.time())
        else:
            lines, code = maintenance.turn(taken, args.names, args.state == "on", args.reason)
        self._say(lines, code)

    def _snapshot(self) -> snapshot.Snapshot | None:
        unknown = sorted(set(self.settings) - set(SETTINGS))
        if unknown:
            self._say([f"{self.ctl.options.configfile}: [ctlplugin:consul] {unknown[0]}: not a setting of the "
                        f"plugin; use {', '.join(SETTINGS)}"], 2)
            return None
        try:
            settings: dict[str, Any] = {key: self.settings.get(key) for key in SETTINGS}
            conn = connection(**settings)
            return snapshot.take(self.ctl.options.configfile, conn, _Supervisord(self.ctl))
        except SettingError as exc:
            self._say([f"{self.ctl.options.configfile}: [ctlplugin:consul]: {exc}"], 2)
        except snapshot.Unavailable as exc:
            self._say([str(exc)], 2)
        return None

    def _say(self, lines: list[str], code: int) -> None:
        for line in lines:
            self.ctl.output(line)
        if code:
            self.ctl.exitstatus = code

    def help_consul(self) -> None:
        self.ctl.output(USAGE)


def _words(arg: str) -> list[str]:
    """The command's words.  `supervisorctl consul maint web on --reason "kernel update"`
    reaches the plugin as one line with the shell's quotes gone (supervisorctl joins
    its arguments with spaces), so everything after --reason is the reason, taken
    as typed unless it is one quoted string."""
    head, found, tail = arg.partition("--reason")
    words = shlex.split(head)
    if not found:
        return words
    try:
        quoted = shlex.split(tail)
    except ValueError:  # an apostrophe in the reason: "don't"
        quoted = []
    return [*words, "--reason", quoted[0] if len(quoted) == 1 else tail.strip()]


def make_consul_controllerplugin(controller: Any, **settings: str) -> ConsulControllerPlugin:
    return ConsulControllerPlugin(controller, **settings)
