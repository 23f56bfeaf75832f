"""The README and docs state facts the code defines: keep them from drifting apart.

"What it says runs, as written, on a fresh machine": names, paths, options and
the cheap example commands of README.md, docs/*.md, the examples' READMEs and
benchmarks/README.md are checked against the code, and those commands are run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import ewms_pilot
from ewms_pilot.cli.main import _parser as cli_parser
from ewms_pilot.cli.queue_cmd import DEFAULT_TOKEN_ENV
from ewms_pilot.config.variables import VARIABLES
from ewms_pilot.exitcodes import ExitCode

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [
    README,
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "examples").rglob("README.md")),
    REPO / "benchmarks" / "README.md",
]
_IDS = {"ids": lambda p: str(p.relative_to(REPO))}


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


@pytest.mark.parametrize("doc", DOCS, **_IDS)
def test_relative_links_point_to_existing_files(doc: Path) -> None:
    missing = []
    for target in _links(doc):
        rel = target.split("#", 1)[0]
        if rel and not (doc.parent / rel).exists():
            missing.append(target)
    assert missing == []


def _code_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```(?:bash|sh)\n(.*?)^```", doc.read_text(), re.DOTALL | re.MULTILINE)


def test_paths_in_readme_commands_exist() -> None:
    """`bash examples/x/run.sh` in a README code block must name a file that is there."""
    blocks = _code_blocks(README)
    assert blocks
    named = {
        p.rstrip(".,;:")
        for block in blocks
        for p in re.findall(r"(?<![\w/.-])((?:scripts|examples|container|docs)/[\w./-]+)", block)
    }
    assert named, "no repository paths in the README's commands"
    assert sorted(p for p in named if not (REPO / p).exists()) == []


# --------------------------------------------------------------------------- names the docs use


@pytest.mark.parametrize("doc", DOCS, **_IDS)
def test_named_tests_exist(doc: Path) -> None:
    """"X is tested by `tests/t.py::test_y`" / "`test_y`": the file and the test function are there."""
    text = doc.read_text()
    defined = {
        name
        for path in (REPO / "tests").rglob("*.py")
        for name in re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE)
    }
    missing = []
    for path, func in re.findall(r"(tests/[\w/.-]+\.py)(?:::(\w+))?", text):
        if not (REPO / path).is_file():
            missing.append(path)
        elif func and not re.search(rf"^\s*(?:async )?def {func}\(", (REPO / path).read_text(), re.MULTILINE):
            missing.append(f"{path}::{func}")
    missing += [name for name in re.findall(r"`(test_\w+)`", text) if name not in defined]
    assert missing == []


#: `EWMS_PILOT_*` names the docs mention that are not pilot settings, each for a reason
NOT_SETTINGS = {
    DEFAULT_TOKEN_ENV: "`ewms-pilot queue`'s auth-token variable (docs/local-queue.md)",
    "EWMS_PILOT_TIMEOUT_INCOMING": "README's example of a stale 1.x name that only gets a warning",
}


@pytest.mark.parametrize("doc", DOCS, **_IDS)
def test_every_pilot_variable_the_docs_name_exists(doc: Path) -> None:
    settings = {name for var in VARIABLES for name in var.names}
    assert not settings & set(NOT_SETTINGS)  # the exceptions above hide no real setting
    named = set(re.findall(r"\b_?EWMS_PILOT_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
    assert sorted(named - settings - set(NOT_SETTINGS)) == []


def test_architecture_lists_every_module() -> None:
    """docs/architecture.md's tree names each module of each package, and only modules that exist."""
    tree = re.search(r"```\newms_pilot/\n(.*?)```", (REPO / "docs" / "architecture.md").read_text(), re.DOTALL)
    assert tree
    listed: dict[str, set[str]] = {}
    package = ""
    for line in tree.group(1).splitlines():
        if m := re.match(r"  (\w+)/ ", line):
            package, line = m.group(1), line[m.end():]
        elif re.match(r"  \w+\.py", line):
            package = ""
        listed.setdefault(package, set()).update(re.findall(r"\b(\w+)\.py\b", line))
    src = REPO / "ewms_pilot"
    packages = {"", *(p.name for p in src.iterdir() if (p / "__init__.py").is_file())}
    assert set(listed) == packages
    for package, names in listed.items():
        present = {p.stem for p in (src / package).glob("*.py")} - {"__init__", "__main__"}
        assert (package, sorted(present - names), sorted(names - present)) == (package, [], [])


def test_errors_the_readme_names_are_importable_from_the_package() -> None:
    """README's intro: `consume_and_reply` raises these; a caller catches them as `ewms_pilot.X`."""
    intro = README.read_text().split("\n## ", 1)[0]
    names = set(re.findall(r"`(?:ewms_pilot\.)?([A-Z]\w+Error)`", intro)) - {"RuntimeError"}
    assert {"ContainerRunError", "InitContainerError", "TasksFailedError", "PilotStoppedError"} <= names
    for name in names:
        cls = getattr(ewms_pilot, name)
        assert isinstance(cls, type) and issubclass(cls, Exception), name
    for name in ("InitContainerError", "TasksFailedError"):
        assert issubclass(getattr(ewms_pilot, name), (ewms_pilot.ContainerRunError, RuntimeError)), name
    assert issubclass(ewms_pilot.PilotStoppedError, RuntimeError)


# --------------------------------------------------------------------------- options the docs use


def _ewms_pilot_lines(doc: Path) -> list[str]:
    """Every `ewms-pilot ...` command line in the doc's shell blocks (continuations joined)."""
    lines = []
    for block in _code_blocks(doc):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = re.split(r"\s(?:<<<?|>|\||;|&&|#)\s?", line.strip(), maxsplit=1)[0]
            found = re.search(r"(?:^|[;(]\s*)ewms-pilot( .*|$)", line)
            if found:
                lines.append(found.group(1).strip().rstrip(")"))
    return lines


def test_every_ewms_pilot_command_in_the_docs_parses() -> None:
    """Each documented `ewms-pilot` command line is accepted by the real parser (options, choices)."""
    lines = [(doc, line) for doc in DOCS for line in _ewms_pilot_lines(doc)]
    assert len(lines) >= 10
    refused = []
    for doc, line in lines:
        argv = [a for a in shlex.split(line) if a != "--help"]
        try:
            cli_parser().parse_args(argv)
        except SystemExit:
            refused.append(f"{doc.relative_to(REPO)}: ewms-pilot {line}")
    assert refused == []


def test_benchmark_options_table_matches_the_harness() -> None:
    from benchmarks.compare import _parser as bench_parser

    body = (REPO / "benchmarks" / "README.md").read_text()
    table = re.search(r"^\| option \| meaning \|\n(.*?)\n\n", body, re.DOTALL | re.MULTILINE)
    assert table
    documented = set(re.findall(r"`(-{1,2}[\w-]+)", table.group(1)))
    options = {o for a in bench_parser()._actions for o in a.option_strings} - {"-h", "--help"}
    assert sorted(options - documented) == [] and sorted(documented - options) == []


# --------------------------------------------------------------------------- commands the docs show, run


def _block_with(doc: Path, line: str) -> str:
    """The one shell block of `doc` that has a line starting with `line`."""
    blocks = [b for b in _code_blocks(doc) if any(ln.startswith(line) for ln in b.splitlines())]
    assert len(blocks) == 1, f"{doc.name}: {len(blocks)} shell blocks with a line starting {line!r}"
    return blocks[0]


def _run_block(block: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The block as written, by bash (-e: every command must succeed), with this venv's `ewms-pilot`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_local_queue_doc_example_runs(tmp_path: Path) -> None:
    """docs/local-queue.md's first example, run in an empty directory: results and an empty queue."""
    block = _block_with(REPO / "docs" / "local-queue.md", "export EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE=local")
    res = _run_block(block, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "results.jsonl").read_text().splitlines() == ['"hello"', '"world"']
    assert "ready: 0" in res.stdout


@pytest.mark.parametrize("doc", [README, REPO / "examples" / "htcondor" / "README.md"], **_IDS)
def test_env_file_check_command_runs(doc: Path) -> None:
    """'Check an env file before you submit': exit 0, the settings printed, the tokens masked."""
    block = _block_with(doc, "(set -a; . examples/htcondor/ewms_htcondor_envfile.sh;")
    res = _run_block(block, REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "EWMS_PILOT_QUEUE_INCOMING=my-workflow-in" in res.stdout
    assert "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN=***" in res.stdout and "REPLACE-ME" not in res.stdout


def test_readme_local_example_command_runs(tmp_path: Path) -> None:
    block = _block_with(README, "bash examples/local/run.sh")
    res = _run_block(f"export WORK_DIR={shlex.quote(str(tmp_path))}\n{block}", REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '"words=9 lines=1 chars=43"' in res.stdout.splitlines()


@pytest.mark.rabbitmq
@pytest.mark.podman
def test_readme_rabbitmq_podman_example_runs(tmp_path: Path, rabbitmq_address: str, queue_name: str) -> None:
    """README "Running a pilot against RabbitMQ with podman", as written but for fresh queue names
    (the broker is shared) and a fresh data dir."""
    block = _block_with(README, "ewms-pilot queue put --broker-type rabbitmq")
    names = {"in": f"{queue_name}-in", "out": f"{queue_name}-out"}
    for old, new in names.items():
        block, n = re.subn(rf"((?:--queue |EWMS_PILOT_QUEUE_(?:INCOMING|OUTGOING)=)){old}\b", rf"\g<1>{new}", block)
        assert n == 2, (old, block)
    block = block.replace("=/tmp/pilot ", f"={tmp_path} ")
    assert rabbitmq_address in block
    res = _run_block(block.replace(". .venv/bin/activate", f". {Path(sys.executable).parent}/activate"), REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(line for line in res.stdout.splitlines() if line.startswith('"')) == ['"HELLO"', '"WORLD"']



def test_quick_start_demo_runs_on_a_fresh_clone(tmp_path: Path) -> None:
    """README "Quick start": `bash scripts/demo.sh` in a clean copy of the repo (no .venv yet)
    makes its venv, installs the pilot there and prints one result per demo event."""
    clone = tmp_path / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            (clone / rel).write_bytes((REPO / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_") and k != "VIRTUAL_ENV"}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    res = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 6, res.stdout
    assert (clone / ".venv" / "bin" / "ewms-pilot").is_file()
