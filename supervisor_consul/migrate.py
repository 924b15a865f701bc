"""`supervisor-consul migrate-ianitor`: programs wrapped in ianitor, unwrapped.

Each `[program:X]` (or `[fcgi-program:X]`) whose command runs ianitor gets
the wrapped command back and a `[consul:X]` section saying what ianitor's
options said; the configuration gains the listener's stanza (and supervisord's
RPC interface) when it lacks them.  `plan()` works on the files' texts alone;
`run()` reads and writes them.  Only the changed lines change: every other
byte of every file stays as it was.
"""
from __future__ import annotations

import argparse
import configparser
import difflib
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

from . import config, ianitor, instance, layout, stanza, values
from .values import Invalid


@dataclass(frozen=True)
class Found:
    """A program that runs ianitor, and what it becomes."""

    file: str
    section: str  # "program:netcat"
    wrapped: ianitor.Wrapped
    keys: tuple[tuple[str, str], ...]  # its [consul:PROGRAM] section
    notes: tuple[str, ...]  # what of ianitor's options has no equivalent

    @property
    def program(self) -> str:
        return self.section.split(":", 1)[1].strip()


@dataclass(frozen=True)
class Left:
    """A program that runs ianitor (or may) and is left as it is."""

    file: str
    section: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: [{self.section}] left as it is: {self.reason}"


@dataclass
class Plan:
    configfile: str
    before: dict[str, str]  # file -> its text
    after: dict[str, str] = field(default_factory=dict)  # the files that change -> their new text
    migrated: list[Found] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)  # why nothing may be written
    added: list[str] = field(default_factory=list)  # sections added to the main file

    def diff(self) -> str:
        return "".join("".join(difflib.unified_diff(self.before[path].splitlines(keepends=True),
                                                    self.after[path].splitlines(keepends=True),
                                                    fromfile=path, tofile=path))
                       for path in self.after)


def consul_keys(program: str, wrapped: ianitor.Wrapped) -> tuple[tuple[str, str], ...]:
    """The [consul:PROGRAM] keys for ianitor's options; Invalid when one cannot be said so."""
    keys: list[tuple[str, str]] = []
    if wrapped.service_name != program:
        keys.append(("name", wrapped.service_name))
    if wrapped.port is not None:
        keys.append(("port", str(values.optional_port(str(wrapped.port)))))
    if wrapped.tags:
        if any("," in tag for tag in wrapped.tags):
            raise Invalid(f"--tags {', '.join(t for t in wrapped.tags if ',' in t)!r}: a tag with a comma "
                          "cannot be written in tags=, which is comma-separated")
        keys.append(("tags", ",".join(wrapped.tags)))
    if wrapped.address is not None:
        keys.append(("address", values.address(wrapped.address)))
    if wrapped.ttl is not None:
        keys.append(("ttl", values.ttl(f"{wrapped.ttl:g}s")))
    return tuple(keys)


def notes(wrapped: ianitor.Wrapped, ids: list[str]) -> tuple[str, ...]:
    """What of ianitor's options does not carry over, in words for the operator."""
    said = []
    if wrapped.heartbeat is not None:
        said.append(f"--heartbeat {wrapped.heartbeat:g} has no equivalent: the listener refreshes every ttl/3, "
                    "and one heartbeat of its own serves every instance")
    if wrapped.service_id is not None:
        said.append(f"--id {wrapped.service_id} gives way to the listener's instance IDs: {', '.join(ids)}")
    if wrapped.verbose:
        said.append("-v is dropped: the listener logs to its own stderr (--log-level)")
    if wrapped.consul_agent not in (None, ianitor.DEFAULT_AGENT):
        host, port = wrapped.consul_agent
        said.append(f"--consul-agent {host}:{port} becomes the listener's --http-addr")
    said.append(f"ianitor's own registration (ID {wrapped.service_id or wrapped.service_name}) stays in the "
                f"agent, critical (ianitor 0.1.0 deregisters with GET, which Consul 1.0 and later refuse): "
                f"remove it with `consul services deregister -id {wrapped.service_id or wrapped.service_name}`")
    return tuple(said)


def plan(configuration: config.Configuration, texts: dict[str, str], host: str, listener_command: str) -> Plan:
    """The edits that migrate every ianitor-wrapped program in these files (the
    configuration's files -> their text); `listener_command` runs the listener."""
    result = Plan(configuration.configfile, before=texts)
    lines = {path: text.splitlines(keepends=True) for path, text in texts.items()}
    places: dict[str, dict[str, layout.Place]] = {}
    for path, text in texts.items():
        try:
            places[path] = layout.places(text)
        except configparser.Error as exc:
            result.blocking.append(f"{path}: supervisord cannot read it: {exc}")
            return result
    defined: dict[str, list[str]] = {}
    for path, sections in places.items():
        for section in sections:
            defined.setdefault(section, []).append(path)
    owner = instance.owner_of(host, configuration)
    edits: dict[str, list[tuple[range, list[str]]]] = {}
    agents: dict[tuple[str, int], list[str]] = {}
    for section, paths in defined.items():
        kind, _, program = section.partition(":")
        program = program.strip()  # as supervisord reads [program: web]
        if kind not in config.PROGRAM_KINDS or "command" not in places[paths[0]][section].keys:
            continue
        path = paths[0]
        place = places[path][section]
        first = place.keys["command"]
        command_lines = layout.value_lines(lines[path], first)
        head, value, tail = layout.split_value(lines[path][first])
        if len(command_lines) > 1:
            value = " ".join([value, *(line.strip() for line in lines[path][first + 1:command_lines.stop])])
        try:
            wrapped = ianitor.parse(value)
        except ianitor.NotIanitor:
            continue
        except ianitor.Unparsable as exc:
            result.left.append(Left(path, section, f"its command runs ianitor, but cannot be read ({exc}): "
                                                   f"{value}"))
            continue
        if len(paths) > 1:
            result.left.append(Left(path, section, f"it is defined in {' and '.join(paths)}, which supervisord "
                                                   "merges: migrate it by hand"))
            continue
        if f"consul:{program}" in defined:
            result.left.append(Left(path, section, f"[consul:{program}] exists already: remove ianitor from its "
                                                   "command by hand"))
            continue
        try:
            keys = consul_keys(program, wrapped)
        except Invalid as exc:
            result.left.append(Left(path, section, str(exc)))
            continue
        group = program  # a [group:] of its own may hold it; check --show tells then
        ids = [instance.service_id(owner, f"{group}:{process}") for process in configuration.groups.get(group, ())]
        ids = ids or [instance.service_id(owner, f"{group}:{program}")]
        found = Found(path, section, wrapped, keys, notes(wrapped, ids))
        result.migrated.append(found)
        agents.setdefault(wrapped.consul_agent or ianitor.DEFAULT_AGENT, []).append(section)
        separator = "=" if head.rstrip().endswith("=") and not head.endswith(" ") else " = "
        edits.setdefault(path, []).append((command_lines, [f"{head}{wrapped.command}{tail}"]))
        end = layout.section_end(lines[path], place)
        ending = "" if lines[path][end].endswith("\n") else "\n"
        edits[path].append((range(end + 1, end + 1), [ending, "\n", f"[consul:{program}]\n",
                                                       *(f"{k}{separator}{v}\n" for k, v in keys)]))
    if len(agents) > 1:
        named = "; ".join(f"{host}:{port} in {', '.join(f'[{s}]' for s in sections)}"
                          for (host, port), sections in agents.items())
        result.blocking.append(f"the programs name different Consul agents ({named}): one listener serves a "
                               "supervisord and talks to one agent; make their --consul-agent agree first")
    if result.migrated:
        _add_sections(result, configuration, places, lines, edits, listener_command, next(iter(agents)))
    for path, changes in edits.items():
        changed = list(lines[path])
        # From the bottom up, so that each span is still where it was; of two insertions at one
        # line the later goes in first, ending up below the earlier.
        for _, (span, new) in sorted(enumerate(changes), key=lambda change: (change[1][0].start, change[0]),
                                     reverse=True):
            changed[span.start:span.stop] = new
        result.after[path] = "".join(changed)
    return result


def _add_sections(result: Plan, configuration: config.Configuration, places: dict[str, dict[str, layout.Place]],
                  lines: dict[str, list[str]], edits: dict[str, list[tuple[range, list[str]]]],
                  listener_command: str, agent: tuple[str, int]) -> None:
    """The listener's stanza and supervisord's RPC interface, at the end of the main file, when missing."""
    main = configuration.configfile
    end = len(lines[main])
    added: list[str] = []
    if lines[main] and not lines[main][-1].endswith("\n"):
        added.append("\n")
    if not any(section.startswith("rpcinterface:") for sections in places.values() for section in sections):
        added += ["\n", *stanza.text(stanza.RPCINTERFACE_SECTION, stanza.RPCINTERFACE_KEYS,
                                     "supervisor-consul reads supervisord's state over XML-RPC.")]
        result.added.append(stanza.RPCINTERFACE_SECTION)
    if not configuration.listeners:
        command = f"{listener_command} listen -c %(here)s/{os.path.basename(main)}"
        if agent != ianitor.DEFAULT_AGENT:
            command += f" --http-addr {agent[0]}:{agent[1]}"
        keys = (("command", command), *stanza.LISTENER_KEYS)
        added += ["\n", *stanza.text(stanza.LISTENER_SECTION, keys,
                                     "supervisor-consul registers the [consul:*] programs in Consul "
                                     "(added by migrate-ianitor).")]
        result.added.append(stanza.LISTENER_SECTION)
    if result.added:
        edits.setdefault(main, []).append((range(end, end), added))


def listener_command() -> str:
    """How supervisord should run the listener: this very installation."""
    if os.path.basename(sys.argv[0]) == "supervisor-consul":
        return shlex.quote(os.path.abspath(sys.argv[0]))
    return f"{shlex.quote(sys.executable)} -m supervisor_consul"


# -- the shell -----------------------------------------------------------------

def run(args: argparse.Namespace, host: str) -> int:
    if (located := config.read_located(args.configuration)) is None:
        return 2
    configfile, configuration = located
    if not configuration.readable:
        print("\n".join(str(p) for p in configuration.problems), file=sys.stderr)
        return 2
    texts = {}
    for path in configuration.files:
        with open(path, encoding="utf-8", newline="") as f:
            texts[path] = f.read()
    result = plan(configuration, texts, host, listener_command())
    print(result.diff(), end="")
    for found in result.migrated:
        print(f"[{found.section}] in {found.file}: `{found.wrapped.command}`, registered by the listener as "
              f"{dict(found.keys).get('name', found.program)}")
        for note in found.notes:
            print(f"  - {note}")
    for left in result.left:
        print(left)
    for reason in result.blocking:
        print(f"supervisor-consul: migrate-ianitor: {reason}; nothing written", file=sys.stderr)
    if not result.migrated and not result.left and not result.blocking:
        print(f"no program in {configfile} (or the files it includes) runs ianitor")
        return 0
    if result.blocking:
        return 1
    if not args.write:
        if result.migrated:
            print("(a dry run: --write applies this diff, with a backup of each file)")
        return 1 if result.left else 0
    if not result.after:
        return 1
    return _write(result, configfile) or (1 if result.left else 0)


def _write(result: Plan, configfile: str) -> int:
    backups = {}
    for path, text in result.after.items():
        backups[path] = _backup(path)
        _replace(path, text)
    problems = config.read(configfile)
    if problems.problems or not problems.readable:
        for path in result.after:
            _replace(path, result.before[path])
        for problem in problems.problems:
            print(problem, file=sys.stderr)
        print(f"supervisor-consul: migrate-ianitor: `check` finds the result wrong; every file is put back as it "
              f"was (copies in {', '.join(backups.values())})", file=sys.stderr)
        return 1
    for path, backup in backups.items():
        print(f"wrote {path} (as it was: {backup})")
    restart = stanza.RPCINTERFACE_SECTION in result.added
    print(f"check: no problems in {configfile}; next: "
          + ("restart supervisord (an added [rpcinterface:*] is read only at start)" if restart
             else "supervisorctl reread && supervisorctl update"))
    return 0


def _backup(path: str) -> str:
    """A copy beside the file, hidden: [include] files=*.conf (or *) must not read it."""
    stem = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.ianitor")
    backup, n = f"{stem}.bak", 1
    while os.path.exists(backup):
        backup, n = f"{stem}.{n}.bak", n + 1
    shutil.copy2(path, backup)
    return backup


def _replace(path: str, text: str) -> None:
    """Write `text` over `path` in one rename, with the file's mode kept."""
    fd, draft = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".migrate-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        shutil.copymode(path, draft)
        os.replace(draft, path)
    except BaseException:
        if os.path.exists(draft):
            os.unlink(draft)
        raise
