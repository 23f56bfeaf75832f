"""What a task, or another local user, can reach of the pilot's host (docs/sandbox.md).

Real pilot processes with real podman and RabbitMQ / the local queue: binds the
policy refuses are config errors before anything is consumed; a task gets no
credential in its environment and no env value appears in `ps`; the pilot's
files are its user's only, checked as user `nobody`.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from local_helpers import put_local, take_all_local
from mq_helpers import drain, publish
from pilot_proc import base_env, run_pilot, start_pilot, wait_pilot

from ewms_pilot.config.model import BrokerConfig, ContainerConfig, ContainerPlatform, PilotConfig
from ewms_pilot.runtimes import RunSpec, Runtime, get_runtime
from ewms_pilot.tasks.taskdir import TaskDir

T = TypeVar("T")
#: a python every local user can run (the venv's may sit in a private directory)
SYSTEM_PYTHON = "/usr/bin/python3"
CANARY = "canary-7f3a9c"  # must never show where it does not belong
DEADLINE = 120.0  # s: only bounds how long a broken test waits, never a speed promise


def _poll(what: str, probe: Callable[[], T], deadline: float = DEADLINE) -> T:
    """`probe()` once it is truthy; fails the test after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not (found := probe()):
        if time.monotonic() > end:
            pytest.fail(f"{what}: not seen within {deadline:g}s")
        time.sleep(0.1)
    return found


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every local user may enter (pytest's tmp dirs are the owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="ewms-sandbox-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- mount policy at load


def _link_to_proc(tmp_path: Path) -> str:
    link = tmp_path / "harmless-looking"
    link.symlink_to("/proc")
    return str(link)


BAD_BINDS = {
    "proc": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", lambda t: "/proc"),
    "sys": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", lambda t: "/sys"),
    "dev": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", lambda t: "/dev"),
    "boot": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", lambda t: "/boot"),
    "link-to-proc": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", _link_to_proc),
    "missing": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", lambda t: str(t / "not-there")),
    "root": ("EWMS_PILOT_EXTERNAL_DIRECTORIES", lambda t: "/"),
    "data-dir-comma": ("EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST", lambda t: str(t / "a,b")),
}


@pytest.mark.podman
@pytest.mark.parametrize("case", sorted(BAD_BINDS))
def test_refused_bind_is_a_config_error_before_anything_is_consumed(
    case: str, rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    variable, value_for = BAD_BINDS[case]
    value = value_for(tmp_path)
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["ev"]))
    copy = shlex.join(["python3", "-c", "import sys; open(sys.argv[2],'w').write(open(sys.argv[1]).read())", "<<INFILE>>", "<<OUTFILE>>"])  # fmt: skip
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i",
        queue_out=queue_name + "o", data_dir=tmp_path, task_args=copy, platform="podman",
        image=podman_image, extra={variable: value},
    )  # fmt: skip
    check = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", "config", "--check"],
        env=env, capture_output=True, text=True, timeout=DEADLINE,
    )  # fmt: skip
    run = run_pilot(env, timeout=DEADLINE)
    for result in (check, run):
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert lines[0].startswith(f"ewms-pilot: configuration error: {variable}="), lines[0]
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "i", timeout=2, expect=1)) == ["ev"]
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=1)) == []


# ---------------------------------------------------------------- one spec builder


def _one_of_each_spec(tmp_path: Path) -> tuple[dict[str, RunSpec], Path, Runtime]:
    """A podman pilot's task, warm worker and init specs (with an external dir)."""
    from ewms_pilot.runtimes.spec import SpecBuilder

    ext = tmp_path / "ext"
    ext.mkdir()
    cfg = PilotConfig(
        task=ContainerConfig(image="img", args="run <<DATA_HUB>>", env={"K": "v"}),
        incoming=BrokerConfig("in", "local", "x"),
        outgoing=BrokerConfig("out", "local", "x"),
        container_platform=ContainerPlatform.PODMAN,
        data_dir_parent=tmp_path,
        external_directories=(ext,),
    )
    cfg.data_hub_dir.mkdir(parents=True)
    runtime = get_runtime(cfg)
    specs = SpecBuilder.for_pilot(cfg, runtime, "p1")
    tdir = TaskDir.create(cfg.data_dir, "t1", ".in", ".out")
    made = {
        "t1": specs.task("img", cfg.task, "t1", tdir),
        "warm0-1": specs.warm_worker("img", cfg.task, "warm0-1", cfg.data_dir / "w", {}, tmp_path / "clients"),
        "init": specs.once("img", cfg.task, "init", cfg.data_dir / "init"),
    }
    return made, ext, runtime


def test_every_container_of_a_pilot_carries_the_same_owner_labels(tmp_path: Path) -> None:
    """Warm workers were labelled with the pilot id only: the orphan sweep could not find them."""
    made, ext, _ = _one_of_each_spec(tmp_path)
    owner = {k: v for k, v in made["t1"].labels.items() if k != "ewms-pilot.task"}
    assert set(owner) == {"ewms-pilot.owner", "ewms-pilot.machine", "ewms-pilot.holder"}
    for role, spec in made.items():
        assert spec.name == f"ewms-pilot-p1-{role}"
        assert spec.labels == {**owner, "ewms-pilot.task": role}
        assert spec.argv == ("run", "/ewms-pilot-data/data-hub")
        assert spec.env["K"] == "v" and spec.env_file is not None
        assert [m for m in spec.mounts if m.readonly] == [m for m in spec.mounts if m.source == ext]


def test_no_container_can_reach_the_dir_its_client_runs_in(tmp_path: Path) -> None:
    """conmon creates `oom` in its client's cwd through a link: a task must not be able to plant one there."""
    made, _, runtime = _one_of_each_spec(tmp_path)
    for role, spec in made.items():
        cwd = runtime.process_cwd(spec)
        assert cwd is not None and cwd.is_absolute(), role
        assert not [m.source for m in spec.mounts if cwd.is_relative_to(m.source)], role


# ---------------------------------------------------------------- clean task environment




DUMP_ENV = "import os,sys; open(sys.argv[1],'w').write(chr(10).join(k+'='+v for k,v in sorted(os.environ.items())))"


def test_process_task_gets_no_pilot_setting_and_no_credential(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite"
    asyncio.run(put_local(db, "in", ["ev"]))
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=tmp_path,
        task_args=shlex.join([sys.executable, "-c", DUMP_ENV, "<<OUTFILE>>"]),
        extra={
            "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": CANARY + "-in",
            "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN": CANARY + "-out",
            "SITE_DB_PASSWORD": CANARY + "-site",
            "LC_ALL": "C.UTF-8",
            "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"THREADS": "4"}),
        },
    )  # fmt: skip
    run = run_pilot(env, timeout=DEADLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    [dump] = asyncio.run(take_all_local(db, "out"))
    seen = dict(line.split("=", 1) for line in dump.splitlines())
    assert CANARY not in dump
    assert not [k for k in seen if "EWMS_PILOT" in k]
    # what a task is promised: the allow-list, its paths, its own env
    assert seen["PATH"] == os.environ["PATH"] and seen["LC_ALL"] == "C.UTF-8"
    assert seen["THREADS"] == "4" and seen["EWMS_TASK_OUTFILE"].endswith(".out")
    assert seen["EWMS_TASK_INFILE"].endswith(".in") and "EWMS_TASK_DATA_HUB_DIR" in seen


WAIT_THEN_ANSWER = (
    "import os,sys,time\n"
    "ext=sys.argv[1]\n"
    "while not os.path.exists(ext+'/go'): time.sleep(0.1)\n"
    "try:\n open(ext+'/w','w'); mode='writable'\n"
    "except OSError: mode='read-only'\n"
    "open(os.environ['EWMS_TASK_OUTFILE'],'w').write(os.environ['API_KEY']+' '+mode+' '+open(ext+'/calib').read())"
)


@pytest.mark.podman
def test_container_env_never_on_a_command_line(
    rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    """`ps` is every local user's: the task env goes through an owner-only env file."""
    site = tmp_path / "site-data"
    site.mkdir()
    (site / "calib").write_text("calib-42")
    ext = tmp_path / "ext-link"  # a good external dir, through a symlink
    ext.symlink_to(site)
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["ev"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i",
        queue_out=queue_name + "o", data_dir=tmp_path, platform="podman", image=podman_image,
        task_args=shlex.join(["python3", "-c", WAIT_THEN_ANSWER, str(ext)]),
        extra={
            "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"API_KEY": CANARY}),
            "EWMS_PILOT_EXTERNAL_DIRECTORIES": str(ext),
        },
    )  # fmt: skip
    data_dir = tmp_path / "ewms-pilot-data"
    proc = start_pilot(env)
    try:
        def client_running() -> str:
            # ww: whole lines (piped, ps would cut them at 80 columns)
            out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
            running = [line for line in out.splitlines() if " run " in line and str(data_dir) in line]
            return out if running else ""

        listing = _poll("the task's podman client in ps", client_running)
        assert CANARY not in listing
        [env_file] = _poll("the env file", lambda: glob.glob(f"{data_dir}/*/outputs/*.env"))
        assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    finally:
        (site / "go").write_text("")
        run = wait_pilot(proc, timeout=DEADLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=1))
    assert result == f"{CANARY} read-only calib-42"
    assert not glob.glob(f"{data_dir}/**/*.env", recursive=True)  # removed after the run


# ---------------------------------------------------------------- owner-only files


PROBE_AS_NOBODY = """
import json, os, sys
infile, outfile, data_dir = sys.argv[1:4]
forged = "/tmp/ewms-forged-%d" % os.getpid()
open(forged, "w").write("FORGED")
def attempt(fn):
    try:
        fn()
        return "done"
    except OSError as e:
        return type(e).__name__
print(json.dumps({
    "read infile": attempt(lambda: open(infile).read()),
    "write outfile": attempt(lambda: open(outfile, "w").write("FORGED")),
    "replace outfile": attempt(lambda: os.rename(forged, outfile)),
    "list data dir": attempt(lambda: os.listdir(data_dir)),
}))
os.path.exists(forged) and os.unlink(forged)
"""

WAIT_FOR_GO = (
    "import os,sys,time\n"
    "while not os.path.exists(sys.argv[3]): time.sleep(0.05)\n"
    "open(sys.argv[2],'w').write('own:'+open(sys.argv[1]).read())"
)


def test_an_open_data_dir_left_by_an_older_pilot_is_narrowed(tmp_path: Path) -> None:
    from ewms_pilot.tasks.taskdir import prepare_data_dir

    data = tmp_path / "ewms-pilot-data"
    (data / "data-hub").mkdir(parents=True)
    for d in (data, data / "data-hub"):
        d.chmod(0o777)
    old = os.umask(0o022)
    try:
        prepare_data_dir(data, data / "data-hub")
        assert os.umask(0o022) == 0o077  # the pilot's own umask
    finally:
        os.umask(old)
    assert [stat.S_IMODE(d.stat().st_mode) for d in (data, data / "data-hub")] == [0o700, 0o700]


def test_another_local_user_can_neither_read_an_event_nor_forge_a_result(open_dir: Path) -> None:
    db = open_dir / "q.sqlite"
    asyncio.run(put_local(db, "in", ["secret event"]))
    go = open_dir / "go"
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=open_dir,
        task_args=shlex.join([sys.executable, "-c", WAIT_FOR_GO, "<<INFILE>>", "<<OUTFILE>>", str(go)]),
    )  # fmt: skip
    data_dir = open_dir / "ewms-pilot-data"
    proc = start_pilot(env)
    try:
        [infile] = _poll("the infile", lambda: glob.glob(f"{data_dir}/*/task-io/infile-*"))
        outfile = infile.replace("/infile-", "/outfile-").removesuffix(".in") + ".out"
        probe = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             SYSTEM_PYTHON, "-I", "-c", PROBE_AS_NOBODY, infile, outfile, str(data_dir)],
            capture_output=True, text=True, timeout=DEADLINE, cwd="/",
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        assert json.loads(probe.stdout) == {
            "read infile": "PermissionError",
            "write outfile": "PermissionError",
            "replace outfile": "PermissionError",
            "list data dir": "PermissionError",
        }
    finally:
        go.write_text("")
        run = wait_pilot(proc, timeout=DEADLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    assert asyncio.run(take_all_local(db, "out")) == ["own:secret event"]


# ---------------------------------------------------------------- a warm worker sees the data dir

PLANTING_WORKER = r"""
import os, re, sys
hub, logs = os.environ["EWMS_TASK_DATA_HUB_DIR"], "/ewms-pilot-data/warm-workers"
attack, victim = sys.argv[1], sys.argv[2]  # victim: a host path this container cannot see
sys.stderr.write("PLANTED-LINE\n")
sys.stderr.flush()
for line in sys.stdin:
    field = lambda k: re.search('"%s": "([^"]*)"' % k, line).group(1)
    if not os.path.exists(hub + "/planted"):
        open(hub + "/planted", "w").close()
        if attack == "dir-link":
            os.rename(logs, hub + "/moved")
            os.symlink(victim, logs)
        else:  # links at the names the next workers' log and env files will have
            for name in os.listdir(logs):
                m = re.match(r"(ewms-pilot-[0-9a-f]+-warm[0-9]+-)([0-9]+)[.]log$", name)
                for gen in range(int(m.group(2)) + 1, int(m.group(2)) + 4) if m else ():
                    for ext in ("log", "env"):
                        os.symlink(victim, "%s/%s%d.%s" % (logs, m.group(1), gen, ext))
        sys.exit(1)  # the pilot starts a new worker for the next event
    open(field("outfile"), "w").write("ok:" + open(field("infile")).read())
    print('{"id": "%s", "ok": true}' % field("id"), flush=True)
"""


def _planting_setup(tmp_path: Path, worker: str, attack: str) -> tuple[Path, Path]:
    """(dir holding the planting worker `w.py`, its victim: a host file for "file-link", else an empty host dir)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "w.py").write_text(worker)
    victim = tmp_path / ("victim.txt" if attack == "file-link" else "victim-dir")
    if attack == "file-link":
        victim.write_text("original\n")
    else:
        victim.mkdir()
    return scripts, victim


@pytest.mark.podman
@pytest.mark.parametrize("attack", ["file-link", "dir-link"])
def test_warm_worker_cannot_make_the_pilot_write_a_host_file(
    attack: str, rabbitmq_address: str, queue_name: str, tmp_path: Path, podman_image: str
) -> None:
    """Worker logs live in the data dir a warm container may write: their links are never followed."""
    scripts, victim = _planting_setup(tmp_path, PLANTING_WORKER, attack)
    asyncio.run(publish("rabbitmq", rabbitmq_address, queue_name + "i", ["a", "b"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i",
        queue_out=queue_name + "o", data_dir=tmp_path / "data", platform="podman", image=podman_image,
        task_args=shlex.join(["python3", str(scripts / "w.py"), attack, str(victim)]),
        extra={
            "EWMS_PILOT_TASK_MODE": "warm",
            "EWMS_PILOT_EXTERNAL_DIRECTORIES": str(scripts),
            "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false",
            "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "3",
            "EWMS_PILOT_KEEP_ALL_TASK_FILES": "true",  # worker logs stay where they were written
        },
    )  # fmt: skip
    run = run_pilot(env, timeout=DEADLINE)
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if attack == "file-link":
        assert victim.read_text() == "original\n"
        # the next worker got a log of its own and did the work
        assert run.returncode == 0, run.stderr[-3000:]
        out = asyncio.run(drain("rabbitmq", rabbitmq_address, queue_name + "o", timeout=2, expect=2))
        assert sorted(out) == ["ok:a", "ok:b"]
    else:
        assert list(victim.iterdir()) == []  # no worker could start there: the pool gave up
        assert run.returncode in (0, 3), run.stderr[-3000:]


TEARDOWN_PLANTING_WORKER = r"""
import os, re, sys
data = os.path.dirname(os.environ["EWMS_TASK_DATA_HUB_DIR"])  # the whole data dir is the worker's
attack, victim = sys.argv[1], sys.argv[2]
if attack == "file-link":  # the teardown's own output files, linked to a host file
    os.makedirs(data + "/teardown/outputs")
    for name in ("stdoutfile", "stderrfile"):
        os.symlink(victim, data + "/teardown/outputs/" + name)
elif attack == "role-link":  # the teardown's dir, linked to a host dir
    os.symlink(victim, data + "/teardown")
else:  # its outputs dir, linked to a host dir
    os.makedirs(data + "/teardown")
    os.symlink(victim, data + "/teardown/outputs")
for line in sys.stdin:
    field = lambda k: re.search('"%s": "([^"]*)"' % k, line).group(1)
    open(field("outfile"), "w").write("ok:" + open(field("infile")).read())
    print('{"id": "%s", "ok": true}' % field("id"), flush=True)
"""
TEARDOWN = "import sys; print('TEARDOWN-OUT'); print('TEARDOWN-ERR', file=sys.stderr)"


@pytest.mark.parametrize("attack", ["file-link", "role-link", "outputs-link"])
def test_warm_worker_cannot_make_the_teardown_write_a_host_file(attack: str, tmp_path: Path) -> None:
    """The teardown runs after the warm workers, in the data dir they could write: its outputs are made afresh."""
    scripts, victim = _planting_setup(tmp_path, TEARDOWN_PLANTING_WORKER, attack)
    db = tmp_path / "q.sqlite"
    asyncio.run(put_local(db, "in", ["a"]))
    env = base_env(
        broker_type="local", address=str(db), queue_in="in", queue_out="out", data_dir=tmp_path / "data",
        task_args=shlex.join([sys.executable, str(scripts / "w.py"), attack, str(victim)]),
        extra={
            "EWMS_PILOT_TASK_MODE": "warm",
            "EWMS_PILOT_TEARDOWN_IMAGE": "unused",
            "EWMS_PILOT_TEARDOWN_ARGS": shlex.join([sys.executable, "-c", TEARDOWN]),
        },
    )  # fmt: skip
    run = run_pilot(env, timeout=DEADLINE)
    assert run.returncode == 0, run.stderr[-3000:]
    assert asyncio.run(take_all_local(db, "out")) == ["ok:a"]
    if attack == "file-link":
        assert victim.read_text() == "original\n"
    else:
        assert list(victim.iterdir()) == []
    # the teardown's output is where it always was, in real dirs of the data dir
    outputs = tmp_path / "data" / "ewms-pilot-data" / "teardown" / "outputs"
    assert not outputs.parent.is_symlink() and not outputs.is_symlink()
    assert not (outputs / "stdoutfile").is_symlink()
    assert (outputs / "stdoutfile").read_text() == "TEARDOWN-OUT\n"
    assert (outputs / "stderrfile").read_text() == "TEARDOWN-ERR\n"
