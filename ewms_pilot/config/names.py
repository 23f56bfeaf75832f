"""Unknown `EWMS_PILOT_*` names: one warning each, refused only where it matters.

Job environments carry stale names (1.x's own CI sets `EWMS_PILOT_TIMEOUT_INCOMING`,
which no version reads), so a drop-in pilot must not die on one. A name is
refused (exit 2) only when it misspells a variable that is then unset and whose
default would silently do harm (`EnvVar.misspelling_refused` says what), or with
`EWMS_PILOT_STRICT_CONFIG=true`. A value is never shown: a misnamed variable may
hold a secret.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping

from ..errors import ConfigError
from .redact import MASK
from .variables import BY_NAME, PREFIXES, EnvVar

LOGGER = logging.getLogger(__name__)

# how close an unknown name must be to a known one to be called a typo (difflib ratio)
_TYPO_CUTOFF_SUFFIX = 0.8  # comparing the part after `EWMS_PILOT_`
_TYPO_CUTOFF_FULL = 0.9  # comparing whole names (typo in the prefix itself)


def suggest(key: str) -> EnvVar | None:
    """The known variable `key` is probably a misspelling of, if any."""
    upper = key.upper()
    if upper in BY_NAME:  # wrong case only
        return BY_NAME[upper]
    for prefix in PREFIXES:
        if upper.startswith(prefix):
            suffixes = {n[len(prefix) :]: n for n in BY_NAME if n.startswith(prefix)}
            hits = difflib.get_close_matches(
                upper[len(prefix) :], suffixes, n=1, cutoff=_TYPO_CUTOFF_SUFFIX
            )
            if hits:
                return BY_NAME[suffixes[hits[0]]]
    hits = difflib.get_close_matches(upper, BY_NAME, n=1, cutoff=_TYPO_CUTOFF_FULL)
    return BY_NAME[hits[0]] if hits else None


def unknown_names(environ: Mapping[str, str]) -> list[str]:
    """Names that look meant for the pilot but are not one of its variables, sorted."""
    out = []
    for key in sorted(environ):
        if key in BY_NAME or "EWMS" not in key.upper():
            continue
        if key.upper().startswith(PREFIXES) or suggest(key) is not None:
            out.append(key)
    return out


def check_unknown_names(environ: Mapping[str, str], given: Collection[str], *, strict: bool) -> None:
    """One warning per unknown name; raise `ConfigError` where the name must not be ignored.

    `given`: current names of the variables that are set (a misspelling of a set
    variable loses nothing).
    """
    for key in unknown_names(environ):
        known = suggest(key)
        hint = f" (did you mean {known.name}?)" if known else ""
        if strict:
            raise ConfigError(
                key, MASK, f"a known variable name{hint}; EWMS_PILOT_STRICT_CONFIG=true refuses others"
            )
        if known is not None and known.misspelling_refused and known.name not in given:
            raise ConfigError(
                key,
                MASK,
                f"a known variable name (did you mean {known.name}? unset, it would "
                f"{known.misspelling_refused})",
            )
        LOGGER.warning(
            "Ignoring unknown variable %s%s (see `ewms-pilot config --list`)", key, hint
        )
