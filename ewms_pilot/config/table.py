"""The env-var reference as Markdown, generated from `variables.VARIABLES`.

`ewms-pilot config --list` prints it and README.md embeds it between markers,
so the documentation cannot drift from what the loader accepts.
"""

from __future__ import annotations

from pathlib import Path

from .variables import VARIABLES, EnvVar

START_MARKER = "<!-- env-table:start -->"
END_MARKER = "<!-- env-table:end -->"
MISSING_MARKERS = "README.md missing the env-table markers"


def _cell(text: str) -> str:
    """Table-safe text: `|` would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _default(var: EnvVar) -> str:
    if var.default_doc is not None:
        return var.default_doc
    return f"`{var.default}`" if var.default else "empty"


def _meaning(var: EnvVar) -> str:
    notes = []
    if var.old_names:
        notes.append("old name: " + ", ".join(f"`{n}`" for n in var.old_names))
    if var.secret:
        notes.append("secret: never logged")
    return var.help + (f" ({'; '.join(notes)})" if notes else "")


def env_var_table_markdown() -> str:
    """`| Variable | Default | Meaning |`, one row per variable in table order (ends with a newline)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for var in VARIABLES:
        rows.append(f"| `{var.name}` | {_cell(_default(var))} | {_cell(_meaning(var))} |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str) -> str:
    """`text` with the generated table between the markers; ValueError if they are missing."""
    start = text.find(START_MARKER)
    end = text.find(END_MARKER, start + len(START_MARKER)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(MISSING_MARKERS)
    head = text[: start + len(START_MARKER)]
    return f"{head}\n{env_var_table_markdown()}{text[end:]}"


def update_readme(path: Path) -> bool:
    """Rewrite the table between the markers in `path`; True if the file changed.

    Raises ValueError("README.md missing the env-table markers") when the markers are absent.
    """
    old = path.read_text(encoding="utf-8")
    new = readme_with_table(old)
    if new == old:
        return False
    path.write_text(new, encoding="utf-8")
    return True
