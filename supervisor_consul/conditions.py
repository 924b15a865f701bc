"""Conditions: what is wrong right now, said once when it starts or changes
and once when it ends, however many rounds it lasts."""

from __future__ import annotations

import logging

log = logging.getLogger("supervisor_consul")


class Conditions:
    """Logs a condition once when it starts or changes, and once when it clears."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}

    def report(self, key: str, message: str, level: int = logging.WARNING,
               exc_info: BaseException | None = None, once: bool = False) -> None:
        """`once`: said once until cleared, whatever the message (one cause, many calls)."""
        if self._current.get(key) != message and not (once and key in self._current):
            self._current[key] = message
            log.log(level, "%s", message, exc_info=exc_info)

    def clear(self, key: str, recovered: str | None = None) -> None:
        if self._current.pop(key, None) is not None and recovered:
            log.info("%s", recovered)
