"""`supervisor-consul listen` and `supervisor-consul check`."""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from supervisor.options import make_namespec

from . import (
    __version__,
    config,
    connect_proxy,
    draining,
    durations,
    entry,
    instance,
    logtext,
    maintenance,
    migrate,
    show,
    snapshot,
    status,
)
from .agent import Agent
from .connection import SETTINGS, Connection, SettingError, connection, ignored
from .exit_watch import ExitWatch
from .inbox import Inbox
from .listener import Listener
from .metrics import Metrics, parse_endpoint
from .protocol import protocol_streams
from .sync import NotReady, Sync

log = logging.getLogger("supervisor_consul")
DEFAULT_STOPWAITSECS = 10  # supervisord's, for a listener whose own section is not found (run by hand)
EXIT_MARGIN = 1.0  # seconds of stopwaitsecs left for exiting before supervisord's SIGKILL
# supervisord's loglevel names beside Python's: an operator writes either.
LOG_LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
              "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG,
              "blather": logging.DEBUG}
SAMPLE = "supervisord.conf.sample"  # package data; etc/supervisord.conf.sample links to it
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (CPython: 0.005)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="supervisor-consul",
                                  description="Keep Consul in step with supervisord: a supervisord event listener.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser(
        "listen", help="run as supervisord's [eventlistener:consul]",
        description="The event listener.  Run it from an [eventlistener:consul] section; "
                    "Consul options fall back to the Consul CLI's environment variables.")
    _configuration_option(listen)
    _consul_options(listen)
    listen.add_argument("--log-level", default="info", choices=tuple(LOG_LEVELS),
                        help="on stderr, which supervisord files as the listener's log (default info); "
                             "supervisord's names (warn, trace, blather) too")
    listen.add_argument("--metrics-addr", metavar="HOST:PORT",
                        help="serve Prometheus metrics there (as 127.0.0.1:9187; :9187 for every address): "
                             "events, operations on the agent, reconcile durations, the last sync, instances "
                             "owned, the agent's reachability.  The claim (the service `supervisord`) then "
                             "carries the address, the port and the tag `metrics`, for Prometheus's "
                             "consul_sd_configs (default: no metrics)")
    listen.set_defaults(run=run_listen)

    check = commands.add_parser("check", help="validate the [consul:*] sections; exit 1 on any problem",
                                description="Print every problem in the [consul:*] sections and exit 1; "
                                            "exit 0 when the configuration is valid, 2 when it cannot be "
                                            "checked (not found, or supervisord cannot read it).")
    _configuration_option(check)
    check.add_argument("--show", action="store_true",
                       help="also print, for every process, the registration the listener would send "
                            "(service, ID, port, tags, meta, weights, every check); Consul is not asked")
    check.add_argument("--json", action="store_true", help="with --show: the registrations as JSON")
    check.set_defaults(run=run_check)

    status_ = commands.add_parser(
        "status", help="each process with a [consul:*] section beside what Consul shows; exit 1 on drift",
        description="One row per supervisord process with a [consul:*] section: its state, service, instance "
                    "ID, address:port and every check's status and note, with drift (Consul disagrees with "
                    "supervisord) flagged.  Exit 0 in step, 1 on drift, 2 when supervisord or Consul cannot "
                    "be asked.")
    _configuration_option(status_)
    _consul_options(status_)
    status_.add_argument("--json", action="store_true", help="the rows as JSON")
    status_.set_defaults(run=run_status)

    maint = commands.add_parser(
        "maint", help="put a program's instances into Consul's maintenance mode, or out of it",
        description="Consul's maintenance mode for the instances of the named processes: out of DNS and "
                    "shown in the UI with the reason, while supervisord keeps running them.  The listener "
                    "leaves them registered, whatever supervisord does with them, until maintenance is "
                    "turned off.  Exit 0 done, 1 when a name means nothing or a process is not registered, "
                    "2 when supervisord or Consul cannot be asked or the agent refuses.")
    maint.add_argument("names", nargs="+", metavar="NAME",
                       help="as supervisorctl takes them: group:name, group:* or a program's name, or all")
    maint.add_argument("state", choices=("on", "off"))
    maint.add_argument("--reason", metavar="TEXT", help="shown in the Consul UI (default: who and when)")
    _configuration_option(maint)
    _consul_options(maint)
    maint.set_defaults(run=run_maint)
    connect_proxy.add_parser(commands, _configuration_option)
    _drain_commands(commands)

    sample = commands.add_parser(
        "sample", help="print a complete sample supervisord configuration with supervisor-consul",
        description="Print the sample configuration (as echo_supervisord_conf does for supervisord): the "
                    "listener's stanza with the reason for each key, and [consul:*] sections showing the keys.")
    sample.set_defaults(run=run_sample)

    migrate_ = commands.add_parser(
        "migrate-ianitor", help="unwrap programs run by ianitor into [consul:*] sections",
        description="Every [program:*] whose command runs ianitor gets the wrapped command back and a "
                    "[consul:PROGRAM] section with ianitor's name, port, tags, address and ttl; the listener's "
                    "stanza (and [rpcinterface:supervisor]) are added when missing.  Prints the unified diff "
                    "and what does not carry over; --write applies it (a backup beside each file) and checks "
                    "the result, putting every file back if the check fails.  Exit 0 all migrated, 1 when a "
                    "program is left as it is or nothing could be written, 2 when the configuration cannot "
                    "be read.")
    _configuration_option(migrate_)
    migrate_.add_argument("--write", action="store_true", help="apply the changes (default: print the diff)")
    migrate_.set_defaults(run=lambda args: migrate.run(args, platform.node()))
    return top


def _drain_commands(commands: argparse._SubParsersAction) -> None:
    stop = commands.add_parser(
        "stop", help="take processes out of DNS, wait, then have supervisord stop them",
        description="Each instance of the named processes goes into Consul's maintenance mode (out of DNS), "
                    "stays there for the drain (--drain, else the largest drain= of its [consul:*] sections), "
                    "then supervisord stops it and the maintenance is lifted, so the listener deregisters it.  "
                    "Progress on stderr.  Exit 0 done, 1 when a name means nothing, 2 when supervisord or "
                    "Consul cannot be asked or refuses.")
    restart = commands.add_parser(
        "restart", help="stop as `stop` does, start again, and wait until Consul finds them passing",
        description="As `stop`, then supervisord starts each process again; its instances stay in "
                    "maintenance until every check of theirs passes, then re-enter DNS.  --rolling: one "
                    "process (--batch N) at a time, the next only once the last passes.  Exit 0 done, 1 when "
                    "a name means nothing or a process did not come back passing within --wait-passing "
                    "(the rest are left untouched), 2 when supervisord or Consul cannot be asked or refuses.")
    for command in (stop, restart):
        command.add_argument("names", nargs="+", metavar="NAME",
                             help="as supervisorctl takes them: group:name, group:* or a program's name, or all")
        command.add_argument("--drain", metavar="DURATION", type=_duration,
                             help="how long out of DNS before the stop, as 5s or 1m (default: drain= of the "
                                  "[consul:*] section, else 0s)")
        _configuration_option(command)
        _consul_options(command)
    restart.add_argument("--rolling", action="store_true", help="one batch at a time (default: all at once)")
    restart.add_argument("--batch", metavar="N", type=_positive, default=1,
                         help="with --rolling: processes per batch (default 1)")
    restart.add_argument("--wait-passing", metavar="TIMEOUT", type=_duration, default=draining.DEFAULT_WAIT_PASSING,
                         help=f"how long each batch may take to pass again (default "
                              f"{draining.DEFAULT_WAIT_PASSING})")
    stop.set_defaults(run=run_drain, restart=False, rolling=False, batch=1,
                      wait_passing=draining.DEFAULT_WAIT_PASSING)
    restart.set_defaults(run=run_drain, restart=True)


def _duration(text: str) -> str:
    try:
        return durations.normalize(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; give one as 5s, 500ms or 1m") from exc


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return int(text)


def _consul_options(command: argparse.ArgumentParser) -> None:
    consul = command.add_argument_group("Consul agent (as the Consul CLI names them)")
    consul.add_argument("--http-addr", metavar="ADDR",
                        help="host:port, http://host:port or https://host:port "
                             "(CONSUL_HTTP_ADDR; default 127.0.0.1:8500; CONSUL_HTTP_SSL=true for https)")
    consul.add_argument("--token", help="ACL token (CONSUL_HTTP_TOKEN); visible in ps, prefer --token-file")
    consul.add_argument("--token-file", metavar="PATH", help="file holding the ACL token (CONSUL_HTTP_TOKEN_FILE)")
    consul.add_argument("--ca-file", metavar="PATH", help="CA certificate to verify the agent (CONSUL_CACERT; "
                                                          "CONSUL_HTTP_SSL_VERIFY=false turns verification off)")
    consul.add_argument("--client-cert", metavar="PATH", help="client certificate (CONSUL_CLIENT_CERT)")
    consul.add_argument("--client-key", metavar="PATH", help="client key (CONSUL_CLIENT_KEY)")
    consul.add_argument("--ca-path", metavar="DIR", help="directory of CA certificates, used without --ca-file "
                                                         "(CONSUL_CAPATH)")
    consul.add_argument("--http-auth", metavar="USER[:PASSWORD]",
                        help="HTTP basic auth, for an agent behind a proxy that asks for it (CONSUL_HTTP_AUTH); "
                             "visible in ps, prefer the variable")
    consul.add_argument("--tls-server-name", metavar="NAME", help="name the agent's certificate must hold, when "
                                                                  "not the address's host (CONSUL_TLS_SERVER_NAME)")


def _configuration_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("-c", "--configuration", metavar="PATH",
                         help="supervisord's configuration file (default: the one supervisord was started "
                              "with, else supervisor's search path)")


def main(argv: Sequence[str] | None = None) -> int:
    ours, consuls = connect_proxy.split_extra(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(ours)
    if consuls:
        args.extra = consuls
    if args.run is not run_listen:
        entry.release_sigterm()
    return args.run(args)


def run_sample(args: argparse.Namespace) -> int:
    sys.stdout.write(importlib.resources.files(__package__).joinpath(SAMPLE).read_text(encoding="utf-8"))
    return 0


def run_check(args: argparse.Namespace) -> int:
    if (located := config.read_located(args.configuration)) is None:
        return 2
    configfile, configuration = located
    if args.json and not args.show:
        print("supervisor-consul: check: --json goes with --show", file=sys.stderr)
        return 2
    for problem in configuration.problems:
        print(problem, file=sys.stderr if args.json else sys.stdout)
    if args.show and configuration.readable:
        print(show.as_json(configuration, platform.node()) if args.json
              else "\n".join(show.text(configuration, platform.node())))
    if not configuration.readable:  # nothing could be checked: as a file that cannot be found
        print(f"supervisor-consul: cannot check {configfile}", file=sys.stderr)
        return 2
    if configuration.problems:
        print(f"{len(configuration.problems)} problem(s) in {configfile}", file=sys.stderr)
        return 1
    services = sorted({spec.name for spec in configuration.services.values()})
    processes = {spec.namespec for spec in configuration.services.values()}
    print(f"{configfile}: OK, {len(processes)} process(es) as {len(configuration.services)} instance(s) of "
          f"{len(services)} service(s): {', '.join(services) or 'none'}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_status(args: argparse.Namespace) -> int:
    taken = _snapshot(args)
    if isinstance(taken, int):
        return taken
    lines, code = status.report(taken, args.json, time.time())
    print("\n".join(lines))
    return code


def run_maint(args: argparse.Namespace) -> int:
    taken = _snapshot(args)
    if isinstance(taken, int):
        return taken
    lines, code = maintenance.turn(taken, args.names, args.state == "on", args.reason)
    print("\n".join(lines))
    return code


def run_drain(args: argparse.Namespace) -> int:
    taken = _snapshot(args)
    if isinstance(taken, int):
        return taken
    supervisor: draining.Control = taken.supervisor  # type: ignore[assignment]  # rpc.Supervisor, from take()
    return draining.run(taken, supervisor, args.names, args.restart, _progress, args.drain, args.rolling,
                        args.batch, args.wait_passing)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _snapshot(args: argparse.Namespace) -> snapshot.Snapshot | int:
    """The reading `status` and `maint` work from, or 2 when something cannot be asked (said on stderr)."""
    try:
        return snapshot.take(config.locate(args.configuration), _connection(args))
    except (SettingError, config.ConfigNotFound, snapshot.Unavailable) as exc:
        print(f"supervisor-consul: {exc}", file=sys.stderr)
        return 2


def _connection(args: argparse.Namespace) -> Connection:
    for message in ignored():
        log.warning("%s", message)
    return connection(**{key: getattr(args, key) for key in SETTINGS})


def run_listen(args: argparse.Namespace) -> int:
    stdin, stdout = protocol_streams()  # first: nothing else may reach stdout
    # A shutdown's SIGTERM before the sync loop runs waits for it (entry.py), so it still deregisters.
    entry.hold_sigterm()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logtext.Formatter("%(asctime)s supervisor-consul %(levelname)s %(message)s"))
    logging.basicConfig(level=LOG_LEVELS[args.log_level], handlers=[handler])
    try:
        conn = _connection(args)
        configfile = config.locate(args.configuration)
        endpoint = parse_endpoint(args.metrics_addr) if args.metrics_addr is not None else None
    except (SettingError, config.ConfigNotFound, ValueError) as exc:
        log.critical("%s", exc)
        return 2
    metrics = Metrics()
    if endpoint is not None:
        try:
            metrics.serve(endpoint)
        except OSError as exc:
            log.critical("--metrics-addr %s: cannot listen there (%s); give a free port of an address of this "
                         "host, or leave --metrics-addr out", endpoint, exc.strerror or exc)
            return 2
        log.info("serving Prometheus metrics on %s", f"http://{endpoint}{instance.METRICS_PATH}" if endpoint.host
                 else f"port {endpoint.port} of every address, path {instance.METRICS_PATH}")
    # Where the token came from, never the token: the log is readable by more people than the token.
    log.info("supervisor-consul %s listening; Consul agent %s, %s; configuration %s", __version__,
             conn.endpoint, f"token from {conn.token_source}" if conn.token else "no token", configfile)
    inbox = Inbox()
    listener = Listener(stdin, stdout, inbox)
    metrics.count_events(listener)  # from the first scrape on: every series is there before the first event
    # The listener's parent is the supervisord whose children it watches.
    sync = Sync(Agent(conn), configfile, platform.node(), inbox, exit_watch=ExitWatch(inbox.post, os.getppid()),
                metrics=metrics,
                metrics_endpoint=(endpoint.advertised, endpoint.port) if endpoint is not None else None)
    try:
        sync.prepare()
    except NotReady as exc:
        log.critical("%s", exc)
        return 2
    # The stdin loop holds up supervisord until it answers; with CPython's default 5 ms switch
    # interval it waited for the sync thread's GIL after every read (570 events/s, not 5000).
    sys.setswitchinterval(SWITCH_INTERVAL)
    worker = threading.Thread(target=_run_sync, args=(sync,), name="sync", daemon=True)
    worker.start()
    signal.signal(signal.SIGHUP, lambda *_: inbox.request_reconcile(retry_refused=True))
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if entry.sigterm_held():
            raise _Terminated
        listener.run()
    except _Terminated:
        log.info("SIGTERM; stopping")
    finally:
        inbox.close()
        budget, why = drain_budget(sync.configuration, os.environ)
        worker.join(budget)
        if worker.is_alive():
            log.warning("stopping with Consul work unfinished after %gs (%s): what is left turns critical "
                        "within its ttl; raise stopwaitsecs if the agent is this slow", budget, why)
    return 0


def drain_budget(configuration: config.Configuration | None, environ: Mapping[str, str]) -> tuple[float, str]:
    """How long the work pending at SIGTERM or EOF (deregistering, at a shutdown) may
    take, and what says so: supervisord SIGKILLs a listener stopwaitsecs after SIGTERM."""
    group = environ.get("SUPERVISOR_GROUP_NAME", "")
    namespec = make_namespec(group, environ.get("SUPERVISOR_PROCESS_NAME", ""))
    seconds = configuration.listeners.get(namespec) if configuration is not None else None
    if seconds is None:
        return DEFAULT_STOPWAITSECS - EXIT_MARGIN, f"supervisord's default stopwaitsecs, {DEFAULT_STOPWAITSECS}"
    return max(seconds - EXIT_MARGIN, seconds / 2), f"[eventlistener:{group}] stopwaitsecs = {seconds}"


def _run_sync(sync: Sync) -> None:
    try:
        sync.run()
    except Exception:
        # Without the sync loop the listener is useless: exit so supervisord restarts it.
        log.exception("the sync loop failed; exiting so supervisord restarts the listener")
        os._exit(70)


class _Terminated(BaseException):
    """Not an Exception: no `except Exception` on the way may swallow SIGTERM."""


def _terminate(*_: object) -> None:
    raise _Terminated


if __name__ == "__main__":
    sys.exit(main())
