"""The claim (claim.py): who holds an owner id, decided without I/O."""
from __future__ import annotations

import os

from supervisor_consul import claim, holder, instance
from supervisor_consul.claim import Incarnation, Keeper, Seen, Verdict
from supervisor_consul.config import Configuration
from supervisor_consul.spec import ServiceSpec

ME = Incarnation("boot-1", "4026531836", "4026531832", 100, 5000)
TWIN = Incarnation("boot-1", "4026531836", "4026532178", 200, 6000)  # another mount namespace, same pid one
CONTAINER = Incarnation("boot-1", "4026532999", "4026533000", 1, 7000)  # another pid namespace


def keeper(alive: dict[int, int] | None = None) -> Keeper:
    return Keeper(ME, started=lambda pid: (alive or {}).get(pid))


def test_round_trip_of_an_incarnation():
    assert Incarnation.decode(ME.encode()) == ME
    assert Incarnation.decode("garbage") is None and Incarnation.decode("a/b/c/x/1") is None


def test_this_machine_describes_its_own_process():
    mine = claim.incarnation_of(os.getpid())
    assert mine.pid == os.getpid() and mine.start == claim.start_time(os.getpid()) and mine.start > 0
    assert mine.boot and mine.pid_ns.isdigit() and mine.mnt_ns.isdigit()


def test_free_or_unreadable_is_taken_ours_is_held():
    assert keeper().decide(None).verdict is Verdict.TAKE
    assert keeper().decide(Seen(None, "passing", "")).verdict is Verdict.TAKE
    assert keeper().decide(Seen(ME, "passing", "")).verdict is Verdict.HOLD


def test_a_live_twin_in_the_same_pid_namespace_is_yielded_to_and_named():
    decision = keeper({200: 6000}).decide(Seen(TWIN, "passing", "x"))
    assert decision.verdict is Verdict.YIELD
    assert "supervisord pid 200 in mount namespace 4026532178 is alive" in decision.why


def test_a_dead_holder_or_a_reused_pid_is_taken_over():
    assert keeper({}).decide(Seen(TWIN, "passing", "x")).verdict is Verdict.TAKE
    assert keeper({200: 1}).decide(Seen(TWIN, "passing", "x")).verdict is Verdict.TAKE  # pid reused


def test_a_holder_from_before_the_boot_or_with_a_stopped_heartbeat_is_taken_over():
    earlier = Incarnation("boot-0", *[getattr(TWIN, f) for f in ("pid_ns", "mnt_ns", "pid", "start")])
    assert keeper({200: 6000}).decide(Seen(earlier, "passing", "x")).verdict is Verdict.TAKE
    assert keeper({200: 6000}).decide(Seen(TWIN, "critical", "x")).verdict is Verdict.TAKE


def test_a_holder_in_another_pid_namespace_is_judged_by_its_claims_ttl_check():
    decision = keeper().decide(Seen(CONTAINER, "passing", "supervisord pid 1 serves 3 process(es) in Consul"))
    assert decision.verdict is Verdict.YIELD and "pid namespace 4026532999" in decision.why
    assert keeper().decide(Seen(CONTAINER, "critical", "TTL expired")).verdict is Verdict.TAKE


def test_the_claim_registration_records_the_incarnation_and_outlives_its_instances():
    configuration = Configuration("/etc/current.conf", identifier="web-tier")
    registration = instance.of_claim("0123456789ab", "node1", configuration, ME, "15s", "6m")
    meta = dict(registration.meta)
    assert registration.service_id == "supervisord:0123456789ab" and registration.name == "supervisord"
    assert Incarnation.decode(meta[claim.INCARNATION_META]) == ME
    assert (meta["supervisord-config"], meta["supervisord-identifier"]) == ("/etc/current.conf", "web-tier")
    [check] = [dict(c) for c in registration.checks]
    assert check["TTL"] == "15s" and check["DeregisterCriticalServiceAfter"] == "6m"


def test_every_instance_aliases_the_claim_while_it_is_held():
    none = ServiceSpec("app", "app", "app", "app", ttl_check=False)
    ttl = ServiceSpec("db", "db", "db", "db", deregister_after="2m")
    alias = [dict(c) for c in instance.of(none, "0123456789ab", "node1", claimed=True).checks]
    assert alias == [{"CheckID": "supervisord:0123456789ab:app:supervisord",
                      "Name": "supervisord and its listener (0123456789ab)",
                      "AliasService": "supervisord:0123456789ab", "DeregisterCriticalServiceAfter": "5m"}]
    assert instance.of(none, "0123456789ab", "node1", claimed=False).checks == ()
    claimed = instance.of(ttl, "0123456789ab", "node1", claimed=True)
    process, liveness = (dict(c) for c in claimed.checks)
    # The process-state check changes only with the process: its TTL is a backstop, refreshed every 8 h.
    assert process["TTL"] == instance.BACKSTOP_TTL == "24h" and claimed.ttl_seconds == 86400
    assert process["DeregisterCriticalServiceAfter"] == liveness["DeregisterCriticalServiceAfter"] == "2m"
    assert liveness["AliasService"] == "supervisord:0123456789ab"
    # Without the claim (a token that may not write `supervisord`) the process-state check is the liveness check.
    [unclaimed] = [dict(c) for c in instance.of(ttl, "0123456789ab", "node1", claimed=False).checks]
    assert unclaimed["TTL"] == "15s"


def test_an_alias_is_registered_passing_so_a_re_registered_instance_never_blinks():
    registration = instance.of(ServiceSpec("db", "db", "db", "db"), "0123456789ab", "node1", claimed=True)
    statuses = {c["CheckID"]: c["Status"] for c in registration.payload("critical")["Checks"]}
    assert statuses == {"supervisord:0123456789ab:db:process": "critical",
                        "supervisord:0123456789ab:db:supervisord": "passing"}


def test_the_claims_ttl_is_the_shortest_ttl_of_its_instances_and_at_most_15s():
    def ttl(*specs: ServiceSpec) -> float:
        return holder.claim_ttl(Configuration("/c", services={s.unit: s for s in specs}))

    assert ttl() == 15.0
    assert ttl(ServiceSpec("a", "a", "a", "a", ttl="3s"), ServiceSpec("b", "b", "b", "b", ttl="1m")) == 3.0
    assert ttl(ServiceSpec("a", "a", "a", "a", ttl="2s", ttl_check=False)) == 15.0


def test_the_owner_id_keeps_the_path_as_given_and_knows_the_old_one(tmp_path):
    release = tmp_path / "releases" / "v1"
    release.mkdir(parents=True)
    (release / "supervisord.conf").write_text("")
    current = tmp_path / "current.conf"
    current.symlink_to(release / "supervisord.conf")
    configuration = Configuration(str(current))
    assert instance.owner_of("h", configuration) == instance.owner_id("h", str(current), "supervisor")
    assert instance.legacy_owner_of("h", configuration) == instance.owner_id("h", str(release / "supervisord.conf"),
                                                                     "supervisor")
