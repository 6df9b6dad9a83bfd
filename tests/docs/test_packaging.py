"""What a pip user gets besides the code: type information (py.typed), the
project's addresses, and docstrings that point to the docs by address, not by
a docs/*.md path that an installed package does not have."""

from __future__ import annotations

import re

import pytest

import conveyor
from tests.docs.snippets import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_py_typed_ships_and_the_urls_are_set():
    assert (ROOT / "conveyor" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["conveyor"]
    urls = PYPROJECT["project"]["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    assert conveyor.DOCS_URL == urls["Documentation"]


def test_docstrings_name_the_docs_by_address():
    docs = PYPROJECT["project"]["urls"]["Documentation"]
    bad = []
    for path in sorted((ROOT / "conveyor").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"[\w:/.-]*docs/([\w-]+)\.md", text):
            where = f"{path.relative_to(ROOT)}: {m.group(0)}"
            if not m.group(0).startswith(docs):
                bad.append(f"{where} (a path pip users lack; write {docs}{m.group(1)}.md)")
            elif not (ROOT / "docs" / f"{m.group(1)}.md").is_file():
                bad.append(f"{where} (no such page)")
    assert not bad, "\n".join(bad)
