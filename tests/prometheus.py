"""A real Prometheus finding its targets through Consul, as etc/prometheus.yml.sample has it.

    sample_config(consul_http_addr)   the sample, its agent address replaced: nothing else
    Prometheus(workdir, config_text)  prometheus on a free loopback port, its TSDB in workdir
    prometheus_binary()               scripts/get-prometheus's ($PROMETHEUS_BIN, PATH, or
                                      Debian bullseye's prometheus fetched with get-deb)

Every process started here is stopped by its pid.
"""
from __future__ import annotations

import functools
import json
import pathlib
import urllib.parse
import urllib.request
from typing import Any

from tests.harness import LOOPBACK, REPO_ROOT, LoggedDaemon, fetched, free_port

SAMPLE = REPO_ROOT / "etc" / "prometheus.yml.sample"
SAMPLE_AGENT = "127.0.0.1:8500"  # the agent the sample names, as an operator's Prometheus host has it
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only: never a proxy


@functools.cache
def prometheus_binary() -> str:
    return fetched("get-prometheus")


def sample_config(consul_http_addr: str) -> str:
    text = SAMPLE.read_text()
    assert SAMPLE_AGENT in text, f"{SAMPLE} names no agent {SAMPLE_AGENT} to replace"
    return text.replace(SAMPLE_AGENT, consul_http_addr)


class Prometheus(LoggedDaemon):
    """prometheus on 127.0.0.1:port (free), its TSDB and configuration in workdir."""

    name = "prometheus"

    def __init__(self, workdir: pathlib.Path, config_text: str) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.conf = self.workdir / "prometheus.yml"
        self.conf.write_text(config_text)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [prometheus_binary(), f"--config.file={self.conf}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=debug"]

    def api(self, path: str, **params: str) -> Any:
        """The `data` of an HTTP API answer (/api/v1/...); RuntimeError unless its status is success."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with _DIRECT.open(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
            answer = json.loads(resp.read().decode())
        if answer.get("status") != "success":
            raise RuntimeError(f"/api/v1/{path}: {answer}")
        return answer["data"]

    def targets(self, job: str) -> list[dict]:
        """The active targets of a job: labels, health (up/down/unknown), scrapeUrl, lastError."""
        return [t for t in self.api("targets", state="active")["activeTargets"] if t["labels"]["job"] == job]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant vector: each series' labels (sorted pairs) -> its value."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}

    def ready(self) -> bool:
        with _DIRECT.open(f"{self.url}/-/ready", timeout=1) as resp:
            return resp.status == 200
