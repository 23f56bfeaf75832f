"""Config mistakes caught at load (one line, exit 2), and what a drop-in for 1.x must accept.

Issue 11 item 5 (every case listed there that is not a mount-path rule), item 6
(broker URLs with a scheme; TLS itself: test_rabbitmq_tls.py), issue 12 items 4 and 6, issue 13 item 6.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from config_env import MINIMAL as BASE_ENV
from mq_helpers import drain, publish
from pilot_proc import DOUBLE, base_env, run_pilot

from ewms_pilot.config.loader import load_config
from ewms_pilot.config.variables import VARIABLES
from ewms_pilot.errors import ConfigError

MINIMAL = BASE_ENV
DEEP = "[" * 20000
MAX_SECONDS = 366 * 24 * 3600  # the documented bound of every duration


def error(**changes: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config({**MINIMAL, **changes})
    assert "\n" not in str(info.value)
    return info.value


def config_check(env: dict[str, str], *, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """`ewms-pilot config --check` in a process of its own, with only `env`'s pilot settings."""
    clean = {k: v for k, v in os.environ.items() if "EWMS_PILOT" not in k and k != "_CONDOR_SCRATCH_DIR"}
    argv = [sys.executable, "-m", "ewms_pilot", "config", "--check"]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]  # numeric ids
    return subprocess.run(
        argv, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def one_line_exit_2(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


# ---------------------------------------------------------------------------
# issue 11 item 5: found at load, not at the first event


@pytest.mark.parametrize("which", ["TASK", "INIT", "TEARDOWN"])
@pytest.mark.parametrize("env_json", ['{"A B": "1"}', '{"1A": "1"}', '{"": "1"}', '{"A-B": "1"}'])
def test_env_json_keys_must_be_env_names(which: str, env_json: str) -> None:
    err = error(**{f"EWMS_PILOT_{which}_ENV_JSON": env_json, "EWMS_PILOT_INIT_IMAGE": "i", "EWMS_PILOT_TEARDOWN_IMAGE": "t"})
    assert err.variable == f"EWMS_PILOT_{which}_ENV_JSON"
    assert "not an env var name" in str(err)


@pytest.mark.parametrize("ext", ["a/b", "..\\x", "." + "x" * 299, ".in\n"])
@pytest.mark.parametrize("var", ["EWMS_PILOT_INFILE_EXT", "EWMS_PILOT_OUTFILE_EXT"])
def test_bad_extensions_are_refused(var: str, ext: str) -> None:
    err = error(**{var: ext})
    assert err.variable == var
    assert "at most 32 characters" in str(err)


def test_reasonable_extensions_are_kept() -> None:
    cfg = load_config({**MINIMAL, "EWMS_PILOT_INFILE_EXT": ".tar.gz", "EWMS_PILOT_OUTFILE_EXT": "x" * 32})
    assert (cfg.infile_ext, cfg.outfile_ext) == (".tar.gz", "x" * 32)


@pytest.mark.parametrize("var", ["EWMS_PILOT_PREFETCH", "EWMS_PILOT_MAX_CONCURRENT_TASKS"])
def test_counts_over_65535_are_refused(var: str) -> None:
    assert "from 1 to 65535" in str(error(**{var: "65536"}))
    assert load_config({**MINIMAL, var: "65535"})


@pytest.mark.parametrize("var", [v.name for v in VARIABLES if "seconds" in v.type.expected])
@pytest.mark.parametrize("text", ["1e300", "inf", str(MAX_SECONDS + 1)])
def test_every_seconds_value_is_bounded(var: str, text: str) -> None:
    err = error(**{var: text, "EWMS_PILOT_INIT_IMAGE": "i", "EWMS_PILOT_TEARDOWN_IMAGE": "t"})
    assert err.variable == var
    assert "(a year)" in str(err)


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("EWMS_PILOT_TASK_ENV_JSON", DEEP),
        ("EWMS_PILOT_TASK_ENV_JSON", '{"A": ' + DEEP),
        ("EWMS_PILOT_TASK_FAIL_PATTERNS", DEEP),
        ("EWMS_PILOT_OKAY_ERRORS", DEEP),
        ("EWMS_PILOT_EXTERNAL_DIRECTORIES", "(" * 20000),
    ],
)
def test_deeply_nested_json_is_one_line_not_recursion_error(var: str, text: str) -> None:
    err = error(**{var: text})
    assert err.variable == var
    assert "nested more than 100 levels deep" in str(err)


def test_data_dir_that_is_a_file_is_exit_2_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = one_line_exit_2(config_check({**MINIMAL, "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(a_file)}))
    assert "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST" in line
    assert f"{a_file} is not a directory" in line


@pytest.mark.parametrize("where", ["/proc", "/proc/self", "/sys/kernel", "/dev/shm"])
def test_data_dir_under_proc_sys_dev_is_refused(where: str) -> None:
    err = error(EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST=where)
    assert err.variable == "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST"
    assert "a directory not under /" in str(err)


def test_data_dir_through_a_symlink_to_proc_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/proc/self")
    assert "not under /proc" in str(error(EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST=str(tmp_path / "link")))


def test_unwritable_data_dir_is_exit_2_for_that_user() -> None:
    # the pilot as an ordinary job user (HTCondor runs jobs as `nobody`) and a root-owned dir
    # that user can see into but not write (pytest's tmp_path is root-only, so not there)
    with tempfile.TemporaryDirectory(prefix="ewms-config-") as top:
        os.chmod(top, 0o755)
        line = one_line_exit_2(
            config_check({**MINIMAL, "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": top}, user="65534")
        )
    assert "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST" in line
    assert f"({top} is not writable)" in line


def test_config_check_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "not" / "yet"
    res = config_check({**MINIMAL, "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(target)})
    assert res.returncode == 0, res.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# issue 13 item 6: HTCondor's scratch dir is the default, in the pilot itself


def test_scratch_dir_is_the_default_data_dir_parent(tmp_path: Path) -> None:
    cfg = load_config({**MINIMAL, "_CONDOR_SCRATCH_DIR": str(tmp_path)})
    assert cfg.data_dir == tmp_path / "ewms-pilot-data"


def test_explicit_data_dir_wins_over_scratch_dir(tmp_path: Path) -> None:
    cfg = load_config(
        {**MINIMAL, "_CONDOR_SCRATCH_DIR": "/nonexistent-scratch", "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp_path)}
    )
    assert cfg.data_dir_parent == tmp_path


def test_unusable_scratch_dir_is_reported_by_its_own_name(tmp_path: Path) -> None:
    a_file = tmp_path / "scratch"
    a_file.write_text("")
    line = one_line_exit_2(config_check({**MINIMAL, "_CONDOR_SCRATCH_DIR": str(a_file)}))
    assert line.startswith("ewms-pilot: configuration error: _CONDOR_SCRATCH_DIR=")


# ---------------------------------------------------------------------------
# issue 11 item 6: broker URLs with a scheme


@pytest.mark.parametrize("address", ["amqp://guest:guest@127.0.0.1:5672/", "amqp://127.0.0.1"])
def test_amqp_url_connects(rabbitmq_address: str, queue_name: str, tmp_path: Path, address: str) -> None:
    qin, qout = queue_name + "-in", queue_name + "-out"
    asyncio.run(publish("rabbitmq", rabbitmq_address, qin, ["ab"]))
    env = base_env(
        broker_type="rabbitmq", address=address, queue_in=qin, queue_out=qout,
        data_dir=tmp_path, task_args=f"{sys.executable} -c \"{DOUBLE}\" <<INFILE>> <<OUTFILE>>",
    )  # fmt: skip
    run = run_pilot(env)
    assert run.returncode == 0, run.stderr
    assert asyncio.run(drain("rabbitmq", rabbitmq_address, qout, timeout=2, expect=1)) == ["abab"]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("amqps://guest:s3cret@", "no host given"),
        ("http://mq.example.org", "scheme http:// is not one of these"),
        ("guest:s3cret@", "no host given"),
        ("mq.example.org:99999", "port"),
    ],
)
def test_rabbitmq_addresses_that_cannot_work_are_config_errors(address: str, why: str) -> None:
    line = one_line_exit_2(config_check({**MINIMAL, "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": address}))
    assert "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS" in line
    assert "[amqp://|amqps://][USER[:PASSWORD]@]HOST[:PORT][/VHOST]" in line
    assert why in line
    assert "s3cret" not in line


def test_queue_cli_takes_the_same_address_forms(rabbitmq_address: str, queue_name: str) -> None:
    where = ["--broker-type", "rabbitmq", "--broker-address", "amqp://127.0.0.1:5672", "--queue", queue_name]
    cli = [sys.executable, "-m", "ewms_pilot", "queue"]
    put = subprocess.run([*cli, "put", *where], input="hello\n", capture_output=True, text=True, timeout=60, check=False)
    assert put.returncode == 0, put.stderr
    got = subprocess.run([*cli, "get", *where, "--timeout", "1"], capture_output=True, text=True, timeout=60, check=False)
    assert got.stdout == '"hello"\n', got.stderr
    bad = subprocess.run([*cli, "get", *where[:3], "amqp://x:99999", *where[4:]], capture_output=True, text=True, timeout=60, check=False)
    one_line_exit_2(bad)


# ---------------------------------------------------------------------------
# issue 12 item 4: unknown names warn (once); refused only where it matters


def test_stale_1x_name_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config({**MINIMAL, "EWMS_PILOT_TIMEOUT_INCOMING": "1"})
    warnings = [r.getMessage() for r in caplog.records if "EWMS_PILOT_TIMEOUT_INCOMING" in r.getMessage()]
    assert warnings == [
        "Ignoring unknown variable EWMS_PILOT_TIMEOUT_INCOMING (did you mean "
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING?) (see `ewms-pilot config --list`)"
    ]


def test_misnamed_secret_value_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config({**MINIMAL, "EWMS_PILOT_QUEUE_INCOMING_BROKER_PASSWORD": "Canary-9f2"})
    assert "EWMS_PILOT_QUEUE_INCOMING_BROKER_PASSWORD" in caplog.text
    assert "Canary-9f2" not in caplog.text


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("EWMS_PILOT_TASK_TIMEOT", "EWMS_PILOT_TASK_TIMEOUT"),
        ("ewms_pilot_init_timeout", "EWMS_PILOT_INIT_TIMEOUT"),
        ("EWMS_PILOT_QUEUE_DEADLETER", "EWMS_PILOT_QUEUE_DEADLETTER"),
    ],
)
def test_misspelling_that_would_lift_a_limit_or_drop_events_is_refused(typo: str, meant: str) -> None:
    err = error(**{typo: "600"})
    assert err.variable == typo
    assert f"did you mean {meant}?" in str(err)
    # ...but not when the real variable is set too: nothing is lost then
    assert load_config({**MINIMAL, typo: "600", meant: "60"})


def test_strict_config_refuses_every_unknown_name() -> None:
    err = error(EWMS_PILOT_TIMEOUT_INCOMING="1", EWMS_PILOT_STRICT_CONFIG="true")
    assert err.variable == "EWMS_PILOT_TIMEOUT_INCOMING"
    assert "EWMS_PILOT_STRICT_CONFIG=true" in str(err)


# ---------------------------------------------------------------------------
# issue 12 item 6: lists as TMS writes them (str(list)), JSON, commas, spaces


@pytest.mark.parametrize(
    "text",
    ["['TimeoutError', 'ValueError']", '["TimeoutError", "ValueError"]', "TimeoutError,ValueError",
     "TimeoutError ValueError", " TimeoutError , ValueError ", "('TimeoutError', 'ValueError')"],
)  # fmt: skip
def test_okay_errors_list_forms(text: str) -> None:
    cfg = load_config({**MINIMAL, "EWMS_PILOT_OKAY_ERRORS": text})
    assert cfg.okay_errors == {"TimeoutError", "ValueError"}


def test_single_item_python_list() -> None:
    assert load_config({**MINIMAL, "EWMS_PILOT_OKAY_ERRORS": "['TimeoutError']"}).okay_errors == {"TimeoutError"}


@pytest.mark.parametrize("text", ["['{0}/cvmfs', '{0}/a b']", '["{0}/cvmfs", "{0}/a b"]'])
def test_external_directories_list_forms(text: str, tmp_path: Path) -> None:
    for name in ("cvmfs", "a b"):  # they must exist: a missing one is refused (docs/sandbox.md)
        (tmp_path / name).mkdir()
    cfg = load_config({**MINIMAL, "EWMS_PILOT_EXTERNAL_DIRECTORIES": text.format(tmp_path)})
    assert cfg.external_directories == (tmp_path / "cvmfs", tmp_path / "a b")


def test_fail_patterns_python_list() -> None:
    cfg = load_config({**MINIMAL, "EWMS_PILOT_TASK_FAIL_PATTERNS": "['CUDA error .*', 'a,b']"})
    assert cfg.task_fail_patterns == ("CUDA error .*", "a,b")


@pytest.mark.parametrize("text", ["[__import__('os').system('id')]", "['a'] + ['b']", "[1, 2]", "{'a': 1}"])
def test_python_lists_are_literals_only(text: str) -> None:
    err = error(EWMS_PILOT_OKAY_ERRORS=text)
    assert err.variable == "EWMS_PILOT_OKAY_ERRORS"


# ---------------------------------------------------------------------------
# command-line options: one line, exit 2, nothing sent


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from ewms_pilot.cli.main import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("content", "why"),
    [("[" * 20000 + "\n", "nested more than 100 levels deep"), ("1" * 5000 + "\n", "4300 digits")],
)
def test_queue_put_json_too_deep_or_too_long_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"ok": 1}\n' + content)
    db = tmp_path / "q.db"
    err = _cli(["queue", "put", "--json", "--broker-type", "local", "--broker-address", str(db), "--queue", "q", str(events)], capsys)
    assert f"{events}:2: not valid JSON" in err and why in err
    assert not db.exists()  # nothing was sent (not even the good first line)


@pytest.mark.parametrize("timeout", ["inf", "nan", "-1", "1e300"])
def test_queue_get_timeout_must_be_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str) -> None:
    err = _cli(["queue", "get", "--broker-type", "local", "--broker-address", str(tmp_path / "q.db"), "--queue", "q", "--timeout", timeout], capsys)
    assert "argument --timeout: expected a number of seconds" in err


@pytest.mark.parametrize("interval", ["0", "0.001", "inf", "-5"])
def test_progress_interval_is_bounded(capsys: pytest.CaptureFixture[str], interval: str) -> None:
    err = _cli(["run", "--progress-interval", interval], capsys)
    assert "argument --progress-interval: expected a number of seconds >= 0.1" in err
