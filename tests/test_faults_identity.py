"""Issue 10, items 3, 4 and 12: an identity that cannot collide, a release
switch that is no new identity, and no instance left in DNS for ever.

Two supervisords that look identical (the same host, -c path and identifier)
are made with a mount namespace: the second sees its own configuration at the
first one's path."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from supervisor_consul import instance
from tests.faults import converge, drift, owner_of, sigkill
from tests.harness import ConsulAgent, Supervisord, listener, wait_for
from tests.test_integration import listener_log, unique


@pytest.fixture
def own_agent(tmp_path):
    with ConsulAgent(tmp_path / "consul") as agent:
        yield agent


class Namespaced(Supervisord):
    """supervisord in a mount namespace of its own, where `twin`'s directory shows
    this one's: so it runs with twin's very -c path, its own configuration."""

    def __init__(self, workdir: pathlib.Path, config_text: str, twin: Supervisord) -> None:
        super().__init__(workdir, config_text)
        self.twin = twin

    def command(self) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" "$2" && exec "$3" -m supervisor.supervisord -c "$4"', "sh",
                str(self.workdir), str(self.twin.workdir), sys.executable, str(self.twin.conf)]


def sleepers(service: str, names: list[str], keys: str = "") -> str:
    return "".join(f"[program:{n}]\ncommand=sleep 600\nautorestart=true\n[consul:{n}]\nname={service}\n{keys}\n"
                   for n in names)


def catalog(agent: ConsulAgent, service: str, owner: str) -> dict:
    """Each of owner's instances of service with the ModifyIndex of it and its checks: a write shows."""
    return {e["Service"]["ID"]: (e["Service"]["ModifyIndex"], sorted((c["CheckID"], c["ModifyIndex"])
                                                                     for c in e["Checks"]))
            for e in agent.health(service) if e["Service"]["ID"].startswith(f"supervisord:{owner}:")}


@pytest.mark.fault("19. two identical supervisords (mount namespaces)")
def test_two_supervisords_with_one_identity_never_fight(own_agent, supervisord_factory, tmp_path, converged):
    service = unique("twins")
    a = supervisord_factory(sleepers(service, ["p1", "p2"]) + listener(own_agent))
    converge(own_agent, a)
    owner = owner_of(a)
    before = catalog(own_agent, service, owner)
    assert len(before) == 2

    b = Namespaced(tmp_path / "b", sleepers(service, ["p3"]) + listener(own_agent), twin=a)
    try:
        b.start()
        assert owner_of(b, configfile=str(a.conf)) == owner  # what the listeners compute: the same identity
        wait_for(lambda: "another supervisord holds owner id" in listener_log(b), timeout=30,
                 message="B's listener refusing")
        [line] = [ln for ln in listener_log(b).splitlines() if "another supervisord holds owner id" in ln]
        assert f"supervisord pid {a.pid} in mount namespace" in line and " is alive; touching nothing" in line
        assert "Give one of them its own [supervisord] identifier=" in line and " ERROR " in line
        # B churns meanwhile; for three claim periods A's instances are never written and B's never appear.
        b.ctl("restart", "p3")
        sigkill(b.info("p3")["pid"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert catalog(own_agent, service, owner) == before
            time.sleep(0.2)
        assert sorted(e["Service"]["Meta"]["supervisord-process"] for e in own_agent.health(service)) == ["p1", "p2"]
        assert not [ln for ln in own_agent.log_path.read_text().splitlines() if "Deregistered service" in ln]
        assert drift(own_agent, a) == []

        # The fix the line names: an identifier of its own, then a reload.
        b.conf.write_text(b.conf.read_text().replace("[supervisord]\n", "[supervisord]\nidentifier=b-side\n", 1))
        fixed = time.monotonic()
        assert b.ctl("reload").returncode == 0
        other = owner_of(b, "b-side", configfile=str(a.conf))
        seconds = converge(own_agent, b, owner=other)
        assert catalog(own_agent, service, owner) == before and drift(own_agent, a) == []
        assert sorted(e["Service"]["Meta"]["supervisord-process"] for e in own_agent.health(service)) == \
            ["p1", "p2", "p3"]
        converged(time.monotonic() - fixed, f"B refused at once, naming [supervisord] identifier; A untouched "
                                            f"through B's churn; after the fix B converged in {seconds:.1f} s")
    finally:
        b.cleanup()


@pytest.mark.fault("20. a release switch by symlink")
def test_a_release_switch_is_the_same_identity(own_agent, tmp_path, converged):
    service = unique("release")
    releases = [tmp_path / "releases" / v for v in ("v1", "v2")]
    current = tmp_path / "current.conf"
    stanza = listener(own_agent).replace("-c %(here)s/supervisord.conf", f"-c {current}")
    class Current(Supervisord):
        def command(self) -> list[str]:
            return [sys.executable, "-m", "supervisor.supervisord", "-c", str(current)]

    # Both releases run from the same place (one socket, one log), as a real release's paths do.
    sv = Current(releases[0], sleepers(service, ["web"]) + sleepers(service, ["plain"], "check=none") + stanza)
    releases[1].mkdir(parents=True)
    (releases[1] / "supervisord.conf").write_text(
        sv.conf.read_text().replace(f"name={service}\n", f"name={service}\ntags=v2\n", 1))
    current.symlink_to(releases[0] / "supervisord.conf")
    try:
        sv.start()
        owner = owner_of(sv, configfile=str(current))
        converge(own_agent, sv, owner=owner)
        ids = sorted(sid for sid in own_agent.services() if sid.startswith("supervisord:"))
        assert ids == sorted([instance.claim_id(owner), instance.service_id(owner, "web"), instance.service_id(owner, "plain")])

        switched = time.monotonic()
        tmp_link = tmp_path / "current.conf.new"
        tmp_link.symlink_to(releases[1] / "supervisord.conf")
        os.replace(tmp_link, current)  # ln -sfn
        assert subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(current), "restart",
                               "consul"], capture_output=True, timeout=60).returncode == 0
        wait_for(lambda: [e["Service"]["Tags"] for e in own_agent.health(service)
                          if e["Service"]["Meta"]["supervisord-process"] == "web"] == [["v2"]],
                 message="v2's definition registered")
        seconds = converge(own_agent, sv, owner=owner)
        # No new identity: the same IDs, no orphan, no duplicate.
        assert sorted(sid for sid in own_agent.services() if sid.startswith("supervisord:")) == ids
        converged(time.monotonic() - switched, f"ln -sfn v1 -> v2 + listener restart: same owner id, same "
                                               f"{len(ids)} IDs, v2 applied; converged {seconds:.1f} s after")
    finally:
        sv.cleanup()


class PersistentAgent(ConsulAgent):
    """A single-server agent that keeps its state on disk across a restart, as a
    production agent does (`-dev` forgets everything)."""

    def command(self) -> list[str]:
        words = super().command()
        words.remove("-dev")
        return [*words, "-server", "-bootstrap-expect", "1", "-data-dir", str(self.workdir / "data")]


@pytest.mark.fault("21. agent down while supervisord shuts down")
def test_an_instance_without_a_check_leaves_dns_when_supervisord_went_away_unseen(tmp_path, supervisord_factory,
                                                                                converged):
    agent = PersistentAgent(tmp_path / "consul")
    agent.start()
    try:
        service = unique("nocheck")
        sv = supervisord_factory(sleepers(service, ["plain"], "check=none\nderegister_after=1m")
                                 + listener(agent))
        converge(agent, sv)
        owner = owner_of(sv)
        sid = instance.service_id(owner, "plain")
        assert agent.checks()[f"{sid}:supervisord"]["Status"] == "passing"
        wait_for(lambda: agent.dns(f"{service}.service.consul"), timeout=10, message="plain in DNS")

        agent.stop()
        sv.stop()  # its listener cannot deregister anything: the agent is away
        agent.start()  # back, with what it had: the instance, its alias check, the claim
        back = time.monotonic()
        assert sid in agent.services()
        wait_for(lambda: agent.dns(f"{service}.service.consul") == [], timeout=30,
                 message="out of DNS once the claim's heartbeat is missed")
        out_of_dns = time.monotonic() - back
        wait_for(lambda: sid not in agent.services(), timeout=60 + 30 + 30, interval=1,
                 message="reaped after deregister_after")
        reaped = time.monotonic() - back
        converged(reaped, f"check = none instance out of DNS {out_of_dns:.1f} s after the agent came back "
                          f"(claim ttl 15 s), reaped after {reaped:.0f} s (deregister_after=1m)")
        assert [s for s in agent.services() if s.startswith(f"supervisord:{owner}:")] == []
    finally:
        agent.stop()
