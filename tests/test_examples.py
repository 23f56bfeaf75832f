"""Every example under examples/ does what its README says, run exactly as documented."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ewms_pilot.config.variables import BY_NAME
from ewms_pilot.exitcodes import ExitCode

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
WORD_COUNT = EXAMPLES / "tasks" / "word_count.py"


def _run_example(script: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")} | env
    # the `ewms-pilot` of the interpreter running the tests comes first on PATH
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(script)], env=full, capture_output=True, text=True, timeout=timeout, check=False
    )


def _json_lines(stdout: str) -> list[object]:
    """The results `ewms-pilot queue get` printed (one JSON value per line, after the pilot's summary)."""
    out = []
    for line in stdout.splitlines():
        if line.startswith(("{", '"', "[")):
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------- the task itself


@pytest.mark.parametrize(
    ("infile_name", "content", "outfile_name", "expected"),
    [
        ("e.in", "the cat and the dog\n", "r.json",
         {"words": 5, "lines": 1, "chars": 20, "top": [["the", 2], ["and", 1], ["cat", 1]]}),
        ("e.in", "the cat and the dog", "r.out", "words=5 lines=1 chars=19"),
        # a string event goes to a .json infile verbatim; a list of strings as JSON
        ("e.json", "plain words here", "r.txt", "words=3 lines=1 chars=16"),
        ("e.json", '["one line", "two lines"]', "r.txt", "words=4 lines=2 chars=18"),
    ],
)  # fmt: skip
def test_word_count_reads_infile_and_writes_outfile(
    tmp_path: Path, infile_name: str, content: str, outfile_name: str, expected: object
) -> None:
    infile, outfile = tmp_path / infile_name, tmp_path / outfile_name
    infile.write_text(content)
    res = subprocess.run(
        [sys.executable, str(WORD_COUNT), str(infile), str(outfile)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = json.loads(outfile.read_text()) if outfile.suffix == ".json" else outfile.read_text()
    assert got == expected


def test_word_count_uses_env_paths_and_data_hub_stopwords(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "stopwords.txt").write_text("the\nand\n")
    (tmp_path / "in.txt").write_text("the cat and the dog")
    env = os.environ | {
        "EWMS_TASK_INFILE": str(tmp_path / "in.txt"),
        "EWMS_TASK_OUTFILE": str(tmp_path / "out.json"),
        "EWMS_TASK_DATA_HUB_DIR": str(hub),
    }
    res = subprocess.run(
        [sys.executable, str(WORD_COUNT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out.json").read_text())["top"] == [["cat", 1], ["dog", 1]]


def test_failing_task_is_nacked_and_stops_the_pilot(tmp_path: Path) -> None:
    """README "For task authors": a non-zero exit nacks the event, and the pilot exits 3."""
    db = tmp_path / "q.db"
    pilot = [sys.executable, "-m", "ewms_pilot"]
    broker = ["--broker-type", "local", "--broker-address", str(db)]
    put = subprocess.run(
        [*pilot, "queue", "put", *broker, "--queue", "in"],
        input="good words\nbad words\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")} | {
        "EWMS_PILOT_QUEUE_INCOMING": "in",
        "EWMS_PILOT_QUEUE_OUTGOING": "out",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "local",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": str(db),
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": str(db),
        "EWMS_PILOT_CONTAINER_PLATFORM": "process",
        "EWMS_PILOT_TASK_ARGS": f"{shlex.quote(sys.executable)} {shlex.quote(str(WORD_COUNT))} <<INFILE>> <<OUTFILE>>",
        "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"WORD_COUNT_FAIL_ON": "bad"}),
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp_path),
    }
    run = subprocess.run(
        [*pilot, "run", "--no-progress"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == ExitCode.TASK_FAILED, run.stderr[-3000:]
    assert "event contains the word 'bad'" in run.stderr
    got = subprocess.run(
        [*pilot, "queue", "get", *broker, "--queue", "out", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert _json_lines(got.stdout) == ["words=2 lines=1 chars=10"]
    counts = subprocess.run(
        [*pilot, "queue", "count", "--json", *broker, "--queue", "in"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(counts.stdout)["ready"] == 1  # the failed event is back in the queue


# --------------------------------------------------------------------------- run scripts


def test_local_example(tmp_path: Path) -> None:
    res = _run_example(EXAMPLES / "local" / "run.sh", {"WORK_DIR": str(tmp_path)}, timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(_json_lines(res.stdout)) == sorted(
        ["words=9 lines=1 chars=43", "words=4 lines=2 chars=22", "words=1 lines=1 chars=5"]
    )


@pytest.mark.slow
@pytest.mark.podman
@pytest.mark.rabbitmq
def test_rabbitmq_podman_example(
    tmp_path: Path, podman_image: str, rabbitmq_address: str, queue_name: str
) -> None:
    env = {
        "WORK_DIR": str(tmp_path),
        "BROKER_ADDRESS": rabbitmq_address,
        "QUEUE_IN": f"{queue_name}-in",
        "QUEUE_OUT": f"{queue_name}-out",
    }
    res = _run_example(EXAMPLES / "rabbitmq-podman" / "run.sh", env)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(_json_lines(res.stdout), key=json.dumps) == sorted(
        [
            {"words": 9, "lines": 1, "chars": 43, "top": [["the", 2], ["brown", 1], ["dog", 1]]},
            {"words": 10, "lines": 1, "chars": 39, "top": [["be", 2], ["to", 2], ["is", 1]]},
            {"words": 6, "lines": 1, "chars": 22, "top": [["the", 2], ["cat", 1], ["mat", 1]]},
        ],
        key=json.dumps,
    )


@pytest.mark.slow
@pytest.mark.podman
def test_init_container_example(tmp_path: Path, podman_image: str) -> None:
    res = _run_example(EXAMPLES / "init-container" / "run.sh", {"WORK_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-4000:]
    hub = tmp_path / "ewms-pilot-data" / "data-hub"
    assert "the" in (hub / "stopwords.txt").read_text().split()
    # the stopwords the init container wrote are missing from `top`
    assert sorted(_json_lines(res.stdout), key=json.dumps) == sorted(
        [
            {"words": 5, "lines": 1, "chars": 19, "top": [["cat", 1], ["hat", 1]]},
            {"words": 9, "lines": 1, "chars": 33, "top": [["what", 1]]},
        ],
        key=json.dumps,
    )


# --------------------------------------------------------------------------- HTCondor


HTCONDOR = EXAMPLES / "htcondor"
_EXPORT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)


def test_htcondor_submit_description_parses_and_matches_the_image() -> None:
    import htcondor2

    sub = htcondor2.Submit((HTCONDOR / "pilot.sub").read_text())
    assert sub.getQArgs().strip() == "4"  # the queue statement parses ...
    assert sub.itemdata() is None  # ... and has no item list to read
    assert sub["universe"] == "container"
    assert sub["container_image"]
    assert sub["MY.WantIOProxy"] == "true"
    assert sub["should_transfer_files"] == "YES"
    assert sub["when_to_transfer_output"] == "ON_EXIT_OR_EVICT"
    assert sub["transfer_executable"] == "false"
    inputs = [f.strip() for f in sub["transfer_input_files"].split(",")]
    assert "ewms_htcondor_envfile.sh" in inputs
    for name in inputs:
        assert (HTCONDOR / name).is_file(), name
    # the executable is where the Dockerfile installs the entrypoint
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"COPY container/entrypoint.sh {sub['executable']}\n" in dockerfile
    # the hold policy is a valid ClassAd expression on the pilot's config-error code
    import classad2

    expr = classad2.ExprTree(sub["on_exit_hold"])
    ad = classad2.ClassAd({"ExitBySignal": False, "ExitCode": int(ExitCode.CONFIG)})
    assert expr.eval(ad) is True
    ad["ExitCode"] = int(ExitCode.OK)
    assert expr.eval(ad) is False


def test_htcondor_envfile_sets_only_known_pilot_variables() -> None:
    text = (HTCONDOR / "ewms_htcondor_envfile.sh").read_text()
    names = _EXPORT.findall(text)
    assert len(names) >= 10
    unknown = [n for n in names if n not in BY_NAME]
    assert unknown == []
    # and the pilot accepts the whole file (sourced by bash, as the entrypoint does)
    res = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; exec "$2" -m ewms_pilot config --check', "check",
         str(HTCONDOR / "ewms_htcondor_envfile.sh"), sys.executable],
        env={k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN=***" in res.stdout
    assert "REPLACE-ME" not in res.stdout
