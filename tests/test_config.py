"""Configuration: what a user sets in `EWMS_PILOT_*` and what the pilot makes of it."""

from __future__ import annotations

import dataclasses as dc
import logging
from pathlib import Path

import pytest
from config_env import MINIMAL as BASE_ENV

from ewms_pilot.config.banner import effective_config_lines
from ewms_pilot.config.loader import config_as_environ, load_config
from ewms_pilot.config.model import ChirpDest, ContainerPlatform, PilotConfig, TaskMode
from ewms_pilot.config.redact import redact_url
from ewms_pilot.config.table import (
    END_MARKER,
    MISSING_MARKERS,
    START_MARKER,
    env_var_table_markdown,
    readme_with_table,
    update_readme,
)
from ewms_pilot.config.variables import VARIABLES
from ewms_pilot.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"
TOKEN = "tok-5ecret-do-not-print"
URL_PASSWORD = "url-pa55word"

MINIMAL = BASE_ENV


def env(**changes: str | None) -> dict[str, str]:
    """MINIMAL with changes; a None value removes the variable."""
    out = dict(MINIMAL)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def config_error(environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as exc_info:
        load_config(environ)
    return exc_info.value


# ---------------------------------------------------------------------------
# invalid values: (changes, variable reported, value shown, part of "expected")

P = "EWMS_PILOT_"
INVALID: list[tuple[str, dict[str, str | None], str, str, str]] = [
    (
        "int-not-a-number",
        {P + "MAX_CONCURRENT_TASKS": "four"},
        P + "MAX_CONCURRENT_TASKS",
        "four",
        "integer from 1 to",
    ),
    ("int-float-text", {P + "PREFETCH": "1.5"}, P + "PREFETCH", "1.5", "integer from 1 to"),
    (
        "concurrency-zero",
        {P + "MAX_CONCURRENT_TASKS": "0"},
        P + "MAX_CONCURRENT_TASKS",
        "0",
        "integer from 1 to",
    ),
    (
        "concurrency-negative",
        {P + "MAX_CONCURRENT_TASKS": "-2"},
        P + "MAX_CONCURRENT_TASKS",
        "-2",
        "integer from 1 to",
    ),
    ("prefetch-zero", {P + "PREFETCH": "0"}, P + "PREFETCH", "0", "integer from 1 to"),
    (
        "float-not-a-number",
        {P + "HTCHIRP_RATELIMIT_INTERVAL": "soon"},
        P + "HTCHIRP_RATELIMIT_INTERVAL",
        "soon",
        "seconds >= 0",
    ),
    (
        "float-nan",
        {P + "RECONNECT_DEADLINE": "nan"},
        P + "RECONNECT_DEADLINE",
        "nan",
        "seconds >= 0",
    ),
    ("task-timeout-negative", {P + "TASK_TIMEOUT": "-5"}, P + "TASK_TIMEOUT", "-5", "seconds > 0"),
    ("task-timeout-zero", {P + "TASK_TIMEOUT": "0"}, P + "TASK_TIMEOUT", "0", "seconds > 0"),
    (
        "init-timeout-negative",
        {P + "INIT_IMAGE": "img", P + "INIT_TIMEOUT": "-1"},
        P + "INIT_TIMEOUT",
        "-1",
        "seconds > 0",
    ),
    (
        "teardown-timeout-text",
        {P + "TEARDOWN_TIMEOUT": "1h"},
        P + "TEARDOWN_TIMEOUT",
        "1h",
        "seconds > 0",
    ),
    (
        "incoming-timeout-negative",
        {P + "TIMEOUT_QUEUE_INCOMING": "-1"},
        P + "TIMEOUT_QUEUE_INCOMING",
        "-1",
        "seconds > 0",
    ),
    (
        "first-message-timeout-negative",
        {P + "TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "-3"},
        P + "TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE",
        "-3",
        "seconds > 0",
    ),
    (
        "quarantine-negative",
        {P + "QUARANTINE_TIME": "-1"},
        P + "QUARANTINE_TIME",
        "-1",
        "seconds >= 0",
    ),
    (
        "shutdown-grace-negative",
        {P + "SHUTDOWN_GRACE": "-1"},
        P + "SHUTDOWN_GRACE",
        "-1",
        "seconds >= 0",
    ),
    ("max-deliveries-zero", {P + "MAX_DELIVERIES": "0"}, P + "MAX_DELIVERIES", "0", "integer from 1 to"),
    (
        "publish-retries-negative",
        {P + "PUBLISH_RETRIES": "-1"},
        P + "PUBLISH_RETRIES",
        "-1",
        "integer from 0 to",
    ),
    (
        "publish-deadline-zero",
        {P + "PUBLISH_DEADLINE": "0"},
        P + "PUBLISH_DEADLINE",
        "0",
        "seconds > 0",
    ),
    ("bool", {P + "HTCHIRP": "maybe"}, P + "HTCHIRP", "maybe", "true/false"),
    (
        "platform",
        {P + "CONTAINER_PLATFORM": "singularity"},
        P + "CONTAINER_PLATFORM",
        "singularity",
        "docker|podman|apptainer|process",
    ),
    (
        "platform-old-spelling",
        {"_EWMS_PILOT_CONTAINER_PLATFORM": "lxc"},
        "_EWMS_PILOT_CONTAINER_PLATFORM",
        "lxc",
        "docker|podman|apptainer|process",
    ),
    (
        "broker-type-incoming",
        {P + "QUEUE_INCOMING_BROKER_TYPE": "kafka"},
        P + "QUEUE_INCOMING_BROKER_TYPE",
        "kafka",
        "rabbitmq|nats|pulsar|local",
    ),
    (
        "broker-type-outgoing",
        {P + "QUEUE_OUTGOING_BROKER_TYPE": "zeromq"},
        P + "QUEUE_OUTGOING_BROKER_TYPE",
        "zeromq",
        "rabbitmq|nats|pulsar|local",
    ),
    (
        "chirp-dest",
        {P + "HTCHIRP_DEST": "STDOUT"},
        P + "HTCHIRP_DEST",
        "STDOUT",
        "JOB_ATTR|JOB_EVENT_LOG",
    ),
    ("task-mode", {P + "TASK_MODE": "hot"}, P + "TASK_MODE", "hot", "oneshot|warm"),
    (
        "log-level",
        {P + "CL_LOG": "LOUD"},
        P + "CL_LOG",
        "LOUD",
        "DEBUG|INFO|WARNING|ERROR|CRITICAL",
    ),
    (
        "env-json-bad-json",
        {P + "TASK_ENV_JSON": "{bad"},
        P + "TASK_ENV_JSON",
        "{bad",
        "invalid JSON",
    ),
    (
        "env-json-not-object",
        {P + "TASK_ENV_JSON": "[1, 2]"},
        P + "TASK_ENV_JSON",
        "[1, 2]",
        "not a JSON array",
    ),
    (
        "env-json-string",
        {P + "INIT_IMAGE": "img", P + "INIT_ENV_JSON": '"A=b"'},
        P + "INIT_ENV_JSON",
        '"A=b"',
        "not a JSON string",
    ),
    (
        "env-json-list-value",
        {P + "TASK_ENV_JSON": '{"OK": "x", "PATHS": ["/a"]}'},
        P + "TASK_ENV_JSON",
        '"PATHS": ["/a"]',
        "key 'PATHS' has a JSON array",
    ),
    (
        "env-json-null-value",
        {P + "TEARDOWN_ENV_JSON": '{"DEBUG": null}'},
        P + "TEARDOWN_ENV_JSON",
        '{"DEBUG": null}',
        "key 'DEBUG' has a JSON null",
    ),
    (
        "env-json-bool-value",
        {P + "TASK_ENV_JSON": '{"VERBOSE": true}'},
        P + "TASK_ENV_JSON",
        '{"VERBOSE": true}',
        "key 'VERBOSE' has a JSON boolean",
    ),
    (
        "fail-patterns-bad-regex",
        {P + "TASK_FAIL_PATTERNS": '["ok", "(unclosed"]'},
        P + "TASK_FAIL_PATTERNS",
        "(unclosed",
        "item 1",
    ),
    (
        "fail-patterns-not-json",
        {P + "TASK_FAIL_PATTERNS": "Error.*"},
        P + "TASK_FAIL_PATTERNS",
        "Error.*",
        "JSON or Python list of regular expressions",
    ),
    (
        "external-dir-relative",
        {P + "EXTERNAL_DIRECTORIES": "/cvmfs,data/in"},
        P + "EXTERNAL_DIRECTORIES",
        "/cvmfs,data/in",
        "'data/in' is not an absolute path",
    ),
    (
        "okay-errors-not-names",
        {P + "OKAY_ERRORS": "Timeout-Error"},
        P + "OKAY_ERRORS",
        "Timeout-Error",
        "not a class name",
    ),
    ("infile-ext-slash", {P + "INFILE_EXT": "in/x"}, P + "INFILE_EXT", "in/x", "file extension"),
    (
        "missing-queue-incoming",
        {P + "QUEUE_INCOMING": None},
        P + "QUEUE_INCOMING",
        "''",
        "incoming queue (required)",
    ),
    (
        "missing-queue-outgoing",
        {P + "QUEUE_OUTGOING": ""},
        P + "QUEUE_OUTGOING",
        "''",
        "outgoing queue (required)",
    ),
    (
        "missing-broker-type",
        {P + "QUEUE_INCOMING_BROKER_TYPE": None},
        P + "QUEUE_INCOMING_BROKER_TYPE",
        "''",
        "(required)",
    ),
    (
        "missing-broker-address",
        {P + "QUEUE_OUTGOING_BROKER_ADDRESS": None},
        P + "QUEUE_OUTGOING_BROKER_ADDRESS",
        "''",
        "(required",
    ),
    (
        "missing-task-image",
        {P + "TASK_IMAGE": None},
        P + "TASK_IMAGE",
        "''",
        "unless EWMS_PILOT_CONTAINER_PLATFORM=process",
    ),
    (
        "process-without-args",
        {P + "CONTAINER_PLATFORM": "process", P + "TASK_ARGS": "  "},
        P + "TASK_ARGS",
        "'  '",
        "required when EWMS_PILOT_CONTAINER_PLATFORM=process",
    ),
    (
        "quarantine-without-stop",
        {P + "QUARANTINE_TIME": "30", P + "STOP_LISTENING_ON_TASK_ERROR": "false"},
        P + "QUARANTINE_TIME",
        "30",
        "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR is false",
    ),
    (
        "deadletter-is-incoming",
        {P + "QUEUE_DEADLETTER": "q-in"},
        P + "QUEUE_DEADLETTER",
        "q-in",
        "other than EWMS_PILOT_QUEUE_INCOMING",
    ),
]


@pytest.mark.parametrize(
    ("changes", "variable", "shown", "expected"),
    [pytest.param(c, var, shown, exp, id=i) for i, c, var, shown, exp in INVALID],
)
def test_invalid_value_names_variable_value_and_expectation(
    changes: dict[str, str | None], variable: str, shown: str, expected: str
) -> None:
    err = config_error(env(**changes))
    message = str(err)
    assert err.variable == variable
    assert message.startswith(f"{variable}=")
    assert "\n" not in message
    assert shown in message
    assert expected in message


def test_config_error_is_one_line_even_for_multiline_value() -> None:
    err = config_error(env(EWMS_PILOT_TASK_ENV_JSON='{\n  "A": [1]\n}'))
    assert err.variable == "EWMS_PILOT_TASK_ENV_JSON"
    assert "\n" not in str(err)


def test_first_problem_in_table_order_is_reported() -> None:
    err = config_error(env(EWMS_PILOT_TASK_TIMEOUT="-1", EWMS_PILOT_HTCHIRP="maybe"))
    assert err.variable == "EWMS_PILOT_TASK_TIMEOUT"


def test_missing_variable_error_names_the_misspelling_that_stood_for_it() -> None:
    err = config_error(env(EWMS_PILOT_QUEUE_INCOMING=None, EWMS_PILOT_QUEUE_INCOMNG="q-in"))
    assert err.variable == "EWMS_PILOT_QUEUE_INCOMING"
    assert "EWMS_PILOT_QUEUE_INCOMNG is set: misspelled?" in str(err)


def test_unrelated_unknown_variables_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config(
            env(EWMS_PILOT_SOMETHING_ELSE_ENTIRELY="x", EWMS_TASK_INFILE="/x", HOME="/root")
        )
    assert cfg.task.image == MINIMAL["EWMS_PILOT_TASK_IMAGE"]
    assert "EWMS_PILOT_SOMETHING_ELSE_ENTIRELY" in caplog.text
    assert "EWMS_TASK_INFILE" not in caplog.text


# ---------------------------------------------------------------------------
# secrets


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(
            {"EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKN": TOKEN, "EWMS_PILOT_STRICT_CONFIG": "true"},
            id="typo-of-token-name",
        ),
        pytest.param({"EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN": TOKEN + "\0"}, id="invalid-token"),
    ],
)
def test_errors_never_show_a_token(changes: dict[str, str]) -> None:
    err = config_error(env(**changes))
    assert "'***'" in str(err)
    assert TOKEN not in str(err)
    assert TOKEN not in repr(err.value)


def test_errors_never_show_a_url_password() -> None:
    address = f"amqp://user:{URL_PASSWORD}@broker:99999"
    err = config_error(env(EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS=address))
    assert err.variable == "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS"
    assert URL_PASSWORD not in str(err)
    assert "amqp://user:***@broker:99999" in str(err)


def _secret_env() -> dict[str, str]:
    return env(
        EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN=TOKEN,
        EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE="nats",
        EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS=f"nats://pilot:{URL_PASSWORD}@nats.example:4222",
    )


def test_secrets_never_in_repr_of_config() -> None:
    cfg = load_config(_secret_env())
    assert cfg.incoming.auth_token == TOKEN  # kept for the broker...
    assert URL_PASSWORD in cfg.outgoing.address
    text = repr(cfg) + str(cfg)
    assert TOKEN not in text  # ...but never printed
    assert URL_PASSWORD not in text
    assert "nats://pilot:***@nats.example:4222" in text


@pytest.mark.parametrize("source", ["config", "environ"])
def test_effective_config_lines_mask_secrets(source: str) -> None:
    environ = _secret_env()
    lines = effective_config_lines(load_config(environ) if source == "config" else environ)
    joined = "\n".join(lines)
    assert TOKEN not in joined
    assert URL_PASSWORD not in joined
    assert "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN=***" in lines
    assert any(
        line.startswith("EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN=") and "***" not in line
        for line in lines
    )  # unset secret: shown empty
    assert any("nats://pilot:***@nats.example:4222" in line for line in lines)


def test_effective_config_lines_cover_every_variable_once() -> None:
    for source in (load_config(MINIMAL), MINIMAL):
        lines = effective_config_lines(source)
        assert [line.split("=", 1)[0] for line in lines] == [v.name for v in VARIABLES]
        assert all("\n" not in line for line in lines)


def test_effective_config_lines_from_environ_mark_defaults_and_old_names() -> None:
    lines = effective_config_lines(env(_EWMS_PILOT_CONTAINER_PLATFORM="podman"))
    assert "EWMS_PILOT_PREFETCH=1 (default)" in lines
    assert "EWMS_PILOT_QUEUE_INCOMING=q-in" in lines
    assert "EWMS_PILOT_CONTAINER_PLATFORM=podman (from _EWMS_PILOT_CONTAINER_PLATFORM)" in lines


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672", "amqp://guest:***@127.0.0.1:5672"),
        ("amqp://guest:guest@127.0.0.1:5672/vhost", "amqp://guest:***@127.0.0.1:5672/vhost"),
        ("nats://u:p%40ss@h1:4222,u:x@h2:4222", "nats://u:***@h1:4222,u:***@h2:4222"),
        ("user:pass@host", "user:***@host"),
        ("pulsar://user:p@ss@host:6650", "pulsar://user:***@host:6650"),  # unencoded @
        ("amqp://user@host", "amqp://user@host"),
        ("amqp://user:@host", "amqp://user:@host"),
        ("localhost", "localhost"),
        ("127.0.0.1:5672", "127.0.0.1:5672"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# ---------------------------------------------------------------------------
# defaults and spellings


def test_defaults_equal_1x() -> None:
    cfg = load_config(MINIMAL)
    assert cfg.task.args == ""
    assert dict(cfg.task.env) == {}
    assert cfg.task.timeout is None
    assert cfg.init is None
    assert cfg.teardown is None
    assert cfg.incoming.auth_token == "" and cfg.outgoing.auth_token == ""
    assert cfg.data_dir == Path("/ewms-pilot-data")
    assert cfg.infile_ext == ".in"
    assert cfg.outfile_ext == ".out"
    assert cfg.prefetch == 1
    assert cfg.timeout_incoming == 1
    assert cfg.timeout_first_message == 1
    assert cfg.external_directories == ()
    assert cfg.log_level == "INFO"
    assert cfg.log_level_third_party == "WARNING"
    assert cfg.htchirp is False
    assert cfg.htchirp_dest is ChirpDest.JOB_ATTR
    assert cfg.htchirp_ratelimit_interval == 60
    assert cfg.stop_listening_on_task_error is True
    assert cfg.okay_errors == frozenset()
    assert cfg.max_concurrent_tasks == 1
    assert cfg.keep_all_task_files is False
    assert cfg.dump_task_output is False
    assert cfg.quarantine_time == 0
    assert cfg.container_debug is False
    assert cfg.container_platform is ContainerPlatform.DOCKER
    assert cfg.apptainer_build_workdir == Path("/var/tmp")
    assert cfg.apptainer_image_directory_must_be_present is True
    assert cfg.docker_shm_size is None
    # 2.x additions
    assert cfg.task_mode is TaskMode.ONESHOT
    assert cfg.task_fail_patterns == ()
    assert cfg.shutdown_grace == 10
    assert cfg.max_deliveries == 3
    assert cfg.queue_deadletter == ""
    assert cfg.publish_retries == 5
    assert cfg.publish_deadline == 60
    assert cfg.reconnect_deadline == 120


def test_table_defaults_agree_with_model_defaults() -> None:
    cfg = load_config(MINIMAL)
    for field in dc.fields(PilotConfig):
        if field.default is not dc.MISSING and field.compare:  # compare=False: found, not configured (slot)
            assert getattr(cfg, field.name) == field.default, field.name


def test_first_message_timeout_follows_incoming_timeout_unless_set() -> None:
    assert load_config(env(EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="7")).timeout_first_message == 7
    cfg = load_config(
        env(
            EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="7",
            EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE="300",
        )
    )
    assert (cfg.timeout_incoming, cfg.timeout_first_message) == (7, 300)


def test_blank_non_text_values_mean_default() -> None:
    cfg = load_config(
        env(EWMS_PILOT_PREFETCH="", EWMS_PILOT_HTCHIRP=" ", EWMS_PILOT_TASK_TIMEOUT="")
    )
    assert (cfg.prefetch, cfg.htchirp, cfg.task.timeout) == (1, False, None)


def test_blank_extension_stays_blank_as_in_1x() -> None:
    assert load_config(env(EWMS_PILOT_OUTFILE_EXT="")).outfile_ext == ""


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[(w, True) for w in ("true", "TRUE", "True", "yes", "YES", "y", "t", "1", "on", "On")],
        *[(w, False) for w in ("false", "FALSE", "no", "No", "n", "f", "0", "off", "OFF")],
    ],
)
def test_boolean_spellings_like_wipac_dev_tools(text: str, value: bool) -> None:
    assert load_config(env(EWMS_PILOT_DUMP_TASK_OUTPUT=text)).dump_task_output is value


@pytest.mark.parametrize(
    "text",
    [
        "TaskTimeoutError ContainerRunError",  # 1.x (wipac-dev-tools) spelling: whitespace
        "TaskTimeoutError,ContainerRunError",
        " TaskTimeoutError, ContainerRunError ,",
        '["TaskTimeoutError", "ContainerRunError"]',
    ],
)
def test_okay_errors_spellings(text: str) -> None:
    cfg = load_config(env(EWMS_PILOT_OKAY_ERRORS=text))
    assert cfg.okay_errors == {"TaskTimeoutError", "ContainerRunError"}


def test_old_container_platform_spelling(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config(env(_EWMS_PILOT_CONTAINER_PLATFORM="apptainer"))
    assert cfg.container_platform is ContainerPlatform.APPTAINER
    assert "_EWMS_PILOT_CONTAINER_PLATFORM" in caplog.text


def test_platform_is_case_insensitive_and_new_spelling_wins() -> None:
    cfg = load_config(
        env(EWMS_PILOT_CONTAINER_PLATFORM="Podman", _EWMS_PILOT_CONTAINER_PLATFORM="docker")
    )
    assert cfg.container_platform is ContainerPlatform.PODMAN


def test_old_subproc_timeout_works_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config(env(EWMS_PILOT_SUBPROC_TIMEOUT="30"))
    assert cfg.task.timeout == 30
    assert "EWMS_PILOT_SUBPROC_TIMEOUT" in caplog.text
    assert "EWMS_PILOT_TASK_TIMEOUT" in caplog.text


def test_task_timeout_wins_over_old_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config(env(EWMS_PILOT_SUBPROC_TIMEOUT="30", EWMS_PILOT_TASK_TIMEOUT="60"))
    assert cfg.task.timeout == 60
    assert "Ignoring EWMS_PILOT_SUBPROC_TIMEOUT" in caplog.text


def test_bad_old_subproc_timeout_is_reported_under_its_own_name() -> None:
    err = config_error(env(EWMS_PILOT_SUBPROC_TIMEOUT="ten"))
    assert err.variable == "EWMS_PILOT_SUBPROC_TIMEOUT"


def test_data_dir_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(MINIMAL).data_dir == Path("/ewms-pilot-data")
    absolute = load_config(env(EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="/scratch/job1/"))
    assert absolute.data_dir == Path("/scratch/job1/ewms-pilot-data")
    relative = load_config(env(EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="work"))
    assert relative.data_dir == tmp_path / "work" / "ewms-pilot-data"
    assert load_config(env(EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST=".")).data_dir_parent == tmp_path


def test_process_platform_needs_no_image() -> None:
    cfg = load_config(
        env(
            EWMS_PILOT_CONTAINER_PLATFORM="process",
            EWMS_PILOT_TASK_IMAGE=None,
            EWMS_PILOT_TASK_ARGS="python3 -c 'print(1)' {{INFILE}}",
            EWMS_PILOT_INIT_ARGS="true",
        )
    )
    assert cfg.task.image == ""
    assert cfg.task.args == "python3 -c 'print(1)' {{INFILE}}"
    assert cfg.init is not None and cfg.init.args == "true"
    assert cfg.teardown is None


def test_broker_type_and_chirp_dest_are_normalized() -> None:
    cfg = load_config(
        env(
            EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE="RabbitMQ",
            EWMS_PILOT_HTCHIRP_DEST="job_event_log",
        )
    )
    assert cfg.incoming.broker_type == "rabbitmq"
    assert cfg.htchirp_dest is ChirpDest.JOB_EVENT_LOG


def test_env_json_accepts_integers_as_1x_did() -> None:
    cfg = load_config(env(EWMS_PILOT_TASK_ENV_JSON='{"N_THREADS": 4, "NAME": "x"}'))
    assert dict(cfg.task.env) == {"N_THREADS": "4", "NAME": "x"}


# ---------------------------------------------------------------------------
# full round trip


FULL = {
    "EWMS_PILOT_TASK_IMAGE": "registry.example/task:2",
    "EWMS_PILOT_TASK_ARGS": "--in {{INFILE}} --out {{OUTFILE}}",
    "EWMS_PILOT_TASK_ENV_JSON": '{"A": "1", "B": "two words"}',
    "EWMS_PILOT_TASK_TIMEOUT": "3600",
    "EWMS_PILOT_TASK_STALL_TIMEOUT": "900",
    "EWMS_PILOT_TASK_MODE": "oneshot",
    "EWMS_PILOT_MAX_CONCURRENT_TASKS": "4",
    "EWMS_PILOT_TASK_CPUS": "2",
    "EWMS_PILOT_TASK_MEMORY": "512M",
    "EWMS_PILOT_TASK_GPUS": "0",  # no GPU on this machine (tests/test_resources.py sets some)
    "EWMS_PILOT_TASK_LOG_MAX": "1g",
    "EWMS_PILOT_MAX_RESULT_SIZE": "1MiB",
    "EWMS_PILOT_LIFETIME": "7200",
    "EWMS_PILOT_MIN_FREE_DISK": "256M",
    "EWMS_PILOT_INIT_IMAGE": "registry.example/init:1",
    "EWMS_PILOT_INIT_ARGS": "--fetch",
    "EWMS_PILOT_INIT_ENV_JSON": '{"I": "x"}',
    "EWMS_PILOT_INIT_TIMEOUT": "120.5",
    "EWMS_PILOT_TEARDOWN_IMAGE": "registry.example/teardown:1",
    "EWMS_PILOT_TEARDOWN_ARGS": "--flush",
    "EWMS_PILOT_TEARDOWN_ENV_JSON": '{"T": "y"}',
    "EWMS_PILOT_TEARDOWN_TIMEOUT": "30",
    "EWMS_PILOT_QUEUE_INCOMING": "in-abc",
    "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": TOKEN,
    "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "nats",
    "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": "nats://127.0.0.1:4222",
    "EWMS_PILOT_PREFETCH": "8",
    "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "600",
    "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "45",
    "EWMS_PILOT_QUEUE_OUTGOING": "out-abc",
    "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN": TOKEN + "-out",
    "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "local",
    "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": "/tmp/out.sqlite",
    "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": "/scratch",
    "EWMS_PILOT_INFILE_EXT": ".json",
    "EWMS_PILOT_OUTFILE_EXT": ".pkl",
    "EWMS_PILOT_EXTERNAL_DIRECTORIES": "/usr/share,/etc",
    "EWMS_PILOT_KEEP_ALL_TASK_FILES": "yes",
    "EWMS_PILOT_DUMP_TASK_OUTPUT": "1",
    "EWMS_PILOT_CONTAINER_PLATFORM": "apptainer",
    "EWMS_PILOT_CONTAINER_DEBUG": "on",
    "_EWMS_PILOT_DOCKER_SHM_SIZE": "2g",
    "_EWMS_PILOT_APPTAINER_BUILD_WORKDIR": "/scratch/build",
    "_EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT": "false",
    "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "true",
    "EWMS_PILOT_OKAY_ERRORS": "TaskTimeoutError,ContainerRunError",
    "EWMS_PILOT_QUARANTINE_TIME": "300",
    "EWMS_PILOT_TASK_FAIL_PATTERNS": '["Segmentation fault", "CUDA error: .*"]',
    "EWMS_PILOT_SHUTDOWN_GRACE": "0",
    "EWMS_PILOT_MAX_DELIVERIES": "5",
    "EWMS_PILOT_MAX_REDELIVERIES": "7",
    "EWMS_PILOT_QUEUE_DEADLETTER": "dead-abc",
    "EWMS_PILOT_PUBLISH_RETRIES": "0",
    "EWMS_PILOT_PUBLISH_DEADLINE": "15",
    "EWMS_PILOT_RECONNECT_DEADLINE": "0",
    "EWMS_PILOT_CL_LOG": "debug",
    "EWMS_PILOT_CL_LOG_THIRD_PARTY": "ERROR",
    "EWMS_PILOT_HTCHIRP": "true",
    "EWMS_PILOT_HTCHIRP_DEST": "JOB_EVENT_LOG",
    "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "12.5",
    "EWMS_PILOT_STRICT_CONFIG": "true",
}


def test_full_config_covers_every_variable() -> None:
    assert set(FULL) == {v.name for v in VARIABLES}


def test_full_config_every_setting_lands() -> None:
    cfg = load_config(FULL)
    assert cfg.task.image == "registry.example/task:2"
    assert cfg.task.args == "--in {{INFILE}} --out {{OUTFILE}}"
    assert dict(cfg.task.env) == {"A": "1", "B": "two words"}
    assert cfg.task.timeout == 3600 and cfg.task_stall_timeout == 900
    assert cfg.task_mode is TaskMode.ONESHOT
    assert cfg.max_concurrent_tasks == 4
    assert (cfg.task_cpus, cfg.task_memory, cfg.task_gpus) == (2, 512 * 2**20, 0)
    assert (cfg.task_log_max, cfg.max_result_bytes) == (2**30, 2**20)
    assert cfg.min_free_disk == 256 * 2**20
    assert cfg.lifetime == 7200 and cfg.lifetime_end is not None and cfg.lifetime_end.source == "EWMS_PILOT_LIFETIME"
    assert cfg.init is not None and cfg.teardown is not None
    assert (cfg.init.image, cfg.init.args, dict(cfg.init.env), cfg.init.timeout) == (
        "registry.example/init:1",
        "--fetch",
        {"I": "x"},
        120.5,
    )
    assert (
        cfg.teardown.image,
        cfg.teardown.args,
        dict(cfg.teardown.env),
        cfg.teardown.timeout,
    ) == (
        "registry.example/teardown:1",
        "--flush",
        {"T": "y"},
        30,
    )
    assert (cfg.incoming.queue, cfg.incoming.broker_type, cfg.incoming.address) == (
        "in-abc",
        "nats",
        "nats://127.0.0.1:4222",
    )
    assert cfg.incoming.auth_token == TOKEN
    assert (cfg.outgoing.queue, cfg.outgoing.broker_type, cfg.outgoing.address) == (
        "out-abc",
        "local",
        "/tmp/out.sqlite",
    )
    assert cfg.outgoing.auth_token == TOKEN + "-out"
    assert (cfg.prefetch, cfg.timeout_first_message, cfg.timeout_incoming) == (8, 600, 45)
    assert cfg.data_dir == Path("/scratch/ewms-pilot-data")
    assert (cfg.infile_ext, cfg.outfile_ext) == (".json", ".pkl")
    assert cfg.external_directories == (
        Path("/usr/share"),
        Path("/etc"),
    )
    assert cfg.keep_all_task_files and cfg.dump_task_output and cfg.container_debug
    assert cfg.container_platform is ContainerPlatform.APPTAINER
    assert cfg.docker_shm_size == "2g"
    assert cfg.apptainer_build_workdir == Path("/scratch/build")
    assert cfg.apptainer_image_directory_must_be_present is False
    assert cfg.stop_listening_on_task_error is True
    assert cfg.okay_errors == {"TaskTimeoutError", "ContainerRunError"}
    assert cfg.quarantine_time == 300
    assert cfg.task_fail_patterns == ("Segmentation fault", "CUDA error: .*")
    assert (cfg.shutdown_grace, cfg.max_deliveries, cfg.queue_deadletter) == (0, 5, "dead-abc")
    assert cfg.max_redeliveries == 7
    assert (cfg.publish_retries, cfg.publish_deadline, cfg.reconnect_deadline) == (0, 15, 0)
    assert (cfg.log_level, cfg.log_level_third_party) == ("DEBUG", "ERROR")
    assert cfg.htchirp is True
    assert cfg.htchirp_dest is ChirpDest.JOB_EVENT_LOG
    assert cfg.htchirp_ratelimit_interval == 12.5
    assert cfg.strict_config is True


def test_full_config_reaches_every_field() -> None:
    """Every defaulted PilotConfig field is reachable from some variable."""
    cfg = load_config(FULL)
    untouched = [
        f.name
        for f in dc.fields(PilotConfig)
        if f.default is not dc.MISSING and f.compare and getattr(cfg, f.name) == f.default
    ]
    # true is needed for quarantine; warm mode refuses the per-event placeholders FULL uses;
    # GPUs need a slot that has some (tests/test_resources.py)
    assert sorted(untouched) == ["stop_listening_on_task_error", "task_gpus", "task_mode"]


def test_round_trip_through_environ_text() -> None:
    for environ in (
        FULL,
        MINIMAL,
        env(EWMS_PILOT_CONTAINER_PLATFORM="process", EWMS_PILOT_TASK_ARGS="echo"),
    ):
        cfg = load_config(environ)
        assert load_config(config_as_environ(cfg)) == cfg


def test_round_trip_logs_no_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config(config_as_environ(load_config(MINIMAL)))
    assert caplog.text == ""


# ---------------------------------------------------------------------------
# overrides (the 1.x `consume_and_reply(**kwargs)` path)


def test_overrides_accept_typed_values_and_win_over_environ() -> None:
    cfg = load_config(
        env(EWMS_PILOT_TASK_TIMEOUT="10", EWMS_PILOT_MAX_CONCURRENT_TASKS="2"),
        overrides={
            "EWMS_PILOT_TASK_TIMEOUT": 99,
            "EWMS_PILOT_MAX_CONCURRENT_TASKS": 3,
            "EWMS_PILOT_TASK_ENV_JSON": {"K": "v"},
            "EWMS_PILOT_OKAY_ERRORS": ["TaskTimeoutError"],
            "EWMS_PILOT_HTCHIRP": True,
            "EWMS_PILOT_QUEUE_INCOMING": "from-kwargs",
            "EWMS_PILOT_CONTAINER_PLATFORM": ContainerPlatform.PODMAN,
            "EWMS_PILOT_TASK_FAIL_PATTERNS": ["oops"],
            "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": Path("/srv"),
        },
    )
    assert cfg.task.timeout == 99
    assert cfg.max_concurrent_tasks == 3
    assert dict(cfg.task.env) == {"K": "v"}
    assert cfg.okay_errors == {"TaskTimeoutError"}
    assert cfg.htchirp is True
    assert cfg.incoming.queue == "from-kwargs"
    assert cfg.container_platform is ContainerPlatform.PODMAN
    assert cfg.task_fail_patterns == ("oops",)
    assert cfg.data_dir_parent == Path("/srv")


def test_override_none_means_unset() -> None:
    cfg = load_config(
        env(EWMS_PILOT_TASK_TIMEOUT="10"), overrides={"EWMS_PILOT_TASK_TIMEOUT": None}
    )
    assert cfg.task.timeout is None


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"EWMS_PILOT_MAX_CONCURRENT_TASKS": 0}, "EWMS_PILOT_MAX_CONCURRENT_TASKS"),
        ({"EWMS_PILOT_MAX_CONCURRENT_TASKS": True}, "EWMS_PILOT_MAX_CONCURRENT_TASKS"),
        ({"EWMS_PILOT_TASK_ENV_JSON": {"K": object()}}, "EWMS_PILOT_TASK_ENV_JSON"),
        ({"EWMS_PILOT_QUEUE_INCOMING": None}, "EWMS_PILOT_QUEUE_INCOMING"),
        ({"EWMS_PILOT_NOT_A_SETTING": 1}, "EWMS_PILOT_NOT_A_SETTING"),
    ],
)
def test_bad_overrides(overrides: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config(MINIMAL, overrides=overrides)
    assert exc_info.value.variable == variable


def test_override_of_unknown_token_name_is_masked() -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config(MINIMAL, overrides={"EWMS_PILOT_INCOMING_TOKEN": TOKEN})
    assert TOKEN not in str(exc_info.value)


# ---------------------------------------------------------------------------
# the Markdown table and README


def test_table_has_one_row_per_variable() -> None:
    table = env_var_table_markdown()
    lines = table.splitlines()
    assert lines[0] == "| Variable | Default | Meaning |"
    assert lines[1] == "| --- | --- | --- |"
    assert len(lines) == 2 + len(VARIABLES)
    for line, var in zip(lines[2:], VARIABLES, strict=True):
        assert line.startswith(f"| `{var.name}` |")
        assert line.count(" | ") == 2  # exactly three cells: `|` inside text is escaped
    assert "`EWMS_PILOT_SUBPROC_TIMEOUT`" in table  # old names are documented
    assert "| `EWMS_PILOT_PREFETCH` | `1` |" in table


def test_update_readme_rewrites_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n{START_MARKER}\nold table\n{END_MARKER}\n\nrest\n")
    assert update_readme(readme) is True
    text = readme.read_text()
    assert (
        text
        == f"# Title\n\nintro\n{START_MARKER}\n{env_var_table_markdown()}{END_MARKER}\n\nrest\n"
    )
    assert update_readme(readme) is False  # already current
    assert readme.read_text() == text


def test_update_readme_without_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(ValueError, match=MISSING_MARKERS):
        update_readme(readme)
    assert readme.read_text() == "# Title\n"


def test_readme_table_is_current() -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else ""
    if START_MARKER not in text or END_MARKER not in text:
        pytest.fail(f"{MISSING_MARKERS} ({START_MARKER} ... {END_MARKER}): {README}")
    assert readme_with_table(text) == text, (
        "README.md env table is stale: run `python -c 'from pathlib import Path; "
        'from ewms_pilot.config.table import update_readme; update_readme(Path("README.md"))\'`'
    )


def test_warm_mode_refuses_per_event_placeholders() -> None:
    env = dict(FULL, EWMS_PILOT_TASK_MODE="warm")
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert info.value.variable == "EWMS_PILOT_TASK_ARGS" and "{{INFILE}}" in str(info.value)
    warm = dict(env, EWMS_PILOT_TASK_ARGS="worker --hub <<DATA_HUB>>", EWMS_PILOT_TASK_STALL_TIMEOUT="")
    assert load_config(warm).task_mode is TaskMode.WARM  # (stall detection is one-shot only)
