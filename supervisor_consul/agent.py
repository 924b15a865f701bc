"""The local Consul agent, through py-consul: the only code that talks to Consul.

py-consul reads some CONSUL_* variables itself and not others (and lets
CONSUL_HTTP_TOKEN beat an explicit token), so every setting is resolved here,
as the Consul CLI resolves it, and handed to the client explicitly.
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import consul
import requests
from requests.adapters import HTTPAdapter

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
    token: str | None = field(default=None, repr=False)  # a repr may end up in a log
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    ca_path: str | None = None
    tls_server_name: str | None = None
    token_source: str = ""  # where the token came from, for messages: never the token itself

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def connection(http_addr: str | None = None, token: str | None = None, token_file: str | None = None,
               ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None,
               env: Mapping[str, str] = os.environ, ca_path: str | None = None,
               tls_server_name: str | None = None) -> Connection:
    """Options first, then the Consul CLI's environment variables, then defaults.

    Every file named is read here, so a setting that cannot work stops the
    listener at start with one line, not at its first request.
    """
    addr = http_addr or env.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR
    source = "--http-addr" if http_addr else "CONSUL_HTTP_ADDR" if env.get("CONSUL_HTTP_ADDR") else "default"
    ssl_on = _flag(env, "CONSUL_HTTP_SSL", False)
    parsed = urllib.parse.urlsplit(addr if "://" in addr else f"//{addr}")
    scheme = parsed.scheme or ("https" if ssl_on else "http")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if scheme not in ("http", "https") or not parsed.hostname or port == -1 or parsed.path.strip("/"):
        raise SettingError(f"{source} {addr!r}: expected host:port, http://host:port or https://host:port")
    if port is None:
        port = 8501 if scheme == "https" else 8500
    token, token_source = _token(token, token_file, env)
    client_cert = _option(client_cert, env, "CONSUL_CLIENT_CERT")
    client_key = _option(client_key, env, "CONSUL_CLIENT_KEY")
    if bool(client_cert) != bool(client_key):
        raise SettingError("--client-cert and --client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY) go together; give both")
    ca_file = _option(ca_file, env, "CONSUL_CACERT")
    ca_path = _option(ca_path, env, "CONSUL_CAPATH")
    verify = _flag(env, "CONSUL_HTTP_SSL_VERIFY", True)
    if scheme == "https":
        _check_tls_files(ca_file, ca_path, client_cert, client_key)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname  # IPv6 keeps its brackets
    return Connection(scheme=scheme, host=host, port=port, token=token, ca_file=ca_file,
                      client_cert=client_cert, client_key=client_key, verify=verify, ca_path=ca_path,
                      tls_server_name=_option(tls_server_name, env, "CONSUL_TLS_SERVER_NAME"),
                      token_source=token_source)


def _option(value: str | None, env: Mapping[str, str], variable: str) -> str | None:
    return value or env.get(variable) or None


def _token(token: str | None, token_file: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """(token, where it came from).  Options beat variables; at each level a token
    file beats a token, as in Consul's own client (api.NewClient: "If the
    TokenFile is set, always use that")."""
    if token:
        return token, "--token"
    if token_file:
        return _read_token(token_file, "--token-file"), f"--token-file {token_file}"
    if env.get("CONSUL_HTTP_TOKEN_FILE"):
        path = env["CONSUL_HTTP_TOKEN_FILE"]
        return _read_token(path, "CONSUL_HTTP_TOKEN_FILE"), f"CONSUL_HTTP_TOKEN_FILE {path}"
    if env.get("CONSUL_HTTP_TOKEN"):
        return env["CONSUL_HTTP_TOKEN"], "CONSUL_HTTP_TOKEN"
    return None, ""


def _check_tls_files(ca_file: str | None, ca_path: str | None, client_cert: str | None,
                     client_key: str | None) -> None:
    # requests would raise a bare OSError at the first request for a missing
    # file, and an opaque "PEM lib" SSLError for a wrong one.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingError(f"--ca-file/CONSUL_CACERT {ca_file}: cannot load a CA certificate from it "
                               f"({_ssl_text(exc)}); give the PEM file of the CA that signed the agent's "
                               f"certificate") from exc
    elif ca_path:
        _ca_bundle(ca_path)
    if client_cert and client_key:
        try:
            context.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingError(f"--client-cert/--client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY) {client_cert}, "
                               f"{client_key}: cannot load them as a PEM certificate and its key "
                               f"({_ssl_text(exc)})") from exc


def _ca_bundle(ca_path: str) -> str:
    """Every PEM certificate under a directory, read as Consul reads CONSUL_CAPATH
    (go-rootcerts: every file, recursively, each must hold one) rather than as
    OpenSSL's hashed-name directory, which Consul users do not make."""
    where = f"--ca-path/CONSUL_CAPATH {ca_path}"
    if not os.path.isdir(ca_path):
        raise SettingError(f"{where}: not a directory; give a directory of PEM CA certificates "
                           f"(or one file with --ca-file/CONSUL_CACERT)")
    pems: list[str] = []
    for root, dirs, files in os.walk(ca_path):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    found = _PEM_CERTIFICATE.findall(f.read())
            except OSError as exc:
                raise SettingError(f"{where}: cannot read {path}: {exc.strerror}") from exc
            if not found:
                raise SettingError(f"{where}: {path} holds no PEM certificate; keep only CA certificates there")
            pems.extend(found)
    if not pems:
        raise SettingError(f"{where}: no CA certificate in it")
    bundle = "\n".join(pems) + "\n"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=bundle)
    except ssl.SSLError as exc:
        raise SettingError(f"{where}: a certificate in it does not parse ({_ssl_text(exc)})") from exc
    return bundle


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}={value!r}: expected true or false")


def _read_token(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingError(f"{option}: cannot read the Consul token file {path}: {reason}") from exc
    if not token:
        # An empty token means the anonymous token: every write refused, far from the cause.
        raise SettingError(f"{option}: the Consul token file {path} is empty; put the token's SecretID in it")
    return token


class Agent:
    def __init__(self, conn: Connection, timeout: float = TIMEOUT) -> None:
        self.conn = conn
        verify: bool | str = conn.ca_file if (conn.verify and conn.ca_file) else conn.verify
        cert = (conn.client_cert, conn.client_key) if conn.client_cert else None
        self.client = consul.Consul(host=conn.host, port=conn.port, scheme=conn.scheme, verify=verify,
                                    cert=cert, token=conn.token, connections_timeout=timeout)
        self.client.token = conn.token  # py-consul lets CONSUL_HTTP_TOKEN win; we already chose
        self.client.http.session.trust_env = False  # the agent is local: no proxy from HTTP_PROXY
        if conn.scheme == "https" and conn.verify:
            self.client.http.session.mount("https://", _TLSAdapter(_trust(conn), conn.tls_server_name))

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

    def _call(self, what: str, function: Any, *args: Any, need: str = "service:read", **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except consul.ACLPermissionDenied as exc:
            raise self._error(f"Consul agent at {self.endpoint} refused {what}: 403 {_text(exc)}; "
                              f"{self._acl_advice(_text(exc), need)}", status=403) from exc
        except consul.ACLDisabled as exc:
            raise self._error(f"Consul agent at {self.endpoint} refused {what}: 401 {_text(exc)}",
                              status=401) from exc
        except consul.ConsulException as exc:
            advice = ""
            if "HTTP request to an HTTPS server" in str(exc):
                advice = (f"; that port speaks https: use --http-addr https://{self.conn.host}:{self.conn.port} "
                          f"or CONSUL_HTTP_SSL=true")
            raise self._error(f"Consul agent at {self.endpoint} refused {what}: {_text(exc)}{advice}",
                              status=_status(exc)) from exc
        except requests.exceptions.SSLError as exc:
            raise self._error(f"TLS with the Consul agent at {self.endpoint} failed: {_reason(exc)}; "
                              f"{self._tls_advice(_reason(exc))}", unreachable=True) from exc
        except requests.exceptions.Timeout as exc:
            raise self._error(f"Consul agent at {self.endpoint} did not answer {what} within "
                              f"{self.client.http.connections_timeout:g}s", unreachable=True) from exc
        except requests.exceptions.RequestException as exc:
            raise self._error(f"Consul agent at {self.endpoint} is unreachable ({_reason(exc)}); "
                              f"is it running? retrying", unreachable=True) from exc
        except OSError as exc:
            # requests raises a bare OSError when a TLS file it was given has gone since start.
            raise self._error(f"cannot reach the Consul agent at {self.endpoint}: {exc}; check --ca-file, "
                              f"--client-cert and --client-key", unreachable=True) from exc

    def _error(self, message: str, **kwargs: Any) -> ConsulError:
        # The agent or a proxy in front of it might echo a request header back.
        if self.conn.token and len(self.conn.token) >= 8:
            message = message.replace(self.conn.token, "<token>")
        return ConsulError(message, **kwargs)

    def _acl_advice(self, text: str, need: str) -> str:
        if "ACL not found" in text:
            return (f"the agent knows no token with the SecretID from {self.conn.token_source}: "
                    f"give an existing token's SecretID")
        if not self.conn.token:
            return (f"no token was given, so the anonymous token was used: give a token whose policy grants "
                    f"{need} (--token-file or CONSUL_HTTP_TOKEN_FILE)")
        return f"the token from {self.conn.token_source} needs a policy granting {need}"

    def _tls_advice(self, reason: str) -> str:
        conn = self.conn
        if "WRONG_VERSION_NUMBER" in reason or "record layer failure" in reason:
            return (f"{conn.host}:{conn.port} does not speak TLS: use http://{conn.host}:{conn.port}, "
                    f"or the agent's HTTPS port (ports.https)")
        if any(words in reason for words in ("mismatch", "not valid for", "doesn't match")):
            if conn.tls_server_name:
                return (f"the agent's certificate does not hold the name {conn.tls_server_name} given by "
                        f"--tls-server-name/CONSUL_TLS_SERVER_NAME: give a name it holds")
            return (f"the agent's certificate is not issued for {conn.host}: connect by a name it holds, "
                    f"or give that name with --tls-server-name/CONSUL_TLS_SERVER_NAME")
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            trusted = (f"the CA in --ca-file/CONSUL_CACERT {conn.ca_file}" if conn.ca_file
                       else f"the CAs in --ca-path/CONSUL_CAPATH {conn.ca_path}" if conn.ca_path
                       else "the system's CAs")
            return (f"the agent's certificate is not signed by {trusted}: give the CA that signed it with "
                    f"--ca-file/CONSUL_CACERT")
        if not conn.client_cert:
            return ("the agent may require a client certificate (verify_incoming): give --client-cert and "
                    "--client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)")
        return (f"the agent refused the client certificate {conn.client_cert}: it must be signed by a CA in "
                f"the agent's ca_file and allow client authentication")


def _trust(conn: Connection) -> ssl.SSLContext:
    """The CAs the Consul CLI would trust: the CA file, else every certificate
    under the CA directory, else the system's (requests alone would use certifi's)."""
    if conn.ca_file:
        return ssl.create_default_context(cafile=conn.ca_file)
    if conn.ca_path:
        return ssl.create_default_context(cadata=_ca_bundle(conn.ca_path))
    return ssl.create_default_context()


class _TLSAdapter(HTTPAdapter):
    """Verifies the agent as the Consul CLI does, which requests cannot be told
    per session: the CAs of _trust() only, and the name to check the
    agent's certificate against when it is not the address's host."""

    def __init__(self, context: ssl.SSLContext, server_name: str | None) -> None:
        self._context = context
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        if self._server_name:
            # Both SNI and the name checked, as Consul's TLSConfig.Address.
            kwargs["server_hostname"] = kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        conn.ca_certs = conn.ca_cert_dir = None  # requests would add certifi's bundle to the context


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
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", " ".join(str(reason).split()))  # OpenSSL's source line
    return text[:200] or type(exc).__name__


def _ssl_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc))
