"""The `[consul:PROGRAM]` sections of supervisord's configuration.

The file is read by supervisor's own parser (`supervisor.options`), so
`[include]`, `%(here)s`, `%(ENV_X)s`, `%(program_name)s`, `%(process_num)d`
and friends expand exactly as supervisord expands them, once per process.
Every problem a user can cause becomes a `Problem` naming file, section, key
and value; a program with a problem is left out, every other one is kept.
"""

from __future__ import annotations

import configparser
import contextlib
import getopt
import glob
import os
import platform
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import supervisor.options as supervisor_options
from supervisor.datatypes import dict_of_key_value_pairs, list_of_strings, process_or_group_name
from supervisor.options import EventListenerPoolConfig, ServerOptions, expand, make_namespec

from . import schema
from .section import short, spec_of
from .spec import ServiceSpec
from .values import SERVICE_KEY

SECTION_PREFIX = "consul:"


@dataclass(frozen=True)
class Problem:
    """Something wrong in the configuration, as one line a user can act on."""

    file: str
    section: str
    key: str | None
    value: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: [{self.section}]" if self.section else f"{self.file}:"
        if self.key is None:
            return f"{where} {self.message}"
        return f"{where} {self.key} = {self.value!r}: {self.message}"


@dataclass(frozen=True)
class Configuration:
    """One reading of supervisord's configuration."""

    configfile: str
    identifier: str = "supervisor"
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    readable: bool = True  # False when supervisor itself could not read the file
    files: tuple[str, ...] = ()  # every file read, for change detection
    include_dirs: tuple[str, ...] = ()  # where [include] files= looks: a file added there is a change

    @property
    def watched(self) -> tuple[str, ...]:
        """The paths whose stamps (stamp()) tell whether the configuration may have changed."""
        return (*self.files, *self.include_dirs)
    server_configs: tuple[dict[str, Any], ...] = ()
    # The event listeners that run `supervisor-consul listen`: namespec -> its stopwaitsecs.
    listeners: dict[str, int] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # process group -> its processes' names

    def of_process(self, namespec: str) -> tuple[ServiceSpec, ...]:
        """The services registered for one process: its [consul:PROGRAM] first, then its further ones."""
        return tuple(spec for spec in self.services.values() if spec.namespec == namespec)

    def process(self, namespec: str) -> ServiceSpec | None:
        """One of a process's specs, for what they share (exitcodes, startsecs)."""
        return next(iter(self.of_process(namespec)), None)


PROGRAM_KINDS = ("program", "fcgi-program")  # the sections a [consul:PROGRAM] may stand beside


class ConfigNotFound(Exception):
    pass


def stamp(paths: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """What tells a reading of these files from the next: each path's inode, size and
    mtime (a directory's mtime moves when a file is added to it or removed)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((path, 0, -1, 0))
    return tuple(stamps)


def read(configfile: str) -> Configuration:
    """Read supervisord's configuration and every `[consul:…]` section in it."""
    configfile = os.path.abspath(configfile)
    options = _Reader()
    options.configfile = configfile
    try:
        with _case_preserving_meta_keys():
            options.process_config(do_usage=False)
    except ValueError as exc:
        return Configuration(configfile, readable=False,
                             problems=(Problem(configfile, "", None, None,
                                               "supervisord cannot read this configuration: "
                                               + short(exc)),))
    finally:
        options.close_poller()
    parser = options.parser
    assert parser is not None
    running = _running(options)
    ambiguous = _ambiguous_sections(parser.file_sections)
    by_section: dict[str, list[ServiceSpec]] = {}
    problems: list[Problem] = []
    for section in parser.sections():
        if section in ambiguous:
            problems.extend(ambiguous[section])
        elif section.startswith(SECTION_PREFIX):
            specs, section_problems = _read_section(options, parser, section, running)
            problems.extend(p for p in section_problems if p not in problems)
            if not section_problems:
                by_section[section] = specs
    for problem in _name_clashes(parser, by_section, configfile):
        problems.append(problem)
        by_section.pop(problem.section, None)
    files = (configfile, *sorted({os.path.abspath(name) for name, _ in parser.file_sections} - {configfile}))
    include_dirs = _include_dirs(options, parser, configfile)
    return Configuration(
        configfile=configfile,
        identifier=options.configroot.supervisord.identifier,
        services={spec.unit: spec for specs in by_section.values() for spec in specs},
        problems=tuple(problems),
        files=files,
        include_dirs=include_dirs,
        server_configs=tuple(options.configroot.supervisord.server_configs),
        listeners={make_namespec(group.name, process.name): process.stopwaitsecs
                   for group in options.process_group_configs if isinstance(group, EventListenerPoolConfig)
                   for process in group.process_configs if runs_listener(process.command)},
        groups=_groups(running),
    )


def _groups(running: dict[tuple[str, str], Any]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for group, process in running:
        groups.setdefault(group, []).append(process)
    return {group: tuple(processes) for group, processes in groups.items()}


def runs_listener(command: str) -> bool:
    """Whether a command line runs `supervisor-consul listen` (or `python -m supervisor_consul listen`)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    for index, word in enumerate(words):
        if os.path.basename(word) == "supervisor-consul" or word == "supervisor_consul":
            return "listen" in words[index + 1:]
    return False


def locate(explicit: str | None = None, parent_pid: int | None = None) -> str:
    """The configuration file supervisord runs with.

    An explicit path wins; else the `-c` on our parent supervisord's command
    line; else supervisor's own search path.
    """
    if explicit:
        return os.path.abspath(explicit)
    found = configfile_of_process(os.getppid() if parent_pid is None else parent_pid)
    if found:
        return found
    for path in ServerOptions().searchpaths:
        if os.path.exists(path):
            return os.path.abspath(path)
    raise ConfigNotFound(
        "cannot find supervisord's configuration: pass -c PATH (e.g. -c /etc/supervisor/supervisord.conf)")


def read_located(explicit: str | None) -> tuple[str, Configuration] | None:
    """`locate(explicit)` and read it, for a command: None after saying on stderr
    that there is none to read (the command then exits 2)."""
    try:
        configfile = locate(explicit)
    except ConfigNotFound as exc:
        print(f"supervisor-consul: {exc}", file=sys.stderr)
        return None
    return configfile, read(configfile)


def configfile_of_process(pid: int) -> str | None:
    """The `-c` argument of a running supervisord, read from /proc."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    for index, arg in enumerate(argv):  # noqa: B007 - index is read after the loop
        if os.path.basename(arg) == "supervisord" or arg == "supervisor.supervisord":
            break
    else:
        return None
    options = ServerOptions()
    try:
        # ServerOptions keeps the short options as a list ("c:", "n", ...); getopt wants one string.
        parsed, _ = getopt.getopt(argv[index + 1:], "".join(options.short_options), options.long_options)
    except getopt.GetoptError:
        return None
    for flag, value in parsed:
        if flag in ("-c", "--configuration"):
            path = os.path.join(cwd, value)
            return path if os.path.exists(path) else None
    return None


class _Reader(ServerOptions):
    """supervisor's ServerOptions, kept from failing on what the listener does not need."""

    parser: Any = None

    def process_groups_from_parser(self, parser):  # type: ignore[override]
        self.parser = parser  # the merged parser is otherwise a local of read_config
        return super().process_groups_from_parser(parser)

    def get_plugins(self, parser, factory_key, section_prefix):  # type: ignore[override]
        # rpcinterface plugins need not be installed in the listener's venv.
        return []

    def import_spec(self, spec):  # type: ignore[override]
        # Same for an eventlistener's result_handler module.
        try:
            return super().import_spec(spec)
        except (ImportError, AttributeError):
            return None

    def close_poller(self) -> None:
        with contextlib.suppress(Exception):
            self.poller.close()


_UNHOSED = supervisor_options.UnhosedConfigParser  # supervisor's own, before _case_preserving_meta_keys


class _MetaCaseParser(_UNHOSED):  # type: ignore[valid-type,misc]
    """Keeps the case of `meta.KEY` keys (Consul meta keys are case-sensitive)
    and of header names (sent as written): schema.CASE_KEPT.

    Every other key is lower-cased as supervisord does, so supervisord's own
    lookups behave exactly as in supervisord.  It also notes the sections of
    each file it reads: two sections of one name (say one in an [include]d
    file) are merged into one, and section_to_file then names only the first.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.file_sections: list[tuple[str, tuple[str, ...]]] = []  # (file, its sections), in reading order

    def optionxform(self, optionstr: str) -> str:
        for family in schema.CASE_KEPT:
            match = family.match(optionstr)
            if match:
                return match[1].lower() + match[2]
        return optionstr.lower()

    def read_file(self, f: Any, source: str | None = None) -> None:
        # supervisord reads its main file so, first and into an empty parser.
        super().read_file(f, source)
        self.file_sections.append((os.path.abspath(getattr(f, "name", source or "")), tuple(self.sections())))

    def read(self, filenames: Any, **kwargs: Any) -> list[str]:
        # ... and each [include]d file so, into the same parser: read it alone as well.
        for filename in [filenames] if isinstance(filenames, str) else filenames:
            self.file_sections.append((filename, _sections_of(filename)))
        return super().read(filenames, **kwargs)


def _include_dirs(options: _Reader, parser: Any, configfile: str) -> tuple[str, ...]:
    """The directories [include] files= globs in, expanded as supervisor does; for a
    pattern with wildcards in its directories, the deepest one without."""
    if not parser.has_option("include", "files"):
        return ()
    expansions = {"here": options.here, "host_node_name": platform.node(), **options.environ_expansions}
    try:
        patterns = expand(parser.get("include", "files"), expansions, "include.files").split()
    except ValueError:
        return ()
    dirs = set()
    for pattern in patterns:
        path = os.path.dirname(os.path.join(os.path.dirname(configfile), pattern))
        while glob.has_magic(path):
            path = os.path.dirname(path)
        dirs.add(os.path.normpath(path))
    return tuple(sorted(dirs))


def _sections_of(filename: str) -> tuple[str, ...]:
    alone = _UNHOSED()
    try:
        alone.read(filename)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return ()  # supervisor's own reading of it fails next, and says why
    return tuple(alone.sections())


@contextlib.contextmanager
def _case_preserving_meta_keys() -> Iterator[None]:
    original = supervisor_options.UnhosedConfigParser
    supervisor_options.UnhosedConfigParser = _MetaCaseParser  # type: ignore[misc]
    try:
        yield
    finally:
        supervisor_options.UnhosedConfigParser = original  # type: ignore[misc]


def _program_of(section: str) -> str:
    """The program a [consul:PROGRAM] or [consul:PROGRAM:KEY] section is for."""
    return section[len(SECTION_PREFIX):].split(":", 1)[0].strip()


def _key_of(section: str) -> str:
    """KEY of a further service's section [consul:PROGRAM:KEY]; "" for [consul:PROGRAM]."""
    _, _, key = section[len(SECTION_PREFIX):].partition(":")
    return key.strip()


def _service_of(section: str) -> tuple[str, str]:
    return _program_of(section), _key_of(section)


def _running(options: _Reader) -> dict[tuple[str, str], Any]:
    """(group, process) -> ProcessConfig of what supervisord runs.

    supervisord adds the groups in this (sorted) order and skips a name it
    already has (supervisord.py add_process_group), so of two groups of one
    name -- [group:g] and [group: g], or [group:web] and [program:web] --
    only the first runs.
    """
    running: dict[tuple[str, str], Any] = {}
    added: set[str] = set()
    for group in options.process_group_configs:
        if group.name not in added:
            added.add(group.name)
            running.update(((group.name, p.name), p) for p in group.process_configs)
    return running


def _ambiguous_sections(file_sections: list[tuple[str, tuple[str, ...]]]) -> dict[str, list[Problem]]:
    """section -> its problems, for every [consul:X] that shares its program with another one.

    [consul:web] and [consul: web] name the same program, and so do two
    [consul:web] in two files (the parser merges those, the later keys
    winning).  None of them is registered: either may be the one meant, and
    registering one would publish a port or check nobody chose; so they are
    left out like any other section with a problem, until one is left.
    """
    # (program, further service's key) -> (real path, section) -> (file, section), in reading order
    places: dict[tuple[str, str], dict[tuple[str, str], tuple[str, str]]] = {}
    for filename, sections in file_sections:
        for section in sections:
            if section.startswith(SECTION_PREFIX):
                # A file read twice (two include patterns matching it) merges into itself: no ambiguity.
                places.setdefault(_service_of(section), {}).setdefault((os.path.abspath(filename), section),
                                                                      (filename, section))
    ambiguous: dict[str, list[Problem]] = {}
    for (program, key), seen in places.items():
        where = list(seen.values())
        if len(where) < 2:
            continue
        service = f"program {program!r}" + (f", service {key!r}" if key else "")
        for filename, section in where:
            others = ", ".join(f"[{s}] in {f}" for f, s in where if (f, s) != (filename, section))
            ambiguous.setdefault(section, []).append(Problem(
                filename, section, None, None,
                f"another section is for {service} too: {others}; put the keys you mean "
                f"into one [consul:{program}{':' + key if key else ''}] section and remove the other"))
    return ambiguous


def _name_clashes(parser: Any, by_section: dict[str, list[ServiceSpec]], configfile: str) -> list[Problem]:
    """A problem for every section whose service name differs from another's only in case.

    Consul keeps `Web` and `web` as two services, but its DNS is
    case-insensitive and answers for both at once.  The same name in the same
    case is one service with several instances, which is what it is for.
    """
    spellings: dict[str, dict[str, list[str]]] = {}  # lower-case name -> spelling -> sections
    for section, specs in by_section.items():
        for name in dict.fromkeys(spec.name for spec in specs):
            spellings.setdefault(name.lower(), {}).setdefault(name, []).append(section)

    def where(section: str) -> str:
        return f"[{section}] in {parser.section_to_file.get(section, configfile)}"

    problems = []
    for names in spellings.values():
        if len(names) < 2:
            continue
        # Suggest the spelling most sections use already; on a tie, the lower-case one.
        fix = max(sorted(names, key=lambda n: (n != n.lower(), n)), key=lambda n: len(names[n]))
        for name, sections in names.items():
            others = ", ".join(f"{other!r} of {where(s)}" for other, more in names.items() if other != name
                               for s in more)
            for section in sections:
                given = parser.has_option(section, "name")
                problems.append(Problem(
                    parser.section_to_file.get(section, configfile), section, "name" if given else None, name,
                    f"service name {name!r}{'' if given else ' (the program name)'} differs only in case from "
                    f"{others}, and Consul DNS answers for both as one; spell them the same: "
                    f"name = {fix} in each section"))
    return problems


def _read_section(options: _Reader, parser: Any, section: str,
                  running: dict[tuple[str, str], Any]) -> tuple[list[ServiceSpec], list[Problem]]:
    program = _program_of(section)
    filename = parser.section_to_file.get(section, options.configfile)

    def problem(key: str | None, value: str | None, message: str) -> Problem:
        return Problem(filename, section, key, value, message)

    program_sections = _program_sections(parser, program)
    if not program_sections:
        return [], [problem(None, None, f"there is no [program:{program}] for this section; "
                                        f"name the section after a program")]
    if len(program_sections) > 1:
        defined = ", ".join(f"[{s}] in {parser.section_to_file.get(s, options.configfile)}"
                            for s in program_sections)
        return [], [problem(None, None, f"program {program!r} is defined {len(program_sections)} times "
                                        f"({defined}), so which one this section is for is unclear; "
                                        f"remove or rename all but one")]
    key = _key_of(section)
    if key and not SERVICE_KEY.match(key):
        return [], [problem(None, None, f"{key!r} cannot name a further service of {program!r}: write "
                                        f"[consul:{program}:KEY] with KEY of letters, digits, '-' or '_'")]
    program_section = program_sections[0]
    specs: list[ServiceSpec] = []
    problems: list[Problem] = []
    groups: list[str] = []
    try:
        groups = _groups_of(options, parser, program)
        for group, process, expansions, pconfig in _processes(options, parser, program, program_section,
                                                              groups, running):
            spec, found = spec_of(
                _Source(parser, section, expansions), program, key,
                namespec=make_namespec(group, process), group=group, process=process,
                exitcodes=tuple(pconfig.exitcodes), startsecs=float(pconfig.startsecs),
                environment=tuple(sorted((pconfig.environment or {}).items())), directory=pconfig.directory)
            problems.extend(p for p in (problem(f.key, f.value, f.message) for f in found) if p not in problems)
            if spec is not None:
                specs.append(spec)
    except Exception as exc:  # whatever supervisord accepted, no one section may stop the listener
        problems.append(problem(None, None, f"cannot be read: {short(exc)}"))
    if not specs and not problems:
        problems.append(problem(None, None, _runs_none(program_section, groups, running)))
    return specs, problems


@dataclass(frozen=True)
class _Source:
    """One section's values for one process, expanded by supervisor's parser with
    the expansions supervisord used for that process."""

    parser: Any
    section: str
    expansions: dict[str, Any]

    def options(self) -> list[str]:
        return self.parser.options(self.section)

    def raw(self, option: str) -> str:
        return self.parser.get(self.section, option)

    def expanded(self, option: str, port: int) -> str:
        return self.parser.saneget(self.section, option, expansions={**self.expansions, "port": port})


def _program_sections(parser: Any, program: str) -> list[str]:
    """The [program:*] and [fcgi-program:*] sections of one program name: supervisord
    strips the name, so [program:web] and [program: web] are both program web."""
    sections = []
    for section in parser.sections():
        kind, colon, name = section.partition(":")
        if colon and kind in PROGRAM_KINDS and name.strip() == program:
            sections.append(section)
    return sections


def _runs_none(program_section: str, groups: list[str], running: dict[tuple[str, str], Any]) -> str:
    taken = sorted({g for g, _ in running} & set(groups))
    if taken:
        return (f"supervisord runs no process of [{program_section}]: another section's group "
                f"{taken[0]!r} runs instead (of two groups of one name only the first runs); rename one")
    return (f"supervisord runs no process of [{program_section}]; "
            f"check its process_name and [group:*] programs=")


def _groups_of(options: _Reader, parser: Any, program: str) -> list[str]:
    """The groups supervisord runs a program in: every [group:*] that lists it,
    or else (never besides) a group of its own (options.py process_groups_from_parser)."""
    groups: list[str] = []
    for section in parser.sections():
        if section.startswith("group:"):
            programs = parser.saneget(section, "programs", "", expansions={"here": options.here})
            group = process_or_group_name(section.split(":", 1)[1])
            if program in list_of_strings(programs) and group not in groups:
                groups.append(group)
    return groups or [program]


def _processes(options: _Reader, parser: Any, program: str, program_section: str, groups: list[str],
               running: dict[tuple[str, str], Any]):
    """(group, process name, expansions, supervisor's ProcessConfig) of every process of a program
    in every group it is in, with the expansions supervisord used for that process (options.py
    _processes_from_section: the program's environment= before process_name)."""
    template = parser.saneget(program_section, "process_name", "%(program_name)s", do_expand=False)
    environment = parser.saneget(program_section, "environment", "", do_expand=False)
    for group in groups:
        # Each group has its own numprocs processes: %(group_name)s may differ.
        common = {"here": options.here, "program_name": program, "group_name": group,
                  "host_node_name": supervisor_options.platform.node()}
        numprocs = int(parser.saneget(program_section, "numprocs", "1", expansions=common))
        start = int(parser.saneget(program_section, "numprocs_start", "0", expansions=common))
        for process_num in range(start, start + numprocs):
            expansions = {**common, "process_num": process_num, "numprocs": numprocs,
                          **options.environ_expansions}
            program_env = dict_of_key_value_pairs(expand(environment, expansions, "environment"))
            expansions.update({f"ENV_{k}": v for k, v in program_env.items()})
            name = process_or_group_name(expand(template, expansions, "process_name"))
            pconfig = running.get((group, name))
            if pconfig is not None:
                yield group, name, expansions, pconfig
