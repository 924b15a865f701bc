"""Text from outside (an agent's answer, a check's output) made safe for a log
line or a terminal: control and other unprintable characters are escaped,
so a NUL, an ANSI escape or a bidi override cannot hide or forge a line."""

from __future__ import annotations

import logging


def escaped(text: str) -> str:
    """Every character that does not print as itself, as Python writes it in a
    string literal (\\x00, \\x1b, \\u202e); everything else as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Formatter(logging.Formatter):
    """Escapes each record's message, and each line of a traceback (which keeps
    its line breaks)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escaped(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - its last line quotes the exception's text
        # Split at "\n" only: splitlines() would also break at the \r an attacker put there.
        return "\n".join(escaped(line) for line in super().formatException(ei).split("\n"))
