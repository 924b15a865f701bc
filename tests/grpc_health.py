"""A real gRPC server speaking the standard health protocol (grpc.health.v1), for
integration tests to run as a supervisord program so that Consul's own gRPC
checks are proven against a real server rather than a mock.

    python -m tests.grpc_health --port PORT [--service NAME ...]

Run it from the repository root (so `tests` is importable): in a supervisord
stanza, use program_lines() below, which also sets directory=.  (By path,
`python tests/grpc_health.py`, does not work: this file's own name would shadow
the grpc_health package.)

It reports SERVING for the whole server ("") and for each --service.  Control:

    SIGUSR1  every status -> NOT_SERVING   (supervisorctl signal USR1 PROG)
    SIGUSR2  every status -> SERVING       (supervisorctl signal USR2 PROG)
    SIGTERM / SIGINT  graceful stop, exit status 0

One line goes to stderr once it is serving, and one per status change.
"""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

LOOPBACK = "127.0.0.1"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Every signal this program acts on.  They are blocked in every thread and taken
# synchronously by sigwait() in the main thread: a Python signal handler calling
# HealthServicer.set() could interrupt another set() in the same thread and
# deadlock on its (non-reentrant) lock when USR1 and USR2 arrive back to back.
_CONTROL = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT}


def program_lines(port: int, services: list[str] = ()) -> str:
    """The command= and directory= lines of a supervisord [program:x] stanza that runs
    this server with this Python (directory=: supervisord would otherwise start it
    in its own directory, where `tests` is not importable)."""
    args = "".join(f" --service {name}" for name in services)
    return (f"command={sys.executable} -m tests.grpc_health --port {port}{args}\n"
            f"directory={REPO_ROOT}\n")


def _log(message: str) -> None:
    print(f"grpc_health: {message}", file=sys.stderr, flush=True)


def _set_all(servicer: health.HealthServicer, services: list[str], status: int) -> None:
    for name in ["", *services]:
        servicer.set(name, status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.grpc_health", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help=f"TCP port on {LOOPBACK}")
    parser.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="a service name to report besides the whole server (\"\"); repeatable")
    args = parser.parse_args(argv)

    # Before any thread exists (importing grpc starts none), so gRPC's threads inherit
    # the mask and never take these: SIGUSR1's default action would end the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL)

    servicer = health.HealthServicer()
    _set_all(servicer, args.service, SERVING)
    # gRPC binds with SO_REUSEPORT unless told not to: a second server (a stale
    # instance) would then share the port, and Consul's checks reach either one.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"{LOOPBACK}:{args.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # newer grpcio raises when the port is taken
        _log(f"cannot bind {address}: {exc}")
        return 1
    if bound == 0:  # older grpcio returns 0 instead
        _log(f"cannot bind {address}")
        return 1
    server.start()
    _log(f"serving on {address}, services {['', *args.service]!r}, SERVING")

    while True:
        signum = signal.sigwait(_CONTROL)
        if signum == signal.SIGUSR1:
            _set_all(servicer, args.service, NOT_SERVING)
            _log("SIGUSR1: NOT_SERVING")
        elif signum == signal.SIGUSR2:
            _set_all(servicer, args.service, SERVING)
            _log("SIGUSR2: SERVING")
        else:
            break
    _log(f"{signal.Signals(signum).name}: stopping")
    # Tells Watch streams NOT_SERVING, then lets calls under way finish (up to 1 s).
    servicer.enter_graceful_shutdown()
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
