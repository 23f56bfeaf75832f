"""A task's argv and env: split the configured args, then fill in its file paths.

Args are split first and substituted after, so a path with spaces stays one
argument; nothing here ever goes through a shell.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping, Sequence

ENV_INFILE = "EWMS_TASK_INFILE"
ENV_OUTFILE = "EWMS_TASK_OUTFILE"
ENV_DATA_HUB = "EWMS_TASK_DATA_HUB_DIR"

#: placeholder → which value replaces it (the `{{...}}` spellings are from 1.x)
PLACEHOLDERS: Mapping[str, str] = {
    "<<INFILE>>": "infile",
    "<<OUTFILE>>": "outfile",
    "<<DATA_HUB>>": "data_hub",
    "{{INFILE}}": "infile",
    "{{IN_FILE}}": "infile",
    "{{OUTFILE}}": "outfile",
    "{{OUT_FILE}}": "outfile",
    "{{DATA_HUB}}": "data_hub",
    "{{DATAHUB}}": "data_hub",
}
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))

_SHLEX_HINTS = {
    "No closing quotation": "a quote is not closed",
    "No escaped character": "the args end with a lone backslash",
}


def split_args(args: str) -> list[str]:
    """Split a configured args string like a POSIX shell would (quotes, backslashes).

    Raises `ValueError` with a one-line reason for unbalanced quoting; the
    caller reports it as a config error.
    """
    return list(_split(args))


@functools.lru_cache(maxsize=16)
def _split(args: str) -> tuple[str, ...]:
    """Remembered: every one-shot event splits the same configured args, and `shlex` is slow Python."""
    try:
        return tuple(shlex.split(args, posix=True))
    except ValueError as e:
        hint = _SHLEX_HINTS.get(str(e), str(e))
        raise ValueError(
            f"cannot split into arguments: {hint} (quote as in a POSIX shell: 'a b' or \"a b\")"
        ) from None


def substitute(argv: Sequence[str], *, infile: str, outfile: str, data_hub: str) -> list[str]:
    """Replace every placeholder anywhere inside each argument (e.g. `--in=<<INFILE>>`).

    One pass: a substituted value that itself looks like a placeholder stays as is.
    """
    values = {"infile": infile, "outfile": outfile, "data_hub": data_hub}
    return [_PLACEHOLDER_RE.sub(lambda m: values[PLACEHOLDERS[m.group(0)]], arg) for arg in argv]


def task_env(
    base_env: Mapping[str, str], *, infile: str, outfile: str, data_hub: str
) -> dict[str, str]:
    """The configured task env plus this run's file paths (which win over the config)."""
    env = dict(base_env)
    env[ENV_INFILE] = infile
    env[ENV_OUTFILE] = outfile
    env[ENV_DATA_HUB] = data_hub
    return env
