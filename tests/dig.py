"""DNS the way operators query it: the real `dig`, and a real dnsmasq forwarding `.consul`.

    dig(server, port, name, rdtype) -> list[str]   the ANSWER section's records of rdtype,
                                                   as `dig +short` prints them
    dig_text(server, port, name, rdtype, *options)  dig's whole output
    Dnsmasq(workdir, conf_text)                     dnsmasq on a free loopback port

dig comes from scripts/get-dig (dig on PATH, or Debian's bind9-dnsutils fetched
into the cache); dnsmasq from PATH or Debian's dnsmasq-base, fetched with
`scripts/get-deb --with-deps` with the packages this machine lacks for it.  Every process
started here is stopped by its pid.
"""
from __future__ import annotations

import functools
import os
import pathlib
import re
import subprocess

from tests.harness import LOOPBACK, LoggedDaemon, fetched, free_port

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


class DigError(RuntimeError):
    """dig got no answer, or an answer with a status other than NOERROR/NXDOMAIN."""


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


@functools.cache
def dig_dir() -> str:
    """A directory holding a runnable `dig`."""
    return fetched("get-dig")


def dig_binary() -> str:
    return os.path.join(dig_dir(), "dig")


def dig_text(server: str, port: int, name: str, rdtype: str = "A", *options: str,
             timeout: float = 20) -> str:
    """`dig @SERVER -p PORT NAME RDTYPE OPTIONS...`'s stdout; DigError if dig fails (no reply)."""
    proc = subprocess.run([dig_binary(), f"@{server}", "-p", str(port), name, rdtype, *options],
                          check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DigError(f"dig @{server} -p {port} {name} {rdtype} exited {proc.returncode}: "
                       f"{_last_line(proc.stdout + proc.stderr)}")
    return proc.stdout


_STATUS = re.compile(r"^;; ->>HEADER<<- .*\bstatus: ([A-Z]+)", re.MULTILINE)


def dig(server: str, port: int, name: str, rdtype: str = "A", *, timeout: float = 20) -> list[str]:
    """The records of type rdtype in the ANSWER section, as `dig +short` prints them
    (`127.0.0.1`; `1 1 8080 node.node.dc1.consul.`), in the server's order.

    NXDOMAIN gives []; no reply, or any other status (SERVFAIL, REFUSED, ...),
    raises DigError, so a wait_for() polling this treats it as "not yet".
    """
    out = dig_text(server, port, name, rdtype, "+time=2", "+tries=2", timeout=timeout)
    status = _STATUS.search(out)
    if status is None:
        raise DigError(f"no header in dig's output for {name} {rdtype}: {_last_line(out)}")
    if status.group(1) == "NXDOMAIN":
        return []
    if status.group(1) != "NOERROR":
        raise DigError(f"dig {name} {rdtype}: status {status.group(1)}")
    records: list[str] = []
    in_answer = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION:"):
            in_answer = True
        elif in_answer and (not line.strip() or line.startswith(";")):
            break
        elif in_answer:
            fields = line.split(None, 4)  # owner TTL class type rdata
            if len(fields) == 5 and fields[3].upper() == rdtype.upper():
                records.append(fields[4].strip())
    return records


def srv_ports(records: list[str]) -> list[int]:
    """The ports of SRV records (`priority weight port target`), sorted."""
    return sorted(int(r.split()[2]) for r in records)


# ------------------------------------------------------------------ dnsmasq

@functools.cache
def dnsmasq_binary() -> str:
    """dnsmasq on PATH (or in /usr/sbin, /sbin), else Debian's dnsmasq-base with the packages this
    machine lacks for it, fetched with `get-deb --with-deps` (its bin/dnsmasq wrapper finds them)."""
    import shutil
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found:
        return found
    unpacked = fetched("get-deb", "--with-deps", "--wrap", "dnsmasq=usr/sbin/dnsmasq",
                       "native", "dnsmasq", "dnsmasq-base")
    return os.path.join(unpacked, "bin", "dnsmasq")


class Dnsmasq(LoggedDaemon):
    """A real dnsmasq on 127.0.0.1:port (free), reading only conf_text: no
    /etc/resolv.conf, no /etc/hosts, no pid file, no daemon, no privileges dropped
    (it stays the user that runs the tests)."""

    name = "dnsmasq"

    def __init__(self, workdir: pathlib.Path, conf_text: str) -> None:
        super().__init__(workdir)
        self.conf = self.workdir / "dnsmasq.conf"
        self.conf.write_text(conf_text)
        self.port = free_port()

    def command(self) -> list[str]:
        import pwd
        binary = dnsmasq_binary()
        user = pwd.getpwuid(os.geteuid()).pw_name
        return [binary, "--keep-in-foreground", "--log-facility=-", "--log-queries",
                f"--port={self.port}", f"--listen-address={LOOPBACK}", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--pid-file", f"--conf-file={self.conf}",
                *([f"--user={user}"] if os.geteuid() == 0 else [])]

    def ready(self) -> str:
        # Any reply at all (REFUSED for a name it has no server for) means it is listening.
        return dig_text(LOOPBACK, self.port, "ready.invalid", "A", "+time=1", "+tries=1")
