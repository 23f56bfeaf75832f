"""The chirp code imports and quotes the same way under htcondor 24 as under 25 (the venv's).

ewms-pilot 1.0.5 fails to import with htcondor 25; ours must work with both.
A second venv with `htcondor<25` is built once under .test-env/ and reused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".test-env" / "htcondor24"

PROBE = r"""
import json, sys
try:
    import htcondor2 as htcondor
except ImportError:
    import htcondor
from ewms_pilot.chirp.encoding import fallback_classad_quote, _library_quote
from ewms_pilot.chirp import ChirpReporter
samples = ["Tasking", 'quote " and \\ back', "line\nbreak", "ünïcödé ✓", "tab\there"]
quote = _library_quote()
print(json.dumps({
    "version": htcondor.version(),
    "library": quote is not None,
    "quoted": [quote(s) for s in samples] if quote else None,
    "fallback": [fallback_classad_quote(s) for s in samples],
}))
"""


@pytest.mark.slow
def test_chirp_quoting_agrees_across_htcondor_24_and_25(tmp_path: Path) -> None:
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "htcondor>=24,<25", "htchirp", "oms-mqclient"], check=True, timeout=600)
    results = {}
    for name, python in (("24", VENV / "bin" / "python"), ("25", Path(sys.executable))):
        out = subprocess.run(
            [str(python), "-c", PROBE], capture_output=True, text=True, cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        import json

        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["24"]["version"].startswith("$CondorVersion: 24")
    assert results["25"]["version"].startswith("$CondorVersion: 25")
    assert results["24"]["library"] and results["25"]["library"]
    assert results["24"]["quoted"] == results["25"]["quoted"] == results["25"]["fallback"]
