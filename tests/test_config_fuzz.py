"""Arbitrary text in every variable and every command-line option (hypothesis).

The promise (README, "Configuration"): any value gives a working config or one
line naming the variable/option, exit code 2 - never a traceback, never a hang.
In-process through `ewms_pilot.cli.main.main([...])`, plus a few real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ewms_pilot.cli.logs import one_line
from ewms_pilot.cli.main import main
from ewms_pilot.config import redact
from ewms_pilot.config.loader import load_config
from ewms_pilot.config.model import PilotConfig
from ewms_pilot.config.variables import VARIABLES
from ewms_pilot.errors import ConfigError
from ewms_pilot.resources.slot import MAX_SECONDS

BASE = {
    "EWMS_PILOT_CONTAINER_PLATFORM": "process",
    "EWMS_PILOT_TASK_ARGS": "true",
    "EWMS_PILOT_QUEUE_INCOMING": "q-in",
    "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
    "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": "localhost",
    "EWMS_PILOT_QUEUE_OUTGOING": "q-out",
    "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "nats",
    "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": "nats://localhost:4222",
    "EWMS_PILOT_INIT_ARGS": "true",  # so init/teardown values are used, not ignored
    "EWMS_PILOT_TEARDOWN_ARGS": "true",
}
NAMES = sorted({n for v in VARIABLES for n in v.names} | {"_CONDOR_SCRATCH_DIR"})
EDGE = [
    "", " ", "0", "-1", "1", "65535", "65536", "1e300", "inf", "nan", "-0", "0x10", "1_0", "٣",
    "[" * 5000, "{" * 5000, "(" * 5000, "9" * 5000, "['a', 'b']", '["a", 1]', "[__import__('os')]",
    '{"A": "1"}', '{"A B": "1"}', "amqp://u:p@h:5672/v", "amqps://h", "u:p@", "h:99999", "/proc",
    "/dev/null", "/", ".", "a,b c", "x\ny", "\\", "..", "true", "yes", "NaN", "1" * 30,
]  # fmt: skip
TEXT = st.one_of(
    st.sampled_from(EDGE),
    st.text(max_size=64),
    st.lists(st.sampled_from(EDGE), max_size=4).map("".join),
)
ENV_TEXT = TEXT.filter(lambda t: "\0" not in t)  # os.environ cannot hold NUL
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line_error_or_ok(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code == 0:
        return
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "error" in last, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


@pytest.fixture(autouse=True)
def _secret_registry_restored() -> Iterator[None]:
    """Loading registers every token/address secret process-wide (config.redact); fuzzed
    "secrets" such as `true` or `/proc` would then be masked in later tests' output."""
    with redact._lock:
        saved = (set(redact._registered), redact._pattern)
    yield
    with redact._lock:
        redact._registered.clear()
        redact._registered.update(saved[0])
        redact._pattern = saved[1]


@pytest.fixture
def clean_env(tmp_path: Path) -> Iterator[Path]:
    """No pilot settings in os.environ, cwd in a scratch dir (relative paths land there)."""
    old_cwd = os.getcwd()
    os.chdir(tmp_path)
    keep = {k: v for k, v in os.environ.items() if "EWMS" not in k and k != "_CONDOR_SCRATCH_DIR"}
    with mock.patch.dict(os.environ, keep, clear=True):
        try:
            yield tmp_path
        finally:
            os.chdir(old_cwd)


@FUZZ
@given(name=st.sampled_from(NAMES), text=TEXT)
def test_any_text_in_any_variable(name: str, text: str) -> None:
    try:
        cfg = load_config({**BASE, name: text})
    except ConfigError as e:
        assert "\n" not in str(e)
        assert e.variable in str(e)
    else:
        assert isinstance(cfg, PilotConfig)


@FUZZ
@given(suffix=TEXT.filter(lambda t: "\0" not in t and "=" not in t), text=TEXT)
def test_any_unknown_name(suffix: str, text: str) -> None:
    try:
        load_config({**BASE, "EWMS_PILOT_" + suffix: text})
    except ConfigError as e:
        assert "\n" not in str(e)


@FUZZ
@given(name=st.sampled_from(NAMES), text=ENV_TEXT)
def test_config_check_command(
    clean_env: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    with mock.patch.dict(os.environ, {**BASE, name: text}):
        code = main(["config", "--check"])
    one_line_error_or_ok(code, capsys.readouterr().err)


@FUZZ
@given(interval=TEXT)
def test_run_progress_interval(clean_env: Path, capsys: pytest.CaptureFixture[str], interval: str) -> None:
    # no pilot settings in the environment: either the option or the config is the one error
    code = main(["run", "--progress-interval", interval])
    assert code == 2
    one_line_error_or_ok(code, capsys.readouterr().err)


def _local(db: Path, queue: str = "q") -> list[str]:
    return ["--broker-type", "local", "--broker-address", str(db), "--queue", queue]


@FUZZ
@given(option=st.sampled_from(["--queue", "--timeout", "--max", "--auth-token-env"]), value=TEXT)
def test_queue_get_options(
    clean_env: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    db = clean_env / "q.db"
    events = clean_env / "events.txt"
    events.write_text("one\n")
    args = {"--queue": "q", "--timeout": "0", "--max": "1", "--auth-token-env": "EWMS_PILOT_QUEUE_AUTH_TOKEN"}
    args[option] = value
    assert main(["queue", "put", *_local(db, args["--queue"]), str(events)]) in (0, 2)
    capsys.readouterr()
    argv = ["queue", "get", "--broker-type", "local", "--broker-address", str(db)]
    for key, val in args.items():
        argv += [key, val]
    code = main(argv)  # never waits long: --max 1 with an event queued, or --timeout 0
    one_line_error_or_ok(code, capsys.readouterr().err)


@FUZZ
@given(lines=st.lists(TEXT, max_size=4), as_json=st.booleans(), name=TEXT)
def test_queue_put_input_and_file_names(
    clean_env: Path, capsys: pytest.CaptureFixture[str], lines: list[str], as_json: bool, name: str
) -> None:
    events = clean_env / "events.txt"
    events.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), errors="surrogateescape")
    files = [str(events)] + ([name] if name and name != "-" else [])
    code = main(["queue", "put", *(["--json"] if as_json else []), *_local(clean_env / "q.db"), *files])
    one_line_error_or_ok(code, capsys.readouterr().err)


@FUZZ
@given(
    broker_type=TEXT,
    address=TEXT.filter(lambda t: not t.startswith(("/", "~")) and ".." not in t),
)
def test_queue_local_broker_options(
    clean_env: Path, capsys: pytest.CaptureFixture[str], broker_type: str, address: str
) -> None:
    # relative addresses only: a local queue is a file, and it must land in the scratch cwd
    argv = ["queue", "count", "--broker-type", broker_type, "--broker-address", address, "--queue", "q"]
    code = main(argv)
    one_line_error_or_ok(code, capsys.readouterr().err)


@FUZZ
@given(broker_type=st.sampled_from(["rabbitmq", "nats", "pulsar"]), address=TEXT)
def test_queue_broker_address(
    clean_env: Path, capsys: pytest.CaptureFixture[str], broker_type: str, address: str
) -> None:
    # `count` is local-only: a valid address ends in that one-line refusal, before any connection
    argv = ["queue", "count", "--broker-type", broker_type, "--broker-address", address, "--queue", "q"]
    code = main(argv)
    assert code == 2
    one_line_error_or_ok(code, capsys.readouterr().err)


@FUZZ
@given(broker_type=st.sampled_from(["local", "rabbitmq", "nats"]), name=TEXT, address=ENV_TEXT)
def test_queue_broker_address_env(
    clean_env: Path, capsys: pytest.CaptureFixture[str], broker_type: str, name: str, address: str
) -> None:
    # the address from a variable: any name (mostly unset or no name at all), any value in it
    with mock.patch.dict(os.environ, {"EWMS_FUZZ_ADDRESS": address}):
        for option in (name, "EWMS_FUZZ_ADDRESS"):
            argv = ["queue", "count", "--broker-type", broker_type, "--broker-address-env", option, "--queue", "q"]
            code, err = main(argv), capsys.readouterr().err
            if code == 5:  # a valid local address whose database does not exist: a broker error, one line
                assert broker_type == "local" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
                continue
            one_line_error_or_ok(code, err)


@FUZZ
@given(argv=st.lists(TEXT, max_size=6))
def test_any_argv(clean_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code = main(argv)
    one_line_error_or_ok(code, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["config", "--check"], {"EWMS_PILOT_TASK_ENV_JSON": "[" * 20000}),
        ([], {"EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "1e300"}),
        (["queue", "get", *_local(Path("q.db")), "--timeout", "inf"], {}),
        (["run", "--progress-interval", "0"], {}),
        # found by test_queue_broker_address_env: "\x1e" (and \u2028, \x85, ...) end a line for splitlines
        (["queue", "count", "--broker-type", "local", "--broker-address-env", "A", "--queue", "q"], {"A": "\x1e/0"}),
    ],
)
def test_real_processes(tmp_path: Path, argv: list[str], env: dict[str, str]) -> None:
    clean = {k: v for k, v in os.environ.items() if "EWMS_PILOT" not in k}
    res = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", *argv], env={**clean, **BASE, **env}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


AD_NUMBER = st.one_of(
    st.sampled_from(["1e20", "1e300", "1e400", "-1", "0", "0.5", "1" * 30, "31622401", "3600", "nan"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False).map(repr),
)
JOB_AD_ATTRS = ["OriginalTime", "AllowedJobDuration", "JobCurrentStartDate", "RequestCpus", "RequestMemory",
                "RequestDisk"]  # fmt: skip
MACHINE_AD_ATTRS = ["Cpus", "Memory", "Disk"]


@FUZZ
@given(
    job=st.dictionaries(st.sampled_from(JOB_AD_ATTRS), AD_NUMBER, min_size=1),
    machine=st.dictionaries(st.sampled_from(MACHINE_AD_ATTRS), AD_NUMBER),
)
def test_any_number_in_the_job_and_machine_ads(
    clean_env: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    job: dict[str, str], machine: dict[str, str],
) -> None:
    """HTCondor's ads are not ours to validate: any number in them gives a working config (a value
    out of range is ignored with a warning naming its attribute), never a traceback."""
    ads = {}
    for var, attrs in (("_CONDOR_JOB_AD", job), ("_CONDOR_MACHINE_AD", machine)):
        if attrs:
            path = clean_env / var
            path.write_text("".join(f"{k} = {v}\n" for k, v in attrs.items()))
            ads[var] = str(path)
    caplog.clear()
    with mock.patch.dict(os.environ, {**BASE, **ads}):
        code = main(["config", "--check"])
    out = capsys.readouterr()
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert code == 0, out.err
    assert "Traceback" not in out.err, out.err
    for name in ("OriginalTime", "AllowedJobDuration"):
        if float(job.get(name, "0")) > MAX_SECONDS:
            assert f"{name} = " in warned and "ignored" in warned, warned  # named, and ignored


def test_a_walltime_beyond_a_year_in_the_job_ad_is_ignored(tmp_path: Path) -> None:
    """`OriginalTime = 1e20` crashed `config --check` and the pilot's start (OverflowError)."""
    ad = tmp_path / ".job.ad"
    ad.write_text("OriginalTime = 1e20\nRequestCpus = 1\n")
    clean = {k: v for k, v in os.environ.items() if "EWMS_PILOT" not in k}
    res = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", "config", "--check"], env={**clean, **BASE, "_CONDOR_JOB_AD": str(ad)},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "OriginalTime = 1e+20 is out of range" in res.stderr  # named, then ignored:
    assert "(HTCondor job ad)" in res.stdout and "lifetime" not in res.stdout.splitlines()[-1]


def test_an_operator_line_escapes_whatever_would_break_it() -> None:
    """Messages quote paths and addresses raw in places; the one line the operator gets stays one line."""
    text = "a\nb\rc\x0bd\x0ce\x1cf\x1dg\x1eh\x85i\u2028j\u2029k\tl"
    line = one_line(text)
    assert line.splitlines() == [line] and line.isprintable()
    assert line == "a\\nb\\rc\\x0bd\\x0ce\\x1cf\\x1dg\\x1eh\\x85i\\u2028j\\u2029k\\tl"
    assert one_line("plain – ünïcode ✓") == "plain – ünïcode ✓"  # printable text is left as it is
