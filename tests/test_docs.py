"""The docs say what the code declares, and hold together.

- docs/reference.md's key table is made from schema.KEYS and its commands and
  options from cli.parser() (scripts/docs-keys writes both); the meta keys it
  reserves are the ones schema reserves.
- docs/operations.md's HAProxy configuration is the one tests/test_haproxy.py runs.
- Every relative link in README.md and docs/*.md points at a file (and heading)
  that exists, and no doc points outside the repository.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import re

import pytest

from supervisor_consul import schema
from tests import haproxy
from tests.harness import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
REFERENCE = DOCS / "reference.md"
OPERATIONS = DOCS / "operations.md"
RELIABILITY = DOCS / "reliability.md"
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]


def docs_keys():
    path = str(REPO_ROOT / "scripts" / "docs-keys")  # no .py: a script, so its loader is named
    spec = importlib.util.spec_from_loader("docs_keys", importlib.machinery.SourceFileLoader("docs_keys", path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- generated blocks

def test_the_reference_key_table_is_the_declaration():
    text = REFERENCE.read_text()
    assert text.count(docs_keys().BEGIN) == 1 and text.count(docs_keys().END) == 1
    assert docs_keys().rewritten(text) == text, "docs/reference.md's key table drifted from schema.KEYS: run scripts/docs-keys"


def test_the_reference_options_are_the_command_line_parser():
    text = REFERENCE.read_text()
    module = docs_keys()
    assert text.count(module.OPTIONS_BEGIN) == 1 and text.count(module.OPTIONS_END) == 1
    assert module.rewritten_options(text) == text, \
        "docs/reference.md's commands and options drifted from cli.parser(): run scripts/docs-keys"


def test_the_reference_has_every_command_and_option():
    """Belt and braces: the generated block names each command and each option string."""
    import argparse

    from supervisor_consul import cli
    text = REFERENCE.read_text()
    subparsers = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        assert f"### `supervisor-consul {name}`" in text
        assert f"| `{name}`" in text, f"the exit codes table has no row for {name}"
        for action in command._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text, f"{name} {flag} is not in docs/reference.md"


def test_the_reference_names_every_reserved_meta_key():
    text = REFERENCE.read_text()
    for key in schema.RESERVED_META:
        assert f"`{key}`" in text


# ---------------------------------------------------------------- tested snippets

def fenced_after(text: str, marker: str) -> str:
    """The first fenced block after the marker line."""
    _, found, rest = text.partition(marker)
    assert found, f"no {marker!r}"
    match = re.search(r"^```[a-z]*\n(.*?)^```$", rest, re.MULTILINE | re.DOTALL)
    assert match, f"no fenced block after {marker!r}"
    return match.group(1)


HAPROXY_MARKER = "<!-- tested: tests/haproxy.py config_text(), checked by tests/test_docs.py -->"
# The addresses docs/operations.md shows: Consul's DNS on its default port,
# the frontend on 8080, the admin socket on 9999, up to 5 instances of web.
HAPROXY_AS_SHOWN = dict(service="web", dns_port=8600, port=8080, stats_port=9999, servers=5)


def test_the_haproxy_snippet_is_the_tested_configuration():
    shown = fenced_after(OPERATIONS.read_text(), HAPROXY_MARKER)
    assert shown == haproxy.config_text(**HAPROXY_AS_SHOWN), \
        "docs/operations.md's HAProxy block differs from tests/haproxy.py's config_text()"
    assert "allow-dup-ip" in shown and "server-template" in shown


def test_the_dnsmasq_snippet_is_the_tested_line():
    """tests/test_dns.py runs dnsmasq with `server=/consul/127.0.0.1#PORT`."""
    shown = fenced_after(OPERATIONS.read_text(), "/etc/dnsmasq.d/10-consul")
    assert shown == "server=/consul/127.0.0.1#8600\n"
    assert "server=/consul/" in (REPO_ROOT / "tests" / "test_dns.py").read_text()


def test_the_prometheus_snippet_is_the_tested_sample():
    """tests/test_metrics.py runs a real Prometheus on etc/prometheus.yml.sample; the doc shows that file."""
    text = OPERATIONS.read_text()
    begin, end = "<!-- snippet: etc/prometheus.yml.sample -->\n", "<!-- /snippet -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    block = text.partition(begin)[2].partition(end)[0]
    sample = (REPO_ROOT / "etc" / "prometheus.yml.sample").read_text()
    assert block == f"```yaml\n{sample}```\n", "docs/operations.md's Prometheus block drifted from the sample"


def test_the_reliability_table_has_its_markers():
    from tests import conftest
    text = RELIABILITY.read_text()
    assert text.count(conftest.FAULT_DOC_BEGIN) == 1 and text.count(conftest.FAULT_DOC_END) == 1
    block = text.partition(conftest.FAULT_DOC_BEGIN + "\n")[2].partition(conftest.FAULT_DOC_END)[0]
    assert conftest.fault_table([])[0] in block.splitlines(), "no fault table between the markers"
    # Writing the same lines back gives the same file: the rewrite touches only the block.
    assert conftest.with_fault_table(text, block.splitlines()) == text


# ---------------------------------------------------------------- links

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(path) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path) -> list[str]:
    found = []
    for line in prose(path):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        found += LINK.findall(line)
    return found


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(path):
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(target)
            continue
        if REPO_ROOT.resolve() not in (resolved, *resolved.parents):
            broken.append(f"{target} (outside the repository)")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.name}: broken links {broken}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_doc_points_outside_the_repository(path):
    """Every relative path a doc names, linked or not, is a file of the repository: a reader
    of the package has nothing beside it."""
    import re
    outside = [named for named in re.findall(r"(?<![\w/.])(?:\.\./)+[\w./-]*\w", path.read_text())
               if REPO_ROOT.resolve() not in (resolved := (path.parent / named).resolve(), *resolved.parents)
               or not resolved.exists()]
    assert not outside, f"{path.name} names paths outside the repository: {outside}"


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    for command in ("make demo", "make test"):
        assert command in text
    for doc in ("docs/reference.md", "docs/operations.md", "docs/design.md", "docs/reliability.md",
                "docs/performance.md", "docs/coming-from-ianitor.md", "docs/troubleshooting.md"):
        assert f"]({doc}" in text, f"README.md does not link {doc}"
