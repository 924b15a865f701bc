"""The Consul UI in a real browser (issue 5, item 4).

Headless Chromium (Debian's, from scripts/get-chromium), driven by Playwright,
opens a test agent's UI while a real supervisord runs the programs of
etc/supervisord.conf.sample; the test reads what the UI renders: the sample's
services with their health, passing, netcat critical after its process is
killed, and a web instance in maintenance with its reason.

Screenshots are saved in the test's tmp dir; with UPDATE_SCREENSHOTS=1 the
ones docs/operations.md shows are written to docs/ as well.
"""
from __future__ import annotations

import configparser
import functools
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

import pytest
from playwright import sync_api  # noqa: E402  (setup.cfg's test extra; never `playwright install`)

from tests.harness import REPO_ROOT, ConsulAgent, fetched, free_port, free_port_prefix, run_cli, wait_for

SAMPLE = REPO_ROOT / "etc" / "supervisord.conf.sample"
DOCS = REPO_ROOT / "docs"
# The background-networking flags keep Chromium from calling home: on a closed
# network those connections are refused, and they are noise on an open one.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 720}
T = TypeVar("T")

# One row of the services list: its name, the class of its health indicator
# (passing / warning / critical) and its text ("web\n3 Instances\ndemo\nhttp").
SERVICE_ROWS = """() => Array.from(document.querySelectorAll('.consul-service-list li.linkable')).map(li => ({
    name: li.querySelector('a').textContent.trim(),
    health: li.querySelector('dl').className.trim(),
    text: li.innerText}))"""
# The health checks of one service instance, as its Health Checks tab shows them.
CHECKS = """() => Array.from(document.querySelectorAll('li.healthcheck-output')).map(li => ({
    name: li.querySelector('h3').textContent.trim(),
    health: li.className.replace('healthcheck-output', '').trim(),
    output: (li.querySelector('pre') || {textContent: ''}).textContent.trim(),
    text: li.innerText}))"""


@functools.cache
def chromium_binary() -> str:
    """Absolute path of a Chromium usable headless."""
    return fetched("get-chromium")


@functools.cache
def driver_library_dir() -> str | None:
    """Directories to put on LD_LIBRARY_PATH for Playwright's driver, or None if it needs none.

    The driver is a node binary bundled with Playwright; it links libatomic.so.1, which a minimal
    Debian lacks. That library (Debian's libatomic1) is then fetched like nc and dig are, with
    `scripts/get-deb --with-deps`: unpacked into the cache, no system change."""
    if os.environ.get("PLAYWRIGHT_NODEJS_PATH"):
        return None
    node = pathlib.Path(sync_api.__file__).resolve().parent.parent / "driver" / "node"
    linked = subprocess.run(["ldd", str(node)], capture_output=True, text=True, timeout=60).stdout
    missing = sorted({line.split()[0] for line in linked.splitlines() if "not found" in line})
    if not missing:
        return None
    if missing != ["libatomic.so.1"]:
        raise RuntimeError(f"Playwright's driver {node} lacks {', '.join(missing)}")
    unpacked = pathlib.Path(fetched("get-deb", "--with-deps", "native", "libatomic", "libatomic1"))
    return os.pathsep.join(str(unpacked / d) for d in (unpacked / "libdirs").read_text().split())


def sample_config(agent: ConsulAgent, netcat_port: int, web_prefix: str, api_port: int) -> str:
    """The sample's [eventlistener:consul], netcat and web sections, changed only where a test must:
    the listener talks to `agent` and logs into supervisord's dir, netcat and web listen on free ports,
    netcat is not restarted (so its crash stays EXITED: critical), and web's HTTP checks run every
    second (Consul runs a check first at a random moment within its interval)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False, interpolation=None)
    parser.read(SAMPLE)

    def replace(section: str, key: str, old: str, new: str) -> None:
        value = parser.get(section, key)
        assert old in value, f"{SAMPLE.name}: [{section}] {key}={value} no longer holds {old}; adapt this test"
        parser.set(section, key, value.replace(old, new))

    parser.set("eventlistener:consul", "command",
               f"{sys.executable} -m supervisor_consul listen -c %(here)s/supervisord.conf --http-addr {agent.http_addr}")
    parser.set("eventlistener:consul", "stderr_logfile", "%(here)s/listener.log")
    replace("program:netcat", "command", "9999", str(netcat_port))
    replace("consul:netcat", "port", "9999", str(netcat_port))
    parser.set("program:netcat", "autorestart", "false")
    replace("program:web", "command", "81%(process_num)02d", f"{web_prefix}%(process_num)02d")
    replace("consul:web", "port", "81%(process_num)02d", f"{web_prefix}%(process_num)02d")
    parser.set("consul:web", "interval", "1s")
    replace("consul:web:metrics", "port", "81%(process_num)02d", f"{web_prefix}%(process_num)02d")
    replace("program:api", "command", "9090", str(api_port))
    replace("program:api", "command", "python3", sys.executable)  # the venv's, which has grpcio
    replace("consul:api", "port", "9090", str(api_port))
    parser.set("program:api", "directory", str(REPO_ROOT))
    parser.set("consul:api", "check.grpc.interval", "1s")

    sections = [s for s in parser.sections() if s.split(":")[0] in ("eventlistener", "program", "consul")]
    assert {"program:netcat", "consul:netcat", "program:web", "consul:web"} <= set(sections)
    return "".join(f"[{section}]\n" + "".join(f"{key}={value}\n" for key, value in parser.items(section)) + "\n"
                   for section in sections)


@pytest.fixture
def ui_agent(tmp_path):
    """An agent of this test's own, so its UI lists only the sample's services (and consul).

    Requested before supervisord_factory, so supervisord stops first and its listener
    deregisters while the agent still answers."""
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent


@pytest.fixture
def browser_page(monkeypatch):
    """A page of a fresh headless Chromium (a temporary profile); the browser is closed at teardown."""
    executable = chromium_binary()
    libdir = driver_library_dir()
    if libdir is not None:  # the driver inherits the environment
        monkeypatch.setenv("LD_LIBRARY_PATH",
                           os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])))
    with sync_api.sync_playwright() as playwright:
        with playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS) as browser:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(20_000)
            yield page


def shown_services(page, agent: ConsulAgent) -> dict[str, tuple[str, str]]:
    """{service: (health, "N Instances")} as the services page renders them, freshly loaded."""
    page.goto(f"http://{agent.http_addr}/ui/dc1/services")
    page.wait_for_selector(".consul-service-list li.linkable a")
    rows = page.evaluate(SERVICE_ROWS)
    return {row["name"]: (row["health"], m[0] if (m := re.search(r"\d+ Instances?", row["text"])) else "")
            for row in rows}


def shown_checks(page, agent: ConsulAgent, service: str, instance: str = "") -> list[dict]:
    """The Health Checks tab of the service's instance whose ID ends in `instance` (or its only
    one), reached by following the UI's links."""
    page.goto(f"http://{agent.http_addr}/ui/dc1/services/{service}/instances")
    page.click(f".consul-service-instance-list li a:has-text('{instance}')" if instance
               else ".consul-service-instance-list li a")
    page.wait_for_selector("li.healthcheck-output h3")
    return page.evaluate(CHECKS)


def wait_shown(read: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = 60) -> T:
    """Poll read() (a fresh page load each time) until done(reading); the last reading in the failure."""
    seen: list[T] = []

    def matches() -> bool:
        seen[:] = [read()]
        return done(seen[0])

    try:
        wait_for(matches, timeout=timeout, interval=0.5, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the UI showed {seen[0] if seen else 'nothing'}") from None
    return seen[0]


def screenshot(page, tmp_path, name: str, publish: bool = False) -> None:
    """Save the page as tmp_path/name; with UPDATE_SCREENSHOTS=1 and publish, also as docs/name."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring on the search box
    path = tmp_path / name
    page.screenshot(path=str(path))
    if publish and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / name)


def test_ui_lists_the_sample_services_passing_then_critical_after_a_crash(ui_agent, supervisord_factory,
                                                                          browser_page, tmp_path):
    page = browser_page
    sv = supervisord_factory(sample_config(ui_agent, free_port(), free_port_prefix(3, digits=2), free_port()))
    for namespec in ("netcat", "web:web_01", "web:web_02", "web:web_03", "api"):
        try:
            sv.wait_state(namespec, "RUNNING", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nsupervisord log:\n{sv.log_text()[-3000:]}") from None

    # `supervisord`: the listener's claim, one instance per supervisord.
    passing = {"consul": ("passing", "1 Instance"), "netcat": ("passing", "1 Instance"),
               "supervisord": ("passing", "1 Instance"), "web": ("passing", "3 Instances"),
               "web-metrics": ("passing", "3 Instances"), "api": ("passing", "1 Instance")}
    wait_shown(lambda: shown_services(page, ui_agent), lambda shown: shown == passing,
               "the sample's services listed, all passing")
    screenshot(page, tmp_path, "consul-ui.png", publish=True)

    pid = sv.info("netcat")["pid"]
    os.kill(pid, signal.SIGKILL)
    sv.wait_state("netcat", "EXITED")
    crashed = {**passing, "netcat": ("critical", "1 Instance")}
    wait_shown(lambda: shown_services(page, ui_agent), lambda shown: shown == crashed,
               "netcat listed critical after its crash, web still passing")
    screenshot(page, tmp_path, "consul-ui-critical-list.png")

    def process_check_critical(checks: list[dict]) -> bool:
        return any(c["name"] == "supervisord process netcat" and c["health"] == "critical"
                   and c["output"].startswith("EXITED unexpectedly") for c in checks)

    wait_shown(lambda: shown_checks(page, ui_agent, "netcat"), process_check_critical,
               "netcat's supervisord check critical, with the EXITED note, on its instance page")
    screenshot(page, tmp_path, "consul-ui-critical.png", publish=True)

    # Maintenance: one web instance out of service while supervisord keeps running it.
    maint = run_cli("maint", "-c", str(sv.conf), "--http-addr", ui_agent.http_addr, "web:web_02", "on",
                              "--reason", "kernel update")
    assert maint.returncode == 0, maint.stdout + maint.stderr

    def in_maintenance(checks: list[dict]) -> bool:
        return any(c["name"] == "Service Maintenance Mode" and c["health"] == "critical"
                   and "kernel update" in c["text"] for c in checks) and \
            any(c["name"] == "supervisord process web:web_02" and c["health"] == "passing" for c in checks)

    wait_shown(lambda: shown_checks(page, ui_agent, "web", "web:web_02"), in_maintenance,
               "web:web_02 in maintenance with its reason, its process check still passing")
    screenshot(page, tmp_path, "consul-ui-maintenance.png", publish=True)
    assert sv.state("web:web_02") == "RUNNING"
