"""A real Consul agent with ACLs (default deny) and/or HTTPS, and a test CA to go with it.

Subclasses tests.harness.ConsulAgent: the plain HTTP port stays open, with
the master token, so readiness and the test's own reads work as before;
the listener under test is pointed at whatever the test chooses.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import pathlib
import re
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness import LOOPBACK, ConsulAgent, free_port

MASTER_TOKEN = "ROOT-0c9f2e7a-master"  # distinctive, so a leak is easy to grep for


# ---------------------------------------------------------------- certificates

@dataclass(frozen=True)
class Issued:
    cert: pathlib.Path
    key: pathlib.Path


class TestCA:
    """A throw-away certificate authority that writes PEM files into a directory."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: pathlib.Path, name: str = "test-ca") -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (x509.CertificateBuilder()
                      .subject_name(subject).issuer_name(subject)
                      .public_key(self._key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(minutes=5))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                   content_commitment=False, key_encipherment=False,
                                                   data_encipherment=False, key_agreement=False,
                                                   encipher_only=False, decipher_only=False), critical=True)
                      .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                                     critical=False)
                      .sign(self._key, hashes.SHA256()))
        self.cert = self.directory / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, ips: tuple[str, ...] = (LOOPBACK,), dns: tuple[str, ...] = ("localhost",),
              client: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                   ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self._cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = Issued(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        issued.key.chmod(0o600)
        return issued


# ---------------------------------------------------------------- the agent

class SecureAgent(ConsulAgent):
    """`consul agent -dev` with `acl { default_policy = "deny" }` and/or an HTTPS port.

    The plain HTTP port stays open: readiness polls and the test's own
    reads go there with the master token.
    """

    def __init__(self, workdir: pathlib.Path, acl: bool = False, tls: Issued | None = None,
                 ca: TestCA | None = None, verify_incoming: bool = False) -> None:
        super().__init__(workdir)
        self.acl = acl
        self.tls = tls
        self.ca = ca
        self.verify_incoming = verify_incoming
        self.https_port = free_port() if tls else None
        config_file = self.workdir / "secure.hcl"
        config_file.write_text(self._config())
        self.extra_args = ["-config-file", str(config_file)]

    def _config(self) -> str:
        parts = []
        if self.acl:
            # 1.8 names: `master`; the agent token lets the agent sync its node to the catalog.
            parts.append(f'acl {{\n  enabled = true\n  default_policy = "deny"\n  down_policy = "deny"\n'
                         f'  enable_token_persistence = false\n'
                         f'  tokens {{\n    master = "{MASTER_TOKEN}"\n    agent = "{MASTER_TOKEN}"\n  }}\n}}\n')
        if self.tls:
            assert self.ca is not None
            parts.append(f"ports {{\n  https = {self.https_port}\n}}\n"
                         f'cert_file = "{self.tls.cert}"\nkey_file = "{self.tls.key}"\nca_file = "{self.ca.cert}"\n'
                         f"verify_incoming_https = {'true' if self.verify_incoming else 'false'}\n")
        return "".join(parts)

    @property
    def https_addr(self) -> str:
        return f"{LOOPBACK}:{self.https_port}"

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.http_addr}{path}", data=data, method=method)
        if self.acl:
            request.add_header("X-Consul-Token", MASTER_TOKEN)
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read().decode() or "null")

    def _get(self, path: str, timeout: float = 5.0) -> Any:
        return self._request("GET", path, timeout=timeout)

    def client(self):
        import consul
        return consul.Consul(host=LOOPBACK, port=self.http_port, token=MASTER_TOKEN if self.acl else None,
                             connections_timeout=5)

    # -- ACL ------------------------------------------------------------------

    def policy(self, name: str, rules: str) -> str:
        """Create an ACL policy; its ID."""
        return self._request("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})["ID"]

    def token(self, *policies: str, description: str = "") -> dict:
        """Create a token with these policies (by name): {'AccessorID', 'SecretID', ...}."""
        return self._request("PUT", "/v1/acl/token", {"Description": description,
                                                      "Policies": [{"Name": p} for p in policies]})

    def set_token_policies(self, accessor_id: str, *policies: str) -> None:
        self._request("PUT", f"/v1/acl/token/{accessor_id}", {"Policies": [{"Name": p} for p in policies]})

    def delete_token(self, accessor_id: str) -> None:
        self._request("DELETE", f"/v1/acl/token/{accessor_id}")

    # -- what the agent saw --------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests_served(self, url_pattern: str) -> list[str]:
        """The agent's debug log lines for HTTP requests it served, on any port, whose URL matches."""
        return [line for line in self.log_text().splitlines()
                if re.search(rf"Request finished: method=\w+ url={url_pattern}", line)]

    def request_errors(self, *texts: str) -> list[str]:
        """The agent's log lines for requests it refused, containing every one of texts."""
        return [line for line in self.log_text().splitlines()
                if "Request error" in line and all(text in line for text in texts)]


class CountingProxy:
    """A TCP forwarder on a free loopback port that counts the connections made
    through it: a client refused in the TLS handshake leaves no other trace
    (it resets the connection, and the agent logs only requests it served)."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        """delay: seconds each chunk from a client waits before it is passed on, as
        if the agent took that long to answer each request (change it any time)."""
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self.connections = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server((LOOPBACK, self.port))
        self._server.settimeout(0.1)  # so the accept loop sees _stop
        self._thread = threading.Thread(target=self._accept, name="counting-proxy", daemon=True)

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink, slow in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, slow), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(65536):
                if slow and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()
        for sock in self._sockets:
            sock.close()
