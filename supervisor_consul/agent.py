"""The local Consul agent, through py-consul: the only code that talks to Consul.

How to reach it (address, token, TLS) is connection.py's; what is said to
it, and how its refusals read in the log, is here.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import consul
import requests
import urllib3

from .acl_token import Token
from .claim import INCARNATION_META, Incarnation, Seen
from .connection import OPENSSL_SOURCE_LINE, Connection, TLSAdapter, trust
from .health import CRITICAL, PASSING, WARNING, Health
from .instance import (
    ID_PREFIX,
    MAINTENANCE_PREFIX,
    OWNER_META,
    SPEC_META,
    Registration,
    claim_check_id,
    claim_id,
    is_owned,
    maintenance_reason,
    named_checks,
    ttl_check_id,
)
from .logtext import escaped
from .plan import Actual, Written
from .transport import BoundedAdapter, DeadlineExceeded, MiB, ResponseTooLarge

log = logging.getLogger("supervisor_consul")
TIMEOUT = 5.0  # seconds; the sync loop must never hang on a dead agent
REFUSED_RETRY = 30.0  # seconds: what the agent refuses (403, 400) is asked again this often, or on SIGHUP


class ConsulError(Exception):
    """The agent refused or could not be reached; the message is one line for the log."""

    def __init__(self, message: str, unreachable: bool = False, status: int | None = None,
                 token_unknown: str = "") -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status  # the HTTP status the agent answered, when it answered
        # The agent knows no such token: true of every call, so said once for all of them, in these words.
        self.token_unknown = token_unknown

    @property
    def lost(self) -> bool:
        """The agent no longer has what we wrote (it restarted): 404, or 500 on 1.8."""
        return self.status is not None and (self.status == 404 or self.status >= 500)


class Agent:
    def __init__(self, conn: Connection, timeout: float = TIMEOUT) -> None:
        self.conn = conn
        verify: bool | str = conn.ca_file if (conn.verify and conn.ca_file) else conn.verify
        cert = (conn.client_cert, conn.client_key) if conn.client_cert else None
        self.client = consul.Consul(host=conn.host, port=conn.port, scheme=conn.scheme, verify=verify,
                                    cert=cert, token=conn.token, connections_timeout=timeout)
        self.token = Token(conn.token, conn.token_source, conn.token_file, conn.token_option)
        self.client.token = conn.token  # py-consul lets CONSUL_HTTP_TOKEN win; we already chose
        if conn.http_auth is not None:
            self.client.http.session.auth = conn.http_auth
        self.client.http.session.trust_env = False  # the agent is local: no proxy from HTTP_PROXY
        # requests' timeout is per socket read, which a trickling endpoint never trips:
        # `timeout` bounds each call as a whole (transport.py), and its body in size.
        self.client.http.session.mount("http://", BoundedAdapter(timeout))
        if conn.scheme == "https" and conn.verify:
            self.client.http.session.mount("https://", TLSAdapter(trust(conn), conn.tls_server_name, timeout))
        else:
            self.client.http.session.mount("https://", BoundedAdapter(timeout))
        if conn.scheme == "https" and not conn.verify:
            # urllib3 would warn on every request, i.e. every heartbeat: say it once.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            log.warning("CONSUL_HTTP_SSL_VERIFY=false: the Consul agent's certificate at %s is not verified",
                        conn.endpoint)

    @property
    def endpoint(self) -> str:
        return self.conn.endpoint

    def refresh_token(self, force: bool = False) -> bool:
        """Pick up a rotated token file (see acl_token); True when the token changed."""
        if not self.token.reload(force):
            return False
        self.client.token = self.token.value
        return True

    def read_owned(self, *owners: str) -> dict[str, Actual]:
        """Our instances on this agent (those of any of these owner ids), with the
        status of their TTL checks."""
        actual = {}
        for sid, (service, own_checks) in self.owned(*owners).items():
            ttl = next((c for c in own_checks if c.get("CheckID") == ttl_check_id(sid)), None)
            actual[sid] = Actual(
                service_id=sid,
                fingerprint=(service.get("Meta") or {}).get(SPEC_META, ""),
                check_ids=frozenset(c["CheckID"] for c in own_checks),
                status=ttl["Status"] if ttl else None,
                output=ttl.get("Output") if ttl else None,
                maintenance=maintenance_reason(sid, own_checks),
                scripts={c["CheckID"]: Written(c.get("Status", ""), c.get("Output") or "") for c in own_checks
                         if c.get("CheckID", "").startswith(named_checks(sid)) and c.get("Type") == "ttl"},
            )
        return actual

    def in_maintenance(self, owner: str) -> dict[str, str]:
        """Which of our instances are in maintenance now, with the reasons: one
        cheap read, asked before deregistering anything."""
        prefix = f"{MAINTENANCE_PREFIX}{ID_PREFIX}:{owner}:"
        checks = self._call("GET /v1/agent/checks", self.client.agent.checks,
                            filter_expr=f'CheckID matches "^{prefix}"')
        reasons = {c["ServiceID"]: maintenance_reason(c["ServiceID"], [c]) for c in checks.values()}
        return {sid: reason for sid, reason in reasons.items() if reason is not None}

    def has_service(self, service_id: str) -> bool:
        services = self._call("GET /v1/agent/services", self.client.agent.services,
                              filter_expr=f'ID == "{service_id}"')
        return service_id in services

    def named_check_statuses(self, owner: str) -> dict[str, str]:
        """The status of each check.NAME check of ours: one filtered read, for restart_after."""
        checks = self._call("GET /v1/agent/checks", self.client.agent.checks,
                            filter_expr=f'CheckID matches "^{ID_PREFIX}:{owner}:.*:check:"')
        return {cid: check.get("Status", "") for cid, check in checks.items()}

    def maintenance(self, service_id: str, enable: bool, reason: str = "", service: str = "") -> None:
        """Consul's maintenance mode for one instance, as `consul maint -service` sets it."""
        flag = "true" if enable else "false"
        self._write(f"PUT /v1/agent/service/maintenance/{service_id}?enable={flag}",
                    self.client.agent.service.maintenance, service_id, flag, reason or None, service=service)

    def owned(self, *owners: str) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Our instances on this agent as the agent describes them: service ID ->
        (service, its checks)."""
        services = self._call("GET /v1/agent/services", self.client.agent.services)
        checks = self._call("GET /v1/agent/checks", self.client.agent.checks)
        by_service: dict[str, list[dict[str, Any]]] = {}
        for check in checks.values():
            by_service.setdefault(check.get("ServiceID", ""), []).append(check)
        return {sid: (service, by_service.get(sid, [])) for sid, service in services.items()
                if any(is_owned(service, owner) for owner in owners)}

    def read_claim(self, owner: str) -> Seen | None:
        """The claim of an owner id (claim.py) as the agent has it, or None."""
        cid = claim_id(owner)
        services = self._call("GET /v1/agent/services", self.client.agent.services, filter_expr=f'ID == "{cid}"')
        service = services.get(cid)
        if service is None:
            return None
        checks = self._call("GET /v1/agent/checks", self.client.agent.checks, filter_expr=f'ServiceID == "{cid}"')
        check = checks.get(claim_check_id(owner)) or {}
        meta = service.get("Meta") or {}
        # A service under our claim's ID that is not a claim of ours is no holder: taken over.
        incarnation = Incarnation.decode(meta.get(INCARNATION_META, "")) if meta.get(OWNER_META) == owner else None
        return Seen(incarnation, check.get("Status"), check.get("Output"))

    def register(self, registration: Registration, health: Health | None, initial: str = CRITICAL,
                 stale_checks: frozenset[str] = frozenset()) -> None:
        payload = registration.payload(initial)
        checks = payload["Checks"]
        self._write(f"PUT /v1/agent/service/register ({registration.name})", self.client.agent.service.register,
                   registration.name, service_id=registration.service_id, address=registration.address or None,
                   port=registration.port or None, tags=payload["Tags"], meta=payload["Meta"],
                   weights=payload.get("Weights"), enable_tag_override=payload.get("EnableTagOverride", False),
                   tagged_addresses=payload.get("TaggedAddresses"), connect=payload.get("Connect"),
                   check=checks[0] if checks else None, extra_checks=checks[1:],
                   replace_existing_checks=False, service=registration.name)
        for check_id in sorted(stale_checks):
            self._write(f"PUT /v1/agent/check/deregister/{check_id}", self.client.agent.check.deregister, check_id,
                        service=registration.name)
        if health is not None and registration.ttl_check_id:
            self.update_ttl(registration.ttl_check_id, health, registration.name)

    def update_ttl(self, check_id: str, health: Health, service: str = "") -> None:
        verb = _TTL_VERBS[health.status]
        self._write(f"PUT /v1/agent/check/{verb} ({check_id})", getattr(self.client.agent.check, f"ttl_{verb}"),
                    check_id, health.note, service=service)

    def deregister(self, service_id: str, service: str = "") -> None:
        self._write(f"PUT /v1/agent/service/deregister ({service_id})", self.client.agent.service.deregister,
                    service_id, service=service)

    def _write(self, what: str, function: Any, *args: Any, service: str = "", **kwargs: Any) -> None:
        # py-consul answers a 404 with False rather than an exception.
        if self._call(what, function, *args, need=f"service:write on {service or 'the service'}", **kwargs) is False:
            raise ConsulError(f"Consul agent at {self.endpoint} answered {what}: 404 not found", status=404)

    def _call(self, what: str, function: Any, *args: Any, need: str = "service:read", **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except consul.ACLPermissionDenied as exc:
            if _ACL_NOT_FOUND in str(exc) and self.refresh_token(force=True):
                # The token file was rotated and the old token deleted: the new one may do.
                return self._call(what, function, *args, need=need, **kwargs)
            secrets = self.token.secrets
            advice = self._acl_advice(_text(exc, *secrets), need)
            unknown = (f"Consul agent at {self.endpoint} answers 403 ACL not found; {advice}"
                       if _ACL_NOT_FOUND in str(exc) else "")
            raise self._error(f"Consul agent at {self.endpoint} refused {what}: 403 {_text(exc, *secrets)}; "
                              f"{advice}", status=403, token_unknown=unknown) from exc
        except consul.ACLDisabled as exc:
            raise self._error(f"Consul agent at {self.endpoint} refused {what}: 401 {_text(exc, *self.token.secrets)}",
                              status=401) from exc
        except consul.ConsulException as exc:
            advice = ""
            if "HTTP request to an HTTPS server" in str(exc):
                advice = (f"; that port speaks https: use --http-addr https://{self.conn.host}:{self.conn.port} "
                          f"or CONSUL_HTTP_SSL=true")
            raise self._error(f"Consul agent at {self.endpoint} refused {what}: "
                              f"{_text(exc, *self.token.secrets)}{advice}", status=_status(exc)) from exc
        except requests.exceptions.SSLError as exc:
            raise self._error(f"TLS with the Consul agent at {self.endpoint} failed: {_reason(exc, self.conn.token)}; "
                              f"{self.conn.tls_advice(_reason(exc, self.conn.token))}", unreachable=True) from exc
        except requests.exceptions.Timeout as exc:
            # The whole response: a blocking query's deadline includes its wait (DeadlineExceeded says).
            seconds = exc.seconds if isinstance(exc, DeadlineExceeded) else self.client.http.connections_timeout
            raise self._error(f"Consul agent at {self.endpoint} did not answer {what} within {seconds:g}s "
                              f"(the whole response); retrying", unreachable=True) from exc
        except ResponseTooLarge as exc:
            raise self._error(f"Consul agent at {self.endpoint} answered {what} with more than "
                              f"{exc.limit / MiB:g} MiB; no agent's answer is that large, is something else "
                              f"on that port? retrying", unreachable=True) from exc
        except requests.exceptions.RequestException as exc:
            raise self._error(f"Consul agent at {self.endpoint} is unreachable ({_reason(exc, self.conn.token)}); "
                              f"is it running? retrying", unreachable=True) from exc
        except OSError as exc:
            # requests raises a bare OSError when a TLS file it was given has gone since start.
            raise self._error(f"cannot reach the Consul agent at {self.endpoint}: {_text(exc, self.conn.token)}; "
                              f"check --ca-file, --client-cert and --client-key", unreachable=True) from exc

    def _error(self, message: str, **kwargs: Any) -> ConsulError:
        # The agent or a proxy in front of it might echo a request header back.
        # Escaped too: the message reaches logs and terminals, and the agent's words are in it.
        return ConsulError(escaped(_redacted(message, *self.token.secrets)), **kwargs)

    def _acl_advice(self, text: str, need: str) -> str:
        if _ACL_NOT_FOUND in text:
            again = "; it is read again when the file changes" if self.token.path else ""
            return (f"the agent knows no token with the SecretID from {self.token.described()}: "
                    f"give an existing token's SecretID{again}")
        if not self.token.value:
            return (f"no token was given, so the anonymous token was used: give a token whose policy grants "
                    f"{need} (--token-file or CONSUL_HTTP_TOKEN_FILE)")
        return f"the token from {self.token.described()} needs a policy granting {need}"


_TTL_VERBS = {PASSING: "pass", WARNING: "warn", CRITICAL: "fail"}
_ACL_NOT_FOUND = "ACL not found"  # the agent's words for a token it does not know (deleted, or never was)


def _status(exc: Exception) -> int | None:
    """py-consul puts the status first in 4xx/5xx messages ("500 CheckID … does not have associated TTL")."""
    if isinstance(exc, consul.NotFound):
        return 404
    match = re.match(r"\s*(\d{3})\b", str(exc))
    return int(match[1]) if match else 500


def _redacted(text: str, *secrets: str | None) -> str:
    # Before any cut: a cut token would no longer be found, and its prefix would leak.
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "<token>")
    return text


def _text(exc: Exception, *secrets: str | None) -> str:
    return _redacted(" ".join(str(exc).split()), *secrets)[:300]


def _reason(exc: BaseException, *secrets: str | None) -> str:
    reason: BaseException = exc
    while reason.__context__ is not None and reason.__context__ is not reason:
        reason = reason.__context__
    text = OPENSSL_SOURCE_LINE.sub("", _redacted(" ".join(str(reason).split()), *secrets))
    return text[:200] or type(exc).__name__
