"""The README states facts the code defines: keep them from drifting apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ewms_pilot.exitcodes import ExitCode

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "examples").rglob("README.md"))]


def _section(text: str, title: str) -> str:
    """The body of the `## title` section (up to the next `## `)."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def test_readme_exit_code_table_matches_exitcode() -> None:
    body = _section(README.read_text(), "Exit codes")
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([A-Z_]+)`\s*\|\s*(.+?)\s*\|\s*$", body, re.MULTILINE)
    assert rows, "no table rows found in '## Exit codes'"
    assert [(int(code), name) for code, name, _ in rows] == [(m.value, m.name) for m in ExitCode]
    assert all(meaning for _, _, meaning in rows)


def _links(path: Path) -> list[str]:
    text = path.read_text()
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(doc: Path) -> None:
    missing = []
    for target in _links(doc):
        rel = target.split("#", 1)[0]
        if rel and not (doc.parent / rel).exists():
            missing.append(target)
    assert missing == []


def test_paths_in_readme_commands_exist() -> None:
    """`bash examples/x/run.sh` in a README code block must name a file that is there."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks
    named = {
        p.rstrip(".,;:")
        for block in blocks
        for p in re.findall(r"(?<![\w/.-])((?:scripts|examples|container|docs)/[\w./-]+)", block)
    }
    assert named, "no repository paths in the README's commands"
    assert sorted(p for p in named if not (REPO / p).exists()) == []
