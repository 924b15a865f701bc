"""supervisord over XML-RPC: what it runs right now.

supervisord gives its children SUPERVISOR_SERVER_URL but no credentials, so
they come from SUPERVISOR_USERNAME/SUPERVISOR_PASSWORD (as childutils reads
them) or else from the server section of the configuration.
"""

from __future__ import annotations

import getpass
import http.client
import logging
import os
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Mapping
from typing import Any, Literal
from xml.parsers.expat import ExpatError

from supervisor import childutils
from supervisor.xmlrpc import Faults

from .config import Configuration

TIMEOUT = 10.0  # seconds; supervisord answers at once unless it is wedged
# The socket module's default timeout is the whole process's: one call sets it at a time.
_DEFAULT_TIMEOUT = threading.Lock()

log = logging.getLogger("supervisor_consul")


# Who asks supervisord: what to fix differs (the listener's stanza, or the shell it was run from).
Asker = Literal["listener", "command"]


class SupervisorError(Exception):
    """supervisord could not be asked; the message is one line for the log."""


def rpc_environment(configuration: Configuration, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """SUPERVISOR_SERVER_URL and credentials for childutils.getRPCInterface."""
    result = dict(env)
    server = _server(configuration)
    if not result.get("SUPERVISOR_SERVER_URL") and server is not None:
        if server.get("family") == socket.AF_UNIX:
            result["SUPERVISOR_SERVER_URL"] = f"unix://{server['file']}"
        else:
            result["SUPERVISOR_SERVER_URL"] = f"http://{server.get('host') or 'localhost'}:{server['port']}"
    password = (server or {}).get("password") or ""
    if "SUPERVISOR_USERNAME" not in result and server and server.get("username") and not password.startswith("{SHA}"):
        result["SUPERVISOR_USERNAME"] = server["username"]
        result["SUPERVISOR_PASSWORD"] = password
    return result


def _server(configuration: Configuration) -> dict[str, Any] | None:
    configs = sorted(configuration.server_configs, key=lambda c: c.get("family") != socket.AF_UNIX)
    return configs[0] if configs else None


def for_configuration(configuration: Configuration, asker: Asker, env: Mapping[str, str] = os.environ) -> Supervisor:
    """The supervisord a configuration describes, with the credentials it holds."""
    password = (_server(configuration) or {}).get("password") or ""
    return Supervisor(rpc_environment(configuration, env), asker, sha_password=password.startswith("{SHA}"))


class Supervisor:
    def __init__(self, env: Mapping[str, str], asker: Asker = "listener", sha_password: bool = False) -> None:
        self.url = env.get("SUPERVISOR_SERVER_URL", "")
        self.has_credentials = bool(env.get("SUPERVISOR_USERNAME"))
        self._env = dict(env)
        self._asker = asker
        self._sha_password = sha_password  # the configuration's password cannot be sent: it is a hash

    def all_process_info(self) -> list[dict[str, Any]]:
        return self._call("getAllProcessInfo")

    def process_info(self, namespec: str) -> dict[str, Any]:
        return self._call("getProcessInfo", namespec)

    def signal(self, namespec: str, signal: str) -> None:
        self._call("signalProcess", namespec, signal)

    def stop(self, namespec: str, wait: bool = True) -> None:
        """With WAIT, returns once supervisord has it STOPPED (within TIMEOUT: a longer
        stopwaitsecs needs wait=False and a look at its state)."""
        self._call("stopProcess", namespec, wait)

    def start(self, namespec: str, wait: bool = True) -> None:
        """With WAIT, returns once it is RUNNING (startsecs passed, within TIMEOUT); a fault
        when it does not get there."""
        self._call("startProcess", namespec, wait)

    def restart(self, namespec: str, deadline: float = 60.0) -> None:
        """Stop a process and start it again, as `supervisorctl restart` does; each
        call returns at once, so no call waits out a slow stop (stopwaitsecs)."""
        self.stop(namespec, wait=False)
        until = time.monotonic() + deadline
        while self._call("getProcessInfo", namespec)["statename"] not in ("STOPPED", "EXITED", "FATAL"):
            if time.monotonic() > until:
                raise SupervisorError(f"{namespec} did not stop within {deadline:g} s; not started again")
            time.sleep(0.1)  # supervisord says nothing when it is done but through events, which are the listener's
        self.start(namespec, wait=False)

    def wake(self) -> None:
        """Any request wakes supervisord's main loop from its poll() (up to a
        second) for a few passes; getState is the lightest."""
        self._call("getState")

    def is_stopping(self) -> bool:
        """True while supervisord shuts down or reloads: then it answers every
        call with the SHUTDOWN_STATE fault."""
        try:
            return self._call("getState")["statename"] in ("SHUTDOWN", "RESTARTING")
        except SupervisorError as exc:
            return isinstance(exc.__cause__, xmlrpc.client.Fault) and exc.__cause__.faultCode == Faults.SHUTDOWN_STATE

    def _call(self, method: str, *args: Any) -> Any:
        if not self.url:
            raise SupervisorError("supervisord's XML-RPC address is unknown: the configuration has no "
                                  "[unix_http_server] or [inet_http_server] section; add one")
        with _DEFAULT_TIMEOUT:
            return self._call_with_timeout(method, *args)

    def _call_with_timeout(self, method: str, *args: Any) -> Any:
        previous = socket.getdefaulttimeout()
        # supervisor's transport takes no timeout; this one call's sockets get one.
        socket.setdefaulttimeout(TIMEOUT)
        try:
            proxy = childutils.getRPCInterface(self._env)
            return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.ProtocolError as exc:
            hint = f"; {self._credentials_hint()}" if exc.errcode == 401 else ""
            raise SupervisorError(
                f"supervisord at {self.url} refused {method}: {exc.errcode} {exc.errmsg}{hint}") from exc
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord at {self.url} answered {method}: {exc.faultString}") from exc
        except (OSError, ValueError, http.client.HTTPException, ExpatError) as exc:
            hint = f"; {self._permission_hint()}" if isinstance(exc, PermissionError) else ""
            raise SupervisorError(f"supervisord at {self.url} cannot be reached for {method}: "
                                  f"{type(exc).__name__}: {exc}{hint}") from exc
        finally:
            socket.setdefaulttimeout(previous)


    def _credentials_hint(self) -> str:
        if self.has_credentials:
            return "check SUPERVISOR_USERNAME/SUPERVISOR_PASSWORD"
        why = ("the configuration stores the password as {SHA}..., which cannot be sent, so "
               if self._sha_password else "")
        if self._asker == "listener":
            return (f"{why}set SUPERVISOR_USERNAME and SUPERVISOR_PASSWORD in "
                    f"[eventlistener:{_listener_name()}] environment=")
        return (f"{why}run this with SUPERVISOR_USERNAME and SUPERVISOR_PASSWORD set, or use "
                f"`supervisorctl consul ...`, which asks with supervisorctl's own credentials")

    def _permission_hint(self) -> str:
        where = self.url.removeprefix("unix://")
        if self._asker == "listener":
            return (f"the listener runs as {getpass.getuser()}, who may not open {where}: run it as "
                    f"supervisord's user (no user= in [eventlistener:{_listener_name()}]) or let that user in "
                    f"with [unix_http_server] chmod=/chown=")
        return (f"{getpass.getuser()} may not open {where}: run this as supervisord's user, or let this user "
                f"in with [unix_http_server] chmod=/chown=")


def _listener_name() -> str:
    # supervisord tells each child its own group name.
    return os.environ.get("SUPERVISOR_GROUP_NAME") or "consul"


class Waker:
    """Supervisor.wake() from a thread of its own: the caller does not wait for
    the answer, which supervisord sends only after the very events the caller
    is waiting for.  Wakes asked for while one is under way make one more."""

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._supervisor: Supervisor | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._asked.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wake", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            try:
                if self._supervisor is not None:
                    self._supervisor.wake()
            except SupervisorError as exc:
                log.debug("cannot wake supervisord: %s", exc)
            except Exception:  # noqa: BLE001 - a bug here must not end the wakes
                log.exception("unexpected error waking supervisord (please report this)")
