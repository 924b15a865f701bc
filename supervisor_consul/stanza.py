"""The sections a supervisord configuration needs for supervisor-consul, as
`migrate-ianitor` adds them; etc/supervisord.conf.sample carries the same keys
with their reasons (tests/test_migrate.py holds the two together)."""
from __future__ import annotations

LISTENER_SECTION = "eventlistener:consul"
# After `command`, in this order.
LISTENER_KEYS = (
    ("events", "PROCESS_STATE,PROCESS_GROUP,TICK_5"),
    ("buffer_size", "100"),
    ("priority", "-2"),
    ("numprocs", "1"),
    ("autorestart", "true"),
    ("stdout_logfile", "NONE"),
)
RPCINTERFACE_SECTION = "rpcinterface:supervisor"
RPCINTERFACE_KEYS = (("supervisor.rpcinterface_factory", "supervisor.rpcinterface:make_main_rpcinterface"),)


def text(section: str, keys: tuple[tuple[str, str], ...], comment: str = "") -> list[str]:
    """A section's lines as written into a file."""
    lines = [f"; {line}\n" for line in comment.splitlines()]
    return [*lines, f"[{section}]\n", *(f"{key}={value}\n" for key, value in keys)]
