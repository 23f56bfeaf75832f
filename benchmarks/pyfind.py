"""Find a Python >= 3.12 for the reference venv (ewms-pilot 1.0.5 needs it).

pyenv shims on PATH exist for versions that are not selected and fail when
run, so every candidate is *run* before it is trusted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

MIN_VERSION = (3, 12)
#: tried first: the reference and `htcondor<25` are known to install on these
PREFERRED = ("3.12", "3.13")


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        res = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = res.stdout.split()
    if res.returncode != 0 or len(parts) != 2:
        return None
    return int(parts[0]), int(parts[1])


def _pyenv_roots() -> Iterator[Path]:
    if root := os.environ.get("PYENV_ROOT"):
        yield Path(root)
    yield Path.home() / ".pyenv"
    yield Path("/root/.pyenv")


def _candidates() -> Iterator[str]:
    for minor in PREFERRED:
        if found := shutil.which(f"python{minor}"):
            yield found
    for root in _pyenv_roots():
        versions = root / "versions"
        if not versions.is_dir():
            continue
        for minor in PREFERRED:
            for vdir in sorted(versions.glob(f"{minor}.*"), reverse=True):
                exe = vdir / "bin" / f"python{minor}"
                if exe.is_file():
                    yield str(exe)
    for minor in PREFERRED:
        for prefix in ("/usr/local/bin", "/usr/bin"):
            yield f"{prefix}/python{minor}"
    if found := shutil.which("python3"):
        yield found


def find_python(min_version: tuple[int, int] = MIN_VERSION) -> tuple[str, tuple[int, int]]:
    """The first working interpreter >= `min_version` (3.12 preferred) and its version."""
    seen: set[str] = set()
    for cand in _candidates():
        if cand in seen:
            continue
        seen.add(cand)
        version = _version_of(cand)
        if version is not None and version >= min_version:
            return cand, version
    raise RuntimeError(
        f"no Python >= {min_version[0]}.{min_version[1]} found "
        "(tried python3.12/python3.13 on PATH, pyenv versions, /usr/bin, /usr/local/bin)"
    )
