"""The reference pilot, ewms-pilot 1.0.5, in its own venv (created once, reused after).

Installed from PyPI with `htcondor<25` (1.0.5 does not import with htcondor 25).
A marker file records what was installed; a venv whose marker or import check
does not match is rebuilt, so the step is idempotent and self-repairing.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from .pyfind import find_python

REF_VERSION = "1.0.5"
REF_REQUIREMENTS = (f"ewms-pilot[rabbitmq]=={REF_VERSION}", "htcondor<25")
DEFAULT_VENV = Path(__file__).resolve().parent / ".venvs" / "ref"
MARKER = ".benchmarks-ref.json"


class ReferenceInstallError(RuntimeError):
    """The reference could not be installed; the message names the failing step."""


def _imported_version(python: Path) -> str | None:
    """1.0.5's version as *its* interpreter sees it (run outside the repo, so ours is not on sys.path)."""
    with tempfile.TemporaryDirectory() as cwd:
        res = subprocess.run(
            [str(python), "-c", "import ewms_pilot, htcondor; print(ewms_pilot.__version__)"],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=120,
            check=False,
            env={"PATH": "/usr/bin:/bin"},
        )
    return res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else None


def _run_step(argv: list[str], what: str, log: Path) -> None:
    with log.open("a") as f:
        f.write(f"$ {argv}\n")
        f.flush()
        res = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=1800, check=False)
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ReferenceInstallError(f"{what} failed (exit {res.returncode}); log {log}:\n{tail}")


def ensure_reference(venv: Path = DEFAULT_VENV) -> Path:
    """Return the reference venv's python, installing ewms-pilot 1.0.5 there first if needed."""
    python = venv / "bin" / "python"
    marker = venv / MARKER
    wanted = {"requirements": list(REF_REQUIREMENTS)}
    if python.exists() and marker.exists():
        try:
            recorded = json.loads(marker.read_text())
        except ValueError:
            recorded = None
        if recorded == wanted and _imported_version(python) == REF_VERSION:
            return python
    base, version = find_python()
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "ref-install.log"
    log.write_text(f"base interpreter: {base} ({version[0]}.{version[1]})\n")
    _run_step([base, "-m", "venv", "--clear", str(venv)], "creating the venv", log)
    _run_step(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REF_REQUIREMENTS],
        "pip install " + " ".join(REF_REQUIREMENTS),
        log,
    )
    got = _imported_version(python)
    if got != REF_VERSION:
        raise ReferenceInstallError(f"installed reference imports as version {got!r}, not {REF_VERSION}")
    marker.write_text(json.dumps(wanted))
    return python
