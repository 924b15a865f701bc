"""A real HAProxy in front of Consul's DNS, the way operators put one in front of a service.

    config_text(...)                 the whole haproxy.cfg (docs/operations.md shows it)
    HAProxy(workdir, dns_port, service)   haproxy on a free loopback port, its backend filled
                                     from the SRV records of SERVICE in Consul's DNS
    haproxy_binary()                 scripts/get-haproxy's haproxy ($HAPROXY_BIN, PATH, or
                                     this machine's Debian haproxy fetched with get-deb)

HAProxy runs in the foreground (-db), logging to stdout (haproxy.log in the workdir),
with an admin stats socket on a free loopback TCP port (stats(), command()).  Every
process started here is stopped by its pid.
"""
from __future__ import annotations

import csv
import functools
import io
import pathlib
import socket
import subprocess

from tests.harness import LOOPBACK, LoggedDaemon, fetched, free_port


@functools.cache
def haproxy_binary() -> str:
    return fetched("get-haproxy")


def haproxy_version() -> str:
    """`HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/`, haproxy -v's first line."""
    out = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True, timeout=20,
                         stdin=subprocess.DEVNULL, check=True).stdout
    return out.splitlines()[0].strip()


def config_text(*, service: str, dns_port: int, port: int, stats_port: int, dns_addr: str = LOOPBACK,
                servers: int = 5) -> str:
    """haproxy.cfg: a frontend on 127.0.0.1:PORT balancing over up to SERVERS instances of
    SERVICE, found through the SRV records of Consul's DNS (dns_addr:dns_port); the admin
    stats socket on 127.0.0.1:STATS_PORT.

    The SRV form: HAProxy takes a server-template name for SRV records only if it begins
    with an underscore (RFC 2782, `_service._proto.name`), else it asks for A/AAAA.
    Consul answers `_NAME._tcp.service.consul` with every passing instance of NAME,
    each record carrying its own port (`_tcp` filters on no tag), and the addresses
    in the additional section, which HAProxy uses without asking again.
    """
    return f"""\
global
    log stdout format raw local0 info
    stats socket ipv4@{LOOPBACK}:{stats_port} level admin

resolvers consul
    nameserver consul {dns_addr}:{dns_port}
    accepted_payload_size 8192  # EDNS: room for every SRV record and its address
    resolve_retries 3
    timeout resolve 1s          # the resolvers' clock: each name is looked up again on a tick...
    timeout retry   1s
    hold valid      1s          # ...once its last valid answer is 1s old (default 10s)
    hold obsolete   0s          # a record gone from the answer takes its server to MAINT at once (default 0s)
    hold nx         1s
    hold other      1s
    hold refused    1s
    hold timeout    1s

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client  5s
    timeout server  5s
    # HAProxy's default retry policy, written out: retries 3 (the default) on a
    # failed connection, to the same server; `option redispatch` is NOT the
    # default, so none is set and a retry is never sent to another server.
    retries 3

frontend web
    bind {LOOPBACK}:{port}
    default_backend web

backend web
    balance roundrobin
    # Up to {servers} servers; every instance shares 127.0.0.1 (hence allow-dup-ip), each on its own port.
    server-template web {servers} _{service}._tcp.service.consul resolvers consul resolve-opts allow-dup-ip resolve-prefer ipv4 check
"""


class HAProxy(LoggedDaemon):
    """A real haproxy on 127.0.0.1:port (free) for the instances of SERVICE in the
    Consul DNS on 127.0.0.1:dns_port."""

    name = "haproxy"

    def __init__(self, workdir: pathlib.Path, dns_port: int, service: str, servers: int = 5) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.stats_port = free_port()
        self.conf = self.workdir / "haproxy.cfg"
        self.conf.write_text(config_text(service=service, dns_port=dns_port, port=self.port,
                                         stats_port=self.stats_port, servers=servers))

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        # -db: foreground, no daemon; no user/chroot in the config: it stays the tests' user.
        return [haproxy_binary(), "-db", "-f", str(self.conf)]

    def check_config(self) -> subprocess.CompletedProcess:
        """haproxy -c: the configuration's own check."""
        return subprocess.run([haproxy_binary(), "-c", "-f", str(self.conf)], capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)

    def command_text(self, line: str, timeout: float = 5) -> str:
        """One command on the admin stats socket (`show stat`, `show servers state web`...), its answer."""
        with socket.create_connection((LOOPBACK, self.stats_port), timeout=timeout) as s:
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """`show stat`'s CSV, one dict a row (pxname, svname, status, addr, ...)."""
        text = self.command_text("show stat")
        if not text.startswith("# "):
            raise RuntimeError(f"not a show stat answer: {text[:200]!r}")
        return list(csv.DictReader(io.StringIO(text[2:])))

    def servers(self, backend: str = "web") -> list[dict[str, str]]:
        """The backend's server rows (not FRONTEND/BACKEND)."""
        return [r for r in self.stats() if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")]

    def up_addrs(self, backend: str = "web") -> list[str]:
        """`127.0.0.1:PORT` of every server UP, sorted."""
        return sorted(r["addr"] for r in self.servers(backend) if r["status"] == "UP")

    def ready(self) -> bool:
        return "Name: HAProxy" in self.command_text("show info", timeout=1)
