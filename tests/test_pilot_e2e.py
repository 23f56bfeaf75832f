"""The pilot end to end, as a batch job runs it: env vars in, real broker, results checked by value."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from mq_helpers import drain, publish
from pilot_proc import DOUBLE, base_env, run_pilot

PY = sys.executable


def _args(code: str, *extra: str) -> str:
    """TASK_ARGS for `python -c CODE <<INFILE>> <<OUTFILE>> ...` (quoted for the pilot's split)."""
    import shlex

    return shlex.join([PY, "-c", code, "<<INFILE>>", "<<OUTFILE>>", *extra])


@pytest.fixture(params=["rabbitmq", "nats"])
def broker(request: pytest.FixtureRequest) -> tuple[str, str]:
    name = request.param
    return name, request.getfixturevalue(f"{name}_address")


@pytest.mark.parametrize("concurrency", [1, 4])
def test_every_event_yields_its_output(broker: tuple[str, str], queue_name: str, tmp_path: Path, concurrency: int) -> None:
    btype, addr = broker
    qin, qout = queue_name + "i", queue_name + "o"
    events = [f"event-{i}-ü" for i in range(32)]
    asyncio.run(publish(btype, addr, qin, events))
    env = base_env(
        broker_type=btype, address=addr, queue_in=qin, queue_out=qout, data_dir=tmp_path,
        task_args=_args(DOUBLE),
        extra={"EWMS_PILOT_MAX_CONCURRENT_TASKS": str(concurrency)},
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = asyncio.run(drain(btype, addr, qout, timeout=2, expect=len(events)))
    assert sorted(results) == sorted(e + e for e in events)
    assert "received 32" in run.stdout and "succeeded 32" in run.stdout
    # task dirs are removed after success; the data hub stays (1.x layout: only directories in
    # ewms-pilot-data/), the journal is beside it
    data = tmp_path / "ewms-pilot-data"
    assert sorted(p.name for p in data.iterdir()) == ["data-hub"]
    journal = [json.loads(line) for line in (tmp_path / "ewms-pilot-tasks.jsonl").read_text().splitlines()]
    assert len(journal) == 32 and all(r["published"] and r["acked"] and r["exit_code"] == 0 for r in journal)
    assert sorted(r["bytes_out"] for r in journal) == sorted(len((e + e).encode()) for e in events)


def test_json_events_and_outfiles(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    events = [{"n": i, "tags": ["a", "b"], "nested": {"x": None}} for i in range(5)]
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, events))
    code = "import json,sys; d=json.load(open(sys.argv[1])); d['sq']=d['n']**2; json.dump(d, open(sys.argv[2],'w'))"
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(code),
        extra={"EWMS_PILOT_INFILE_EXT": ".json", "EWMS_PILOT_OUTFILE_EXT": "json"},
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=5))
    assert sorted(results, key=lambda d: d["n"]) == [dict(e, sq=e["n"] ** 2) for e in events]


def test_json_event_into_text_infile_is_a_clear_failure(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, [{"a": 1}]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(DOUBLE),
    )
    run = run_pilot(env)
    assert run.returncode == 3
    assert "InvalidDataForInfileException" in run.stderr and ".json" in run.stderr
    # the event was nacked, not lost: it is still in the incoming queue
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2)) == [{"a": 1}]


def test_binary_outfile_fails_the_task_with_a_reason(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["x"]))
    code = "import sys; open(sys.argv[2],'wb').write(bytes([0xff, 0xfe, 0x00, 0x80]))"
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(code),
    )
    run = run_pilot(env)
    assert run.returncode == 3
    assert "UTF-8" in run.stderr
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=2)) == ["x"]


def test_no_outfile_acks_without_publishing(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["a", "b"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args("pass"),
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no outfile" in run.stderr
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1)) == []
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=1)) == []  # acked


def test_env_vars_placeholders_and_env_json(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["e"]))
    code = (
        "import json,os,sys; e=os.environ; json.dump({'argv': sys.argv[1:], "
        "'in': e['EWMS_TASK_INFILE'], 'out': e['EWMS_TASK_OUTFILE'], 'hub': e['EWMS_TASK_DATA_HUB_DIR'], "
        "'mine': e['MY_VAR'], 'clash': e['EWMS_TASK_INFILE']}, open(e['EWMS_TASK_OUTFILE'],'w'))"
    )
    import shlex

    args = shlex.join([PY, "-c", code, "{{INFILE}}", "--hub={{DATA_HUB}}", "x<<OUTFILE>>y", "it's spaced"])
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=args,
        extra={
            "EWMS_PILOT_OUTFILE_EXT": ".json",
            "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"MY_VAR": "a b $(c)", "EWMS_TASK_INFILE": "nope"}),
        },
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    [out] = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=1))
    hub = str(tmp_path / "ewms-pilot-data" / "data-hub")
    assert out["hub"] == hub and out["argv"][1] == f"--hub={hub}"
    assert out["argv"][0] == out["in"] and out["in"].endswith(".in") and "/task-io/infile-" in out["in"]
    assert out["argv"][2] == f"x{out['out']}y" and out["argv"][3] == "it's spaced"
    assert out["mine"] == "a b $(c)" and out["clash"] == out["in"]  # per-run values win


def test_init_container_fills_the_data_hub(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["1", "2"]))
    import shlex

    init = shlex.join([PY, "-c", "import os,sys; open(os.path.join(sys.argv[1],'table.txt'),'w').write('T:'+os.environ['EWMS_TASK_DATA_HUB_DIR'][-8:])", "<<DATA_HUB>>"])
    task = _args("import os,sys; t=open(os.path.join(os.environ['EWMS_TASK_DATA_HUB_DIR'],'table.txt')).read(); open(sys.argv[2],'w').write(t+open(sys.argv[1]).read())")
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=task,
        extra={"EWMS_PILOT_INIT_IMAGE": "unused-for-process", "EWMS_PILOT_INIT_ARGS": init},
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=2))) == ["T:data-hub1", "T:data-hub2"]


def test_failed_init_container_consumes_nothing(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["1"]))
    import shlex

    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(DOUBLE),
        extra={
            "EWMS_PILOT_INIT_IMAGE": "x",
            "EWMS_PILOT_INIT_ARGS": shlex.join([PY, "-c", "import sys; sys.exit('no licence server')"]),
        },
    )
    run = run_pilot(env)
    assert run.returncode == 4
    assert "no licence server" in run.stderr
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=1)) == ["1"]


def test_init_timeout(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    import shlex

    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=queue_name + "i", queue_out=queue_name + "o",
        data_dir=tmp_path, task_args=_args(DOUBLE),
        extra={
            "EWMS_PILOT_INIT_IMAGE": "x",
            "EWMS_PILOT_INIT_ARGS": shlex.join([PY, "-c", "import time; time.sleep(60)"]),
            "EWMS_PILOT_INIT_TIMEOUT": "1",
        },
    )
    run = run_pilot(env, timeout=30)
    assert run.returncode == 4 and "timed out" in run.stderr
    assert run.elapsed < 20


def test_task_timeout_kills_the_task_tree(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["slow"]))
    marker = tmp_path / "child.pid"
    code = (
        "import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(120)']);"
        f"open({str(marker)!r},'w').write(str(p.pid)); time.sleep(120)"
    )
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(code), extra={"EWMS_PILOT_TASK_TIMEOUT": "2"},
    )
    run = run_pilot(env, timeout=60)
    assert run.returncode == 3 and "TaskTimeoutError" in run.stderr
    child = int(marker.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=1)) == ["slow"]


FAIL_ON_BAD = "import sys; d=open(sys.argv[1]).read(); sys.exit('bad event ' + d) if d.startswith('bad') else open(sys.argv[2],'w').write(d.upper())"


def test_failed_task_is_nacked_and_redelivered(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    """Without stop-on-error the pilot keeps going; the failed event goes back to the queue."""
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["ok1", "bad1", "ok2"]))
    flag = tmp_path / "seen"
    # fails the first time it sees 'bad1', succeeds on redelivery
    code = (
        "import os,sys; d=open(sys.argv[1]).read(); f=sys.argv[3]\n"
        "if d.startswith('bad') and not os.path.exists(f): open(f,'w').close(); sys.exit('first try fails')\n"
        "open(sys.argv[2],'w').write(d.upper())"
    )
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(code, str(flag)),
        extra={"EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false"},
    )
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "first try fails" in run.stderr
    assert sorted(asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=3))) == ["BAD1", "OK1", "OK2"]
    assert "failed 1" in run.stdout


def test_stop_on_error_finishes_running_tasks_then_exits(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["bad", *[f"ok{i}" for i in range(10)]]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(FAIL_ON_BAD), extra={"EWMS_PILOT_PREFETCH": "1"},
    )
    run = run_pilot(env)
    assert run.returncode == 3
    assert "bad event bad" in run.stderr and "exited with code 1" in run.stderr
    published = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1))
    left = asyncio.run(drain("rabbitmq", rabbitmq_address, qin, timeout=1))
    # nothing lost: every event is either published or still queued (the bad one nacked back)
    assert "bad" in left
    assert sorted(published + [x.upper() for x in left if x != "bad"]) == sorted(f"OK{i}" for i in range(10))
    assert len(published) < 10  # it stopped taking work


def test_okay_errors_keep_the_pilot_going(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["bad", "ok1", "ok2"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(FAIL_ON_BAD),
        extra={"EWMS_PILOT_OKAY_ERRORS": "ContainerRunError", "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "1"},
    )
    run = run_pilot(env)
    # 'bad' keeps coming back (nacked) and failing with an okay error, until the run
    # ends on an idle queue — so the pilot never stops for it; ok events are done.
    outs = asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=1))
    assert {"OK1", "OK2"} <= set(outs), run.stderr[-3000:]
    assert "EWMS_PILOT_OKAY_ERRORS" in run.stderr


def test_quarantine_sleeps_before_exiting(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["bad"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args(FAIL_ON_BAD), extra={"EWMS_PILOT_QUARANTINE_TIME": "4"},
    )
    run = run_pilot(env)
    assert run.returncode == 3
    assert "quarantine" in run.stderr
    assert run.elapsed >= 4


def test_failed_task_keeps_its_files(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    qin, qout = queue_name + "i", queue_name + "o"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["bad"]))
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=_args("import sys; print('to stdout'); sys.exit('to stderr')"),
    )
    run = run_pilot(env)
    assert run.returncode == 3
    [task_dir] = [p for p in (tmp_path / "ewms-pilot-data").iterdir() if p.is_dir() and p.name != "data-hub"]
    assert (task_dir / "outputs" / "stdoutfile").read_text() == "to stdout\n"
    assert "to stderr" in (task_dir / "outputs" / "stderrfile").read_text()
    assert "to stdout" in run.stderr  # dumped to the pilot's log


class _ConnectionCounter:
    """A TCP listener that counts connection attempts (a pretend broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.count = 0
        self._stop = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.count += 1
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self._t.join()
        self.sock.close()


@pytest.mark.parametrize(
    "extra, variable",
    [
        ({"EWMS_PILOT_MAX_CONCURRENT_TASKS": "-1"}, "EWMS_PILOT_MAX_CONCURRENT_TASKS"),
        ({"EWMS_PILOT_PREFETCH": "many"}, "EWMS_PILOT_PREFETCH"),
        ({"EWMS_PILOT_CONTAINER_PLATFORM": "kubernetes"}, "EWMS_PILOT_CONTAINER_PLATFORM"),
        ({"EWMS_PILOT_TASK_ENV_JSON": "{not json"}, "EWMS_PILOT_TASK_ENV_JSON"),
        ({"EWMS_PILOT_QUEUE_INCOMING": ""}, "EWMS_PILOT_QUEUE_INCOMING"),
        ({"EWMS_PILOT_QUARANTINE_TIME": "5", "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "no"}, "EWMS_PILOT_QUARANTINE_TIME"),
        ({"EWMS_PILOT_TASK_ARGS": "python3 -c 'unclosed"}, "EWMS_PILOT_TASK_ARGS"),
        ({"EWMS_PILOT_INIT_IMAGE": "i", "EWMS_PILOT_INIT_ARGS": "x", "EWMS_PILOT_INIT_ENV_JSON": '{"A": true}'}, "EWMS_PILOT_INIT_ENV_JSON"),
        ({"EWMS_PILOT_TASK_TIMEOUT": "soon"}, "EWMS_PILOT_TASK_TIMEOUT"),
    ],
)
def test_config_error_is_one_line_exit_2_and_no_connection(tmp_path: Path, extra: dict[str, str], variable: str) -> None:
    fake = _ConnectionCounter()
    try:
        env = base_env(
            broker_type="rabbitmq", address=fake.address, queue_in="a", queue_out="b",
            data_dir=tmp_path, task_args=_args(DOUBLE),
            extra={**extra, "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": "s3cr3t-token"},
        )
        run = run_pilot(env, timeout=30)
    finally:
        fake.close()
    assert run.returncode == 2
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and variable in lines[0], run.stderr
    assert "Traceback" not in run.stderr and "s3cr3t-token" not in run.stderr + run.stdout
    assert fake.count == 0


def test_auth_token_never_logged(rabbitmq_address: str, queue_name: str, tmp_path: Path) -> None:
    """guest/guest ignores nothing: a wrong token fails to connect, and the log must not show it."""
    env = base_env(
        broker_type="rabbitmq", address=f"guest:hunter2pass@{rabbitmq_address}", queue_in=queue_name, queue_out=queue_name + "o",
        data_dir=tmp_path, task_args=_args(DOUBLE),
        extra={"EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": "tok-XYZ-secret"},
    )
    run = run_pilot(env, timeout=60)
    assert run.returncode == 5
    assert "tok-XYZ-secret" not in run.stderr + run.stdout
    assert "hunter2pass" not in run.stderr + run.stdout


def test_local_queue_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    env = base_env(
        broker_type="local", address=str(tmp_path / "nowhere" / "q.db"), queue_in="a", queue_out="b",
        data_dir=tmp_path, task_args=_args(DOUBLE),
    )
    run = run_pilot(env, timeout=30)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS" in last and "does not exist" in last
    assert "Traceback" not in run.stderr
