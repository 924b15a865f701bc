"""How to reach the local Consul agent: its address, the ACL token and TLS,
resolved as the Consul CLI resolves them.

py-consul reads some CONSUL_* variables itself and not others (and lets
CONSUL_HTTP_TOKEN beat an explicit token), so every setting is resolved here
and handed to the client explicitly.  Every file named is read at start, so
a setting that cannot work stops the listener with one line.
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import acl_token
from .transport import BoundedAdapter

DEFAULT_HTTP_ADDR = "127.0.0.1:8500"
OPENSSL_SOURCE_LINE = re.compile(r"\s*\(_ssl\.c:\d+\)")  # OpenSSL's source line, noise to a user


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
    token_file: str | None = None  # the file it was read from, read again when it changes
    token_option: str = ""  # how that file was given: --token-file or CONSUL_HTTP_TOKEN_FILE
    http_auth: tuple[str, str] | None = field(default=None, repr=False)  # HTTP basic auth (user, password)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def tls_advice(self, reason: str) -> str:
        """What to do about a failed TLS handshake, from OpenSSL's reason."""
        if "WRONG_VERSION_NUMBER" in reason or "record layer failure" in reason:
            return (f"{self.host}:{self.port} does not speak TLS: use http://{self.host}:{self.port}, "
                    f"or the agent's HTTPS port (ports.https)")
        if any(words in reason for words in ("mismatch", "not valid for", "doesn't match")):
            if self.tls_server_name:
                return (f"the agent's certificate does not hold the name {self.tls_server_name} given by "
                        f"--tls-server-name/CONSUL_TLS_SERVER_NAME: give a name it holds")
            return (f"the agent's certificate is not issued for {self.host}: connect by a name it holds, "
                    f"or give that name with --tls-server-name/CONSUL_TLS_SERVER_NAME")
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            trusted = (f"the CA in --ca-file/CONSUL_CACERT {self.ca_file}" if self.ca_file
                       else f"the CAs in --ca-path/CONSUL_CAPATH {self.ca_path}" if self.ca_path
                       else "the system's CAs")
            return (f"the agent's certificate is not signed by {trusted}: give the CA that signed it with "
                    f"--ca-file/CONSUL_CACERT")
        if not self.client_cert:
            return ("the agent may require a client certificate (verify_incoming): give --client-cert and "
                    "--client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)")
        return (f"the agent refused the client certificate {self.client_cert}: it must be signed by a CA in "
                f"the agent's ca_file and allow client authentication")


# connection()'s settings: the command-line options' names, with underscores.
SETTINGS = ("http_addr", "token", "token_file", "ca_file", "client_cert", "client_key", "ca_path",
            "tls_server_name", "http_auth")
# The Consul CLI's variables that mean nothing here, and why: said once, never silently dropped.
IGNORED = {
    "CONSUL_NAMESPACE": "namespaces are Consul Enterprise's; the listener registers in the namespace of its "
                        "token (the default one without Enterprise)",
}


def connection(http_addr: str | None = None, token: str | None = None, token_file: str | None = None,
               ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None,
               env: Mapping[str, str] = os.environ, ca_path: str | None = None,
               tls_server_name: str | None = None, http_auth: str | None = None) -> Connection:
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
    try:
        token, token_source, path, option = _token(token, token_file, env)
        if token is not None:
            acl_token.check(token, token_source)
    except acl_token.TokenError as exc:
        raise SettingError(str(exc)) from exc
    client_cert = _option(client_cert, env, "CONSUL_CLIENT_CERT")
    client_key = _option(client_key, env, "CONSUL_CLIENT_KEY")
    if bool(client_cert) != bool(client_key):
        raise SettingError("--client-cert and --client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY) go together; "
                           "give both")
    ca_file = _option(ca_file, env, "CONSUL_CACERT")
    ca_path = _option(ca_path, env, "CONSUL_CAPATH")
    verify = _flag(env, "CONSUL_HTTP_SSL_VERIFY", True)
    if scheme == "https":
        _check_tls_files(ca_file, ca_path, client_cert, client_key)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname  # IPv6 keeps its brackets
    return Connection(scheme=scheme, host=host, port=port, token=token, ca_file=ca_file,
                      client_cert=client_cert, client_key=client_key, verify=verify, ca_path=ca_path,
                      tls_server_name=_option(tls_server_name, env, "CONSUL_TLS_SERVER_NAME"),
                      token_source=token_source, token_file=path, token_option=option,
                      http_auth=_basic_auth(_option(http_auth, env, "CONSUL_HTTP_AUTH")))


def _basic_auth(text: str | None) -> tuple[str, str] | None:
    """--http-auth/CONSUL_HTTP_AUTH as the Consul CLI reads it: USER or USER:PASSWORD."""
    if not text:
        return None
    user, _, password = text.partition(":")
    return user, password


def ignored(env: Mapping[str, str] = os.environ) -> list[str]:
    """What is set in the environment that the listener does not use, each with why."""
    return [f"{name}={env[name]!r} is not used: {why}" for name, why in IGNORED.items() if env.get(name)]


def _option(value: str | None, env: Mapping[str, str], variable: str) -> str | None:
    return value or env.get(variable) or None


def _token(token: str | None, token_file: str | None,
           env: Mapping[str, str]) -> tuple[str | None, str, str | None, str]:
    """(token, where it came from, its file, how the file was given).  Options
    beat variables; at each level a token file beats a token, as in Consul's
    own client (api.NewClient: "If the TokenFile is set, always use that")."""
    if token:
        return token, "--token", None, ""
    for option, path in (("--token-file", token_file), ("CONSUL_HTTP_TOKEN_FILE", env.get("CONSUL_HTTP_TOKEN_FILE"))):
        if path:
            return acl_token.read_file(path, option), f"{option} {path}", path, option
    if env.get("CONSUL_HTTP_TOKEN"):
        return env["CONSUL_HTTP_TOKEN"], "CONSUL_HTTP_TOKEN", None, ""
    return None, "", None, ""


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


def trust(conn: Connection) -> ssl.SSLContext:
    """The CAs the Consul CLI would trust: the CA file, else every certificate
    under the CA directory, else the system's (requests alone would use certifi's)."""
    if conn.ca_file:
        return ssl.create_default_context(cafile=conn.ca_file)
    if conn.ca_path:
        return ssl.create_default_context(cadata=_ca_bundle(conn.ca_path))
    return ssl.create_default_context()


class TLSAdapter(BoundedAdapter):
    """Verifies the agent as the Consul CLI does, which requests cannot be told
    per session: the CAs of trust() only, and the name to check the
    agent's certificate against when it is not the address's host.  Bounded
    in time and size as every call to the agent is (transport.py); a TLS
    handshake that trickles is cut at the same deadline."""

    def __init__(self, context: ssl.SSLContext, server_name: str | None, timeout: float) -> None:
        self._context = context
        self._server_name = server_name
        super().__init__(timeout)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        if self._server_name:
            # Both SNI and the name checked, as Consul's TLSConfig.Address.
            kwargs["server_hostname"] = kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        conn.ca_certs = conn.ca_cert_dir = None  # requests would add certifi's bundle to the context


def _ssl_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    return OPENSSL_SOURCE_LINE.sub("", str(exc))
