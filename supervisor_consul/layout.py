"""Where sections and keys sit in a supervisord configuration file, by line.

An edit that must leave every other byte of the file as it was (comments,
blank lines, key order) needs line numbers, which configparser reads but does
not keep.  supervisor's own parser reads the file here, and the dictionaries
it fills (configparser's dict_type) note the line each section and key came
from, so the positions follow exactly the parser's rules (inline `;` and `#`
comments, continuation lines, case folding).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from supervisor.options import UnhosedConfigParser


@dataclass
class Place:
    """A section: its header's line and each key's first line (0-based)."""

    header: int
    keys: dict[str, int] = field(default_factory=dict)


class _Lines:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)
        self.current = -1

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self.lines):
            self.current = number
            yield line


def places(text: str) -> dict[str, Place]:
    """Each section of one file's text (the name as the parser keys it) -> its Place.
    configparser.Error when supervisor's parser refuses the text."""
    lines = _Lines(text)
    found: dict[str, Place] = {}

    class Noting(dict):
        """configparser's dict_type: its dict of sections, and each section's dict of keys
        (those are made while the text is read; the parser's other dicts before)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.role = "keys" if lines.current >= 0 else None
            self.section: str | None = None

        def __setitem__(self, key, value) -> None:
            if self.role == "sections":
                found.setdefault(key, Place(lines.current))
                if isinstance(value, Noting) and value.section is None:
                    value.section = key
            elif self.role == "keys" and self.section is not None:
                # setdefault: after the last line, configparser sets every key again (joining lines).
                found[self.section].keys.setdefault(key, lines.current)
            super().__setitem__(key, value)

    parser = UnhosedConfigParser(dict_type=Noting)
    parser._sections.role = "sections"  # type: ignore[attr-defined]
    parser.read_file(iter(lines), source="<text>")
    return found


def value_lines(lines: list[str], first: int) -> range:
    """The lines of the key whose first line is `first`: it and its continuation lines
    (indented deeper; blank lines between them belong to the value when more follow)."""
    indent = _indent(lines[first])
    last = first
    for number in range(first + 1, len(lines)):
        line = lines[number]
        if not line.strip():
            continue
        if _indent(line) > indent and not _is_comment(line):
            last = number
            continue
        break
    return range(first, last + 1)


def section_end(lines: list[str], place: Place) -> int:
    """The last line of a section's own keys (its header when it has none)."""
    if not place.keys:
        return place.header
    return max(value_lines(lines, first)[-1] for first in place.keys.values())


def _indent(line: str) -> int:
    match = re.search(r"\S", line)
    return match.start() if match else 0


def _is_comment(line: str) -> bool:
    return line.strip().startswith((";", "#"))


_INLINE_COMMENT = re.compile(r"\s[;#]")


def split_value(line: str) -> tuple[str, str, str]:
    """A key's first line as (everything up to the value, the value, an inline comment
    and the line's end): replacing the middle part keeps the rest as written."""
    match = re.match(r"(\s*[^=:]*?\s*[=:]\s*)", line)
    if match is None:
        raise ValueError(f"not a key line: {line!r}")
    head = match.group(1)
    rest = line[len(head):]
    body = rest.rstrip("\r\n")
    ending = rest[len(body):]
    comment = _INLINE_COMMENT.search(body)
    if comment is not None:
        return head, body[:comment.start()].rstrip(), body[len(body[:comment.start()].rstrip()):] + ending
    stripped = body.rstrip()
    return head, stripped, body[len(stripped):] + ending
