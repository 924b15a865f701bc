"""What supervisord's events say, as hints for the sync loop.

Events are hints, not the truth: the sync loop folds them into its view of
supervisord and reconciles against `getAllProcessInfo` anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.options import make_namespec
from supervisor.states import ProcessStates

from .protocol import Event

PROCESS_STATE_PREFIX = "PROCESS_STATE_"
SUPERVISOR_STATE_PREFIX = "SUPERVISOR_STATE_CHANGE_"
# Only the states supervisord has, and only the supervisor states it announces:
# anything else in an event name is no news, and must not reach the state mapping.
PROCESS_STATES = frozenset(name for name in vars(ProcessStates) if name.isupper())
SUPERVISOR_STATES = ("RUNNING", "STOPPING")


@dataclass(frozen=True)
class ProcessStateChange:
    """A process moved to `state` (supervisord's state name, e.g. RUNNING)."""

    namespec: str
    state: str
    from_state: str = ""
    pid: int = 0
    expected: bool | None = None  # EXITED only: was the exit status in exitcodes?


@dataclass(frozen=True)
class GroupsChanged:
    """`supervisorctl update`/`add`/`remove`, or a reload: the set of programs changed."""

    group: str


@dataclass(frozen=True)
class SupervisorStateChange:
    state: str  # RUNNING after start or reload, STOPPING before shutdown or reload


Hint = ProcessStateChange | GroupsChanged | SupervisorStateChange


def hint_for(event: Event) -> Hint | None:
    """The hint an event carries; None for events that carry none (TICK_*)."""
    name = event.name
    fields = event.payload_headers
    if name.startswith(PROCESS_STATE_PREFIX):
        state = name[len(PROCESS_STATE_PREFIX):]
        if state not in PROCESS_STATES or "processname" not in fields or "groupname" not in fields:
            return None
        return ProcessStateChange(
            namespec=make_namespec(fields["groupname"], fields["processname"]),
            state=state,
            from_state=fields.get("from_state", ""),
            pid=_int(fields.get("pid")),
            expected=(fields["expected"] == "1") if "expected" in fields else None,
        )
    if name in ("PROCESS_GROUP_ADDED", "PROCESS_GROUP_REMOVED"):
        return GroupsChanged(fields.get("groupname", ""))
    if name.startswith(SUPERVISOR_STATE_PREFIX):
        state = name[len(SUPERVISOR_STATE_PREFIX):]
        return SupervisorStateChange(state) if state in SUPERVISOR_STATES else None
    return None


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
