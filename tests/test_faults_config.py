"""Issue 10, items 5 and 10, under a real supervisord and a real Consul agent.

A program in two groups runs (and is registered) once in each.  Sections
that make what to register ambiguous -- two [consul:*] sections for one
program, one of them in an [include]d file; service names that differ only in
case, which Consul DNS answers for as one -- are named in the listener's log
and by `supervisor-consul check`, those programs are left out, and everything
else is registered.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest

from supervisor_consul import config
from tests.faults import drift
from tests.harness import listener, run_cli, wait_for
from tests.test_integration import listener_log, unique, wait_passing


def sleeper(program: str, consul: str = "") -> str:
    return f"[program:{program}]\ncommand=sleep 300\n[consul:{program}]\n{consul}\n"


@pytest.mark.fault("12b. programs in two groups, ambiguous sections")
def test_programs_in_two_groups_and_ambiguous_sections(consul_agent, supervisord_factory, converged, tmp_path):
    twice, shared, solo = unique("twice"), unique("shared"), unique("solo")
    shop, cart = unique("Shop"), f"Cart{uuid.uuid4().hex[:8]}"
    text = (
        "[include]\nfiles=conf.d/*.conf\n"
        # twice runs as g1:twice and g2:twice: two instances of one service.
        f"[program:twice]\ncommand=sleep 300\n[group:g1]\nprograms=twice\n[group:g2]\nprograms=twice\n"
        f"[consul:twice]\nname={twice}\nmeta.group=%(group_name)s\n"
        + sleeper("solo", f"name={solo}")
        # Two programs with one name, spelled alike: one service, two instances.
        + sleeper("one", f"name={shared}\nport=8001") + sleeper("two", f"name={shared}\nport=8002")
        # dup has a second [consul:*] section in conf.d/dup.conf.
        + sleeper("dup", f"name={unique('dup')}\nport=9001")
        # Case clashes: Shop- and shop- (api's in conf.d), and the program name CartX against name = cartx.
        + sleeper("web", f"name={shop}") + f"[program:{cart}]\ncommand=sleep 300\n[consul:{cart}]\n"
        + sleeper("bag", f"name={cart.lower()}")
    )
    conf_d = tmp_path / "sv0" / "conf.d"  # supervisord_factory's directory for its first supervisord
    conf_d.mkdir(parents=True)
    (conf_d / "dup.conf").write_text("[consul: dup]\nport=9002\n")
    (conf_d / "api.conf").write_text(sleeper("api", f"name={shop.lower()}"))
    left_out = {"dup", "web", "api", cart, "bag"}

    start = time.monotonic()
    sv = supervisord_factory(text + listener(consul_agent))
    assert sv.conf.parent / "conf.d" == conf_d
    wait_passing(consul_agent, twice, count=2)
    wait_passing(consul_agent, shared, count=2)
    wait_passing(consul_agent, solo)
    # Zero drift for what should be registered: the only difference left is the programs left out.
    expected = sorted(f"{program}: supervisord RUNNING, Consul absent" for program in left_out)
    wait_for(lambda: sorted(drift(consul_agent, sv)) == expected, timeout=30,
             message="no drift but the programs left out")
    took = time.monotonic() - start

    owned = {(s["Meta"]["supervisord-group"], s["Meta"]["supervisord-process"]): s
             for s in consul_agent.services().values() if s["Service"] == twice}
    assert sorted(owned) == [("g1", "twice"), ("g2", "twice")]
    assert {key: s["Meta"]["group"] for key, s in owned.items()} == {("g1", "twice"): "g1", ("g2", "twice"): "g2"}

    problems = config.read(str(sv.conf)).problems
    included = {str(sv.conf.parent / "conf.d" / "dup.conf"), str(sv.conf.parent / "conf.d" / "api.conf")}
    assert sorted((p.section, p.file in included) for p in problems) == sorted([
        ("consul:dup", False), ("consul: dup", True), ("consul:web", False), ("consul:api", True),
        (f"consul:{cart}", False), ("consul:bag", False)])
    # The listener names each, once.
    log = wait_for(lambda: all(str(p) in listener_log(sv) for p in problems) and listener_log(sv),
                   message="every problem in the listener's log")
    for problem in problems:
        assert log.count(f"{problem}; this program stays unregistered") == 1
    # Every program runs (and the drift above says none of those left out is in Consul).
    assert all(sv.state(program) == "RUNNING" for program in left_out)
    check = run_cli("check", "-c", str(sv.conf))
    assert check.returncode == 1
    assert sorted(check.stdout.splitlines()) == sorted(str(p) for p in problems)
    status = run_cli("status", "-c", str(sv.conf), "--http-addr", consul_agent.http_addr, "--json")
    rows = {row["namespec"]: row for row in json.loads(status.stdout)}
    assert rows["g1:twice"]["in_step"] and rows["g2:twice"]["in_step"], status.stdout
    assert status.returncode == 0, status.stdout + status.stderr

    converged(took, f"g1:twice and g2:twice both passing; {len(problems)} problems named (2 sections for one "
                    f"program, 4 in case clashes), those {len(left_out)} programs left out, the other "
                    f"{len(rows)} processes registered")
