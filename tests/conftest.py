"""Shared pytest fixtures: a real Consul agent and real supervisord instances."""
from __future__ import annotations

import pytest

from tests.harness import ConsulAgent, Supervisord


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory):
    """One real `consul agent -dev` for the whole test session."""
    agent = ConsulAgent(tmp_path_factory.mktemp("consul"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def supervisord_factory(tmp_path):
    """make(config_text) -> a started Supervisord in its own dir under tmp_path.

    Every one created is cleaned up at teardown, even if the test failed.
    """
    created: list[Supervisord] = []

    def make(config_text: str, env: dict | None = None) -> Supervisord:
        sv = Supervisord(tmp_path / f"sv{len(created)}", config_text)
        created.append(sv)
        sv.start(env=env)
        return sv

    try:
        yield make
    finally:
        for sv in reversed(created):
            sv.cleanup()
