"""/proc/PID/stat, read as proc(5) lays it out."""

from __future__ import annotations


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat from the third (state) on, so proc(5)'s field N
    is index N-3; None when there is no such process here."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    return data[data.rfind(")") + 2:].split()
