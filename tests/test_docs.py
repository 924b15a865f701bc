"""The README says what the code declares: the key table is made from
schema.KEYS, and the meta keys it reserves are the ones schema reserves."""
from __future__ import annotations

import importlib.machinery
import importlib.util

from supervisor_consul import schema
from tests.harness import REPO_ROOT

README = REPO_ROOT / "README.md"


def docs_keys():
    path = str(REPO_ROOT / "scripts" / "docs-keys")  # no .py: a script, so its loader is named
    spec = importlib.util.spec_from_loader("docs_keys", importlib.machinery.SourceFileLoader("docs_keys", path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_key_table_is_the_declaration():
    text = README.read_text()
    assert text.count(docs_keys().BEGIN) == 1
    assert docs_keys().rewritten(text) == text, "README.md's key table drifted from schema.KEYS: run scripts/docs-keys"


def test_the_readme_names_every_reserved_meta_key():
    text = README.read_text()
    for key in schema.RESERVED_META:
        assert f"`{key}`" in text
