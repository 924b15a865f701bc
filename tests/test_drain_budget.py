"""cli.drain_budget: how long deregistering at a shutdown may take before the listener exits."""
from __future__ import annotations

from supervisor_consul import config
from supervisor_consul.cli import DEFAULT_STOPWAITSECS, EXIT_MARGIN, drain_budget

LISTENER = "[eventlistener:consul]\ncommand=supervisor-consul listen\nevents=PROCESS_STATE\n"
CONSUL = {"SUPERVISOR_GROUP_NAME": "consul", "SUPERVISOR_PROCESS_NAME": "consul"}  # as supervisord sets them


def configuration(tmp_path, stanza: str) -> config.Configuration:
    path = tmp_path / "supervisord.conf"
    path.write_text("[supervisord]\n[program:web]\ncommand=sleep 1\n" + stanza)
    return config.read(str(path))


def test_the_listeners_own_stopwaitsecs_less_a_moment_to_exit(tmp_path):
    found = configuration(tmp_path, LISTENER + "stopwaitsecs=30\n")
    assert found.listeners == {"consul": 30}
    assert drain_budget(found, CONSUL) == (30 - EXIT_MARGIN, "[eventlistener:consul] stopwaitsecs = 30")


def test_supervisords_default_when_the_section_leaves_it_out(tmp_path):
    found = configuration(tmp_path, LISTENER)
    assert drain_budget(found, CONSUL)[0] == DEFAULT_STOPWAITSECS - EXIT_MARGIN


def test_a_pool_of_listeners_finds_each_process_by_its_namespec(tmp_path):
    pool = LISTENER.replace("consul]", "pool]") + "numprocs=2\nprocess_name=%(program_name)s_%(process_num)d\n"
    found = configuration(tmp_path, pool + "stopwaitsecs=4\n")
    assert found.listeners == {"pool:pool_0": 4, "pool:pool_1": 4}
    environ = {"SUPERVISOR_GROUP_NAME": "pool", "SUPERVISOR_PROCESS_NAME": "pool_1"}
    assert drain_budget(found, environ) == (4 - EXIT_MARGIN, "[eventlistener:pool] stopwaitsecs = 4")


def test_a_short_stopwaitsecs_still_leaves_half_of_it(tmp_path):
    found = configuration(tmp_path, LISTENER + "stopwaitsecs=1\n")
    assert drain_budget(found, CONSUL)[0] == 0.5


def test_run_by_hand_or_unreadable_the_default_says_so():
    budget, why = drain_budget(None, {})
    assert budget == DEFAULT_STOPWAITSECS - EXIT_MARGIN
    assert why == f"supervisord's default stopwaitsecs, {DEFAULT_STOPWAITSECS}"
