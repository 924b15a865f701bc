"""The local Consul agent, through py-consul: the only code that talks to Consul.

py-consul reads some CONSUL_* variables itself and not others (and lets
CONSUL_HTTP_TOKEN beat an explicit token), so every setting is resolved here,
as the Consul CLI resolves it, and handed to the client explicitly.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import consul
import requests

from .health import CRITICAL, PASSING, Health
from .plan import SPEC_META, Actual, Registration, is_owned, ttl_check_id

DEFAULT_HTTP_ADDR = "127.0.0.1:8500"
TIMEOUT = 5.0  # seconds; the sync loop must never hang on a dead agent


class ConsulError(Exception):
    """The agent refused or could not be reached; the message is one line for the log."""

    def __init__(self, message: str, unreachable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status  # the HTTP status the agent answered, when it answered

    @property
    def lost(self) -> bool:
        """The agent no longer has what we wrote (it restarted): 404, or 500 on 1.8."""
        return self.status is not None and (self.status == 404 or self.status >= 500)


class SettingError(ValueError):
    """A connection option or CONSUL_* variable a user set is unusable."""


@dataclass(frozen=True)
class Connection:
    scheme: str
    host: str
    port: int
    token: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def connection(http_addr: str | None = None, token: str | None = None, token_file: str | None = None,
               ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None,
               env: Mapping[str, str] = os.environ) -> Connection:
    """Options first, then the Consul CLI's environment variables, then defaults."""
    addr = http_addr or env.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR
    source = "--http-addr" if http_addr else "CONSUL_HTTP_ADDR" if env.get("CONSUL_HTTP_ADDR") else "default"
    ssl = _flag(env, "CONSUL_HTTP_SSL", False)
    parsed = urllib.parse.urlsplit(addr if "://" in addr else f"//{addr}")
    scheme = parsed.scheme or ("https" if ssl else "http")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if scheme not in ("http", "https") or not parsed.hostname or port == -1 or parsed.path.strip("/"):
        raise SettingError(f"{source} {addr!r}: expected host:port, http://host:port or https://host:port")
    if port is None:
        port = 8501 if scheme == "https" else 8500
    # Options beat variables; at each level a token file beats a token, as in
    # Consul's own client (api.NewClient: "If the TokenFile is set, always use that").
    if not token:
        token_file = token_file or env.get("CONSUL_HTTP_TOKEN_FILE")
        token = _read_token(token_file) if token_file else env.get("CONSUL_HTTP_TOKEN") or None
    client_cert = client_cert or env.get("CONSUL_CLIENT_CERT") or None
    client_key = client_key or env.get("CONSUL_CLIENT_KEY") or None
    if bool(client_cert) != bool(client_key):
        raise SettingError("--client-cert and --client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY) go together; give both")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname  # IPv6 keeps its brackets
    return Connection(scheme=scheme, host=host, port=port, token=token,
                      ca_file=ca_file or env.get("CONSUL_CACERT") or None,
                      client_cert=client_cert, client_key=client_key,
                      verify=_flag(env, "CONSUL_HTTP_SSL_VERIFY", True))


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}={value!r}: expected true or false")


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise SettingError(f"cannot read the Consul token file {path}: {exc.strerror}") from exc


class Agent:
    def __init__(self, conn: Connection, timeout: float = TIMEOUT) -> None:
        self.conn = conn
        verify: bool | str = conn.ca_file if (conn.verify and conn.ca_file) else conn.verify
        cert = (conn.client_cert, conn.client_key) if conn.client_cert else None
        self.client = consul.Consul(host=conn.host, port=conn.port, scheme=conn.scheme, verify=verify,
                                    cert=cert, token=conn.token, connections_timeout=timeout)
        self.client.token = conn.token  # py-consul lets CONSUL_HTTP_TOKEN win; we already chose
        self.client.http.session.trust_env = False  # the agent is local: no proxy from HTTP_PROXY

    @property
    def endpoint(self) -> str:
        return self.conn.endpoint

    def read_owned(self, owner: str) -> dict[str, Actual]:
        """Our instances on this agent, with the status of their TTL checks."""
        services = self._call("GET /v1/agent/services", self.client.agent.services)
        checks = self._call("GET /v1/agent/checks", self.client.agent.checks)
        by_service: dict[str, list[dict[str, Any]]] = {}
        for check in checks.values():
            by_service.setdefault(check.get("ServiceID", ""), []).append(check)
        actual = {}
        for sid, service in services.items():
            if not is_owned(service, owner):
                continue
            own_checks = by_service.get(sid, [])
            ttl = next((c for c in own_checks if c.get("CheckID") == ttl_check_id(sid)), None)
            actual[sid] = Actual(
                service_id=sid,
                fingerprint=(service.get("Meta") or {}).get(SPEC_META, ""),
                check_ids=frozenset(c["CheckID"] for c in own_checks),
                status=ttl["Status"] if ttl else None,
                output=ttl.get("Output") if ttl else None,
            )
        return actual

    def register(self, registration: Registration, health: Health | None, initial: str = CRITICAL) -> None:
        payload = registration.payload(initial)
        checks = payload["Checks"]
        self._write(f"PUT /v1/agent/service/register ({registration.name})", self.client.agent.service.register,
                   registration.name, service_id=registration.service_id, address=registration.address or None,
                   port=registration.port or None, tags=payload["Tags"], meta=payload["Meta"],
                   check=checks[0] if checks else None, extra_checks=checks[1:],
                   replace_existing_checks=True, service=registration.name)
        if health is not None and registration.ttl_check_id:
            self.update_ttl(registration.ttl_check_id, health, registration.name)

    def update_ttl(self, check_id: str, health: Health, service: str = "") -> None:
        update = self.client.agent.check.ttl_pass if health.status == PASSING else self.client.agent.check.ttl_fail
        self._write(f"PUT /v1/agent/check/{'pass' if health.status == PASSING else 'fail'} ({check_id})",
                    update, check_id, health.note, service=service)

    def deregister(self, service_id: str, service: str = "") -> None:
        self._write(f"PUT /v1/agent/service/deregister ({service_id})", self.client.agent.service.deregister,
                    service_id, service=service)

    def _write(self, what: str, function: Any, *args: Any, service: str = "", **kwargs: Any) -> None:
        # py-consul answers a 404 with False rather than an exception.
        if self._call(what, function, *args, need=f"service:write on {service or 'the service'}", **kwargs) is False:
            raise ConsulError(f"Consul agent at {self.endpoint} answered {what}: 404 not found", status=404)

    def _call(self, what: str, function: Any, *args: Any, need: str = "service:read and node:read",
              **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except consul.ACLPermissionDenied as exc:
            raise ConsulError(f"Consul agent at {self.endpoint} refused {what}: 403 {_text(exc)}; "
                              f"the token needs {need}", status=403) from exc
        except consul.ACLDisabled as exc:
            raise ConsulError(f"Consul agent at {self.endpoint} refused {what}: 401 {_text(exc)}",
                              status=401) from exc
        except consul.ConsulException as exc:
            raise ConsulError(f"Consul agent at {self.endpoint} refused {what}: {_text(exc)}",
                              status=_status(exc)) from exc
        except requests.exceptions.SSLError as exc:
            raise ConsulError(f"TLS with the Consul agent at {self.endpoint} failed: {_reason(exc)}; check "
                              f"--ca-file/CONSUL_CACERT and the client certificate", unreachable=True) from exc
        except requests.exceptions.Timeout as exc:
            raise ConsulError(f"Consul agent at {self.endpoint} did not answer {what} within "
                              f"{self.client.http.connections_timeout:g}s", unreachable=True) from exc
        except requests.exceptions.RequestException as exc:
            raise ConsulError(f"Consul agent at {self.endpoint} is unreachable ({_reason(exc)}); "
                              f"is it running? retrying", unreachable=True) from exc


def _status(exc: Exception) -> int | None:
    """py-consul puts the status first in 4xx/5xx messages ("500 CheckID … does not have associated TTL")."""
    if isinstance(exc, consul.NotFound):
        return 404
    match = re.match(r"\s*(\d{3})\b", str(exc))
    return int(match[1]) if match else 500


def _text(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def _reason(exc: Exception) -> str:
    reason: BaseException = exc
    while reason.__context__ is not None and reason.__context__ is not reason:
        reason = reason.__context__
    return " ".join(str(reason).split())[:200] or type(exc).__name__
