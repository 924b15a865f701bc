"""`make unit` (pytest --unit): the tests that start no process, in seconds.

A test is an integration test when it asks for a fixture that starts real
processes (PROCESS_FIXTURES) or its module says so (`pytestmark =
pytest.mark.integration`).  Under --unit every other test runs with process
creation refused, so a test that starts one fails there and names itself:
the split is checked, not trusted.
"""
from __future__ import annotations

import subprocess

import pytest

PROCESS_FIXTURES = frozenset({
    "consul_agent", "supervisord_factory", "own_agent", "agent_later", "cluster", "hosts", "secure_agent",
    "running_supervisord", "ui_agent", "browser_page", "children", "watch", "program", "runner",
})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--unit", action="store_true", help="only the tests that start no process (make unit)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    if config.getoption("--unit"):
        kept = [item for item in items if item.get_closest_marker("integration") is None]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(autouse=True)
def _no_process_in_a_unit_run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not request.config.getoption("--unit"):
        return

    def refused(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it pytest.mark.integration")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refused)
