"""The canary audit: a distinct canary in every secret-bearing input, grep every output for it.

Real pilots (subprocesses; real RabbitMQ and NATS; process runtime) run with
first- and third-party logging at DEBUG and chirp enabled against the protocol
server, through success, task failure, broker errors and config errors, plus
`config --check`, `queue put/get` and `consume_and_reply`. Then stdout, stderr,
every file under the data dir (journal, kept task dirs), every chirp request the
server received and the API's exception text are searched for every canary.
(The task's environment and `ps` listings are tests/test_*sandbox*'s part.)

A canary is searched by its alphanumeric core, so a percent-encoded, JSON- or
repr-escaped copy of a password with a comma and a space counts as a leak too.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
from chirp_server import ChirpServer
from mq_helpers import drain, drain_with_headers, publish
from pilot_proc import base_env, run_pilot

# fails on "bad", copies the event otherwise (prints nothing secret: the task is not audited here)
TASK = (
    "import sys; d=open(sys.argv[1]).read()\n"
    "if 'bad' in d: sys.exit('task refused this event')\n"
    "open(sys.argv[2],'w').write(d)"
)


def _canary(kind: str) -> str:
    return f"Cnry{kind}{uuid.uuid4().hex[:10]}"


@dc.dataclass
class Audit:
    """Canaries by what they stand for, and every output collected so far (name -> text)."""

    canaries: dict[str, str]
    outputs: dict[str, str] = dc.field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.outputs[name] = text

    def add_files(self, name: str, root: Path) -> None:
        """Every file under `root` (journal, kept task dirs, local queue files)."""
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.outputs[f"{name}:{path.relative_to(root)}"] = path.read_bytes().decode("utf-8", "replace")

    def add_chirp(self, name: str, server: ChirpServer) -> None:
        self.outputs[f"{name} chirp"] = "\n".join(
            r.wire.decode("utf-8", "replace") for r in server.requests
        )

    def leaks(self) -> list[str]:
        found = []
        for out, text in self.outputs.items():
            for what, canary in self.canaries.items():
                for line in text.splitlines():
                    if canary in line:
                        found.append(f"{what} in {out}: {line[:300]}")
        return found

    def assert_clean(self) -> None:
        assert self.outputs, "nothing was collected"
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


@pytest.fixture
def audit() -> Audit:
    return Audit(
        {
            "incoming auth token": _canary("InTok"),
            "outgoing auth token": _canary("OutTok"),
            "amqp password": _canary("Amqp"),
            "nats URL token": _canary("Nats"),
            "misnamed _PASSWORD": _canary("Pw"),
            "misnamed _SECRET": _canary("Sec"),
            "local-broker URL password": _canary("Local"),
            "host-less address password": _canary("NoHost"),
            "task env API key": _canary("ApiKey"),
            "task env PASSWORD": _canary("EnvPw"),
            "task env TOKEN": _canary("EnvTok"),
            "task env secret": _canary("EnvSec"),
        }
    )


def _pilot_env(
    audit: Audit, tmp: Path, *, broker: str, address: str, queue: str, server: ChirpServer, **extra: str
) -> dict[str, str]:
    c = audit.canaries
    env = base_env(
        broker_type=broker, address=address, queue_in=queue + "-in", queue_out=queue + "-out",
        data_dir=tmp, task_args=shlex.join([sys.executable, "-c", TASK, "<<INFILE>>", "<<OUTFILE>>"]),
        extra={
            "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": c["incoming auth token"],
            "EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN": c["outgoing auth token"],
            "EWMS_PILOT_CL_LOG": "DEBUG",
            "EWMS_PILOT_CL_LOG_THIRD_PARTY": "DEBUG",
            "EWMS_PILOT_HTCHIRP": "true",
            "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.1",
            "EWMS_PILOT_KEEP_ALL_TASK_FILES": "true",
            "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false",
            "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "5",
            "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "1",
            "EWMS_PILOT_RECONNECT_DEADLINE": "2",
            **extra,
        },
    )
    env["_CONDOR_CHIRP_CONFIG"] = str(server.config_path)
    return env


def _run(audit: Audit, name: str, env: Mapping[str, str], tmp: Path, server: ChirpServer) -> int:
    """Run one pilot and collect everything it left: stdout, stderr, files, chirp requests."""
    run = run_pilot(env, timeout=90)
    audit.add(f"{name} stdout", run.stdout)
    audit.add(f"{name} stderr", run.stderr)
    audit.add_files(name, tmp)
    audit.add_chirp(name, server)  # (its DEBUG log may hold tracebacks: they are audited too)
    return run.returncode


def _cli(audit: Audit, name: str, argv: list[str], env: Mapping[str, str], stdin: str = "", cwd: Path | None = None) -> int:
    res = subprocess.run(
        [sys.executable, "-m", "ewms_pilot", *argv], env=dict(env), input=stdin,
        capture_output=True, text=True, timeout=90, cwd=cwd,
    )
    audit.add(f"{name} stdout", res.stdout)
    audit.add(f"{name} stderr", res.stderr)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res.returncode


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nats_token_address(audit: Audit) -> str:
    return f"nats://{audit.canaries['nats URL token']}@127.0.0.1:4222"  # the server has no auth: any token works


def test_success_and_task_failure_on_nats_with_token_url(
    audit: Audit, nats_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(a) the NATS token URL, auth tokens and (e) third-party DEBUG logs, on a run that does work."""
    address = _nats_token_address(audit)
    asyncio.run(publish("nats", nats_address, queue_name + "-in", ["good", "bad"]))
    data = tmp_path / "data"
    data.mkdir()
    with ChirpServer(tmp_path) as server:
        env = _pilot_env(audit, data, broker="nats", address=address, queue=queue_name, server=server)
        assert _cli(audit, "config --check", ["config", "--check"], env) == 0
        assert _run(audit, "nats run", env, data, server) == 0
    results = asyncio.run(drain("nats", nats_address, queue_name + "-out", timeout=5, expect=1))
    assert results == ["good"]  # one task succeeded, one failed: both paths were taken
    assert any("task refused this event" in text for text in audit.outputs.values())
    assert "HTChirpEWMSPilotError" in audit.outputs["nats run chirp"]
    journal = [text for name, text in audit.outputs.items() if name.endswith(".jsonl")]
    assert journal and "task refused this event" in journal[0]  # the journal door is audited
    audit.assert_clean()
    assert "nats://***@127.0.0.1:4222" in audit.outputs["config --check stdout"]  # shown, masked


# secret keys of EWMS_PILOT_TASK_ENV_JSON: a `_`-joined name and bare names of any case
TASK_ENV_SECRETS = {"API_KEY": "task env API key", "PASSWORD": "task env PASSWORD",
                    "TOKEN": "task env TOKEN", "secret": "task env secret"}
# a task that fails by quoting its own secrets on stderr (a client library printing its request)
LEAKY_TASK = (
    "import os, sys; d=open(sys.argv[1]).read()\n"
    "if 'bad' in d: sys.exit('login refused for key ' + ' '.join(os.environ[k] for k in sys.argv[3:]))\n"
    "open(sys.argv[2],'w').write(d)"
)


def test_broker_copies_of_a_failed_event_carry_no_secret(
    audit: Audit, rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(g) the error headers of a requeued and of a dead-lettered copy quote the task's stderr: masked.

    A task prints its secrets (EWMS_PILOT_TASK_ENV_JSON's API_KEY, PASSWORD, TOKEN, secret) and
    fails. The pilot's copies of the event on RabbitMQ are read with their wire headers; a result's
    headers too; the stop reason that error caused (chirp), the journal and the logs are audited.
    """
    task_env = {key: audit.canaries[what] for key, what in TASK_ENV_SECRETS.items()}
    q_in, q_out, q_dead = queue_name + "-in", queue_name + "-out", queue_name + "-dlq"
    data = tmp_path / "data"
    data.mkdir()
    env = base_env(
        broker_type="rabbitmq", address=rabbitmq_address, queue_in=q_in, queue_out=q_out, data_dir=data,
        task_args=shlex.join([sys.executable, "-c", LEAKY_TASK, "<<INFILE>>", "<<OUTFILE>>", *task_env]),
        extra={
            "EWMS_PILOT_TASK_ENV_JSON": json.dumps(task_env),
            "EWMS_PILOT_QUEUE_DEADLETTER": q_dead,
            "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "5",
            "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "1",
            "EWMS_PILOT_HTCHIRP": "true",
            "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.1",
        },
    )
    # 1: a first attempt fails -> requeued with its error (attempts 1), stop-on-error ends the run
    asyncio.run(publish("rabbitmq", rabbitmq_address, q_in, ["bad"]))
    with ChirpServer(tmp_path) as server:
        env["_CONDOR_CHIRP_CONFIG"] = str(server.config_path)
        run = run_pilot({**env, "EWMS_PILOT_MAX_DELIVERIES": "2", "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "true"})
        audit.add("requeue run stderr", run.stderr)
        audit.add_chirp("requeue run", server)
    assert run.returncode == 3, run.stderr[-3000:]
    chirped = audit.outputs["requeue run chirp"].replace("\\ ", " ")  # (the wire escapes spaces)
    assert "login refused for key *** *** *** ***" in chirped  # the stop reason: said, masked
    requeued = asyncio.run(drain_with_headers("rabbitmq", rabbitmq_address, q_in))
    # 2: the last attempt fails -> dead-lettered with its error; a good event's result beside it
    asyncio.run(publish("rabbitmq", rabbitmq_address, q_in, ["bad", "good"]))
    env.pop("_CONDOR_CHIRP_CONFIG")  # (its server is gone)
    run = run_pilot({**env, "EWMS_PILOT_MAX_DELIVERIES": "1", "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false",
                     "EWMS_PILOT_HTCHIRP": "false"})
    audit.add("dead-letter run stderr", run.stderr)
    for journal in data.rglob("*.jsonl"):  # (the failed tasks' kept files are the task's own words)
        audit.add(f"journal {journal.name}", journal.read_text())
    assert run.returncode == 0, run.stderr[-3000:]
    dead = asyncio.run(drain_with_headers("rabbitmq", rabbitmq_address, q_dead))
    results = asyncio.run(drain_with_headers("rabbitmq", rabbitmq_address, q_out))

    copies = {"requeued copy": requeued, "dead-letter copy": dead}
    for what, got in copies.items():
        assert [data for data, _ in got] == ["bad"], (what, got)
        [(_, headers)] = got
        assert "login refused for key *** *** *** ***" in str(headers["ewms_pilot_error"]), (what, headers)
        audit.add(f"{what} headers", json.dumps(headers))
    assert results == [("good", {})]  # a result carries the task's output and no header of the pilot's
    assert any("login refused for key ***" in t for n, t in audit.outputs.items() if n.startswith("journal"))
    audit.assert_clean()


def test_broker_errors_never_show_the_password(
    audit: Audit, rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(b) comma and space in a password, (c) an address without a host, wrong port and password."""
    pw = audit.canaries["amqp password"]
    no_host = audit.canaries["host-less address password"]
    addresses = {
        "comma": f"guest:Pw,{pw}@{rabbitmq_address}",
        "comma url": f"amqp://guest:Pw,{pw}@{rabbitmq_address}",
        "comma and space": f"amqp://guest:Pw,{pw} x@{rabbitmq_address}",
        "wrong port": f"guest:{pw}@127.0.0.1:{_closed_port()}",
        "no host": f"guest:{no_host}@",
    }
    # (e) at INFO the third-party loggers go through the one-line filter, at DEBUG they do not
    third_party = {"comma": "INFO", "wrong port": "INFO", "no host": "INFO"}
    codes = {}
    for name, address in addresses.items():
        data = tmp_path / name.replace(" ", "-")
        data.mkdir()
        with ChirpServer(data) as server:
            env = _pilot_env(
                audit, data, broker="rabbitmq", address=address, queue=queue_name, server=server,
                EWMS_PILOT_CL_LOG_THIRD_PARTY=third_party.get(name, "DEBUG"),
            )
            code = codes[name] = _run(audit, name, env, data, server)
        # a broker error (5), or a config error (2) where the address cannot work at all
        assert code in (2, 5), (name, code, audit.outputs[f"{name} stderr"][-2000:])
        if code == 5:  # the pilot started: its error went out through chirp too
            assert "HTChirpEWMSPilotEndReason" in audit.outputs[f"{name} chirp"]
    assert codes["comma"] == codes["wrong port"] == 5  # refused login, refused connection
    audit.assert_clean()


def test_queue_cli_and_local_broker_given_a_url(
    audit: Audit, nats_address: str, rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(d) broker type `local` with an amqp URL (pilot and `queue put`); `queue put/get` on real brokers."""
    local_url = f"amqp://guest:{audit.canaries['local-broker URL password']}@127.0.0.1:5672/"
    data = tmp_path / "data"
    data.mkdir()
    with ChirpServer(tmp_path) as server:
        env = _pilot_env(audit, data, broker="local", address=local_url, queue=queue_name, server=server)
        assert _run(audit, "local pilot", env, data, server) == 2
    env = {**env, "EWMS_PILOT_QUEUE_AUTH_TOKEN": audit.canaries["incoming auth token"]}
    local = ["--broker-type", "local", "--broker-address", local_url, "--queue", queue_name]
    assert _cli(audit, "local put", ["queue", "put", *local], env, "x\n", cwd=tmp_path) == 2
    nats = ["--broker-type", "nats", "--broker-address", _nats_token_address(audit), "--queue", queue_name + "-in"]
    assert _cli(audit, "nats put", ["queue", "put", "--json", *nats], env, '{"k": 1}\n') == 0
    assert _cli(audit, "nats get", ["queue", "get", "--max", "1", "--timeout", "5", *nats], env) == 0
    assert audit.outputs["nats get stdout"].strip() == '{"k": 1}'
    no_host = ["--broker-type", "rabbitmq", "--broker-address", f"guest:{audit.canaries['host-less address password']}@"]
    assert _cli(audit, "no-host get", ["queue", "get", *no_host, "--queue", queue_name], env) in (2, 5)
    audit.assert_clean()


def test_misnamed_secret_variables_are_never_echoed(
    audit: Audit, nats_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(f) `..._PASSWORD` / `..._SECRET` names that are no variable: named, their value never shown."""
    misnamed = {
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_PASSWORD": audit.canaries["misnamed _PASSWORD"],
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_SECRET": audit.canaries["misnamed _SECRET"],
    }
    data = tmp_path / "data"
    data.mkdir()
    with ChirpServer(tmp_path) as server:
        env = _pilot_env(
            audit, data, broker="nats", address=_nats_token_address(audit), queue=queue_name, server=server,
            **misnamed,
        )
        _cli(audit, "config --check", ["config", "--check"], env)
        _run(audit, "run", env, data, server)
        # an invalid setting besides: the config error must not show the misnamed values either
        assert _run(audit, "bad prefetch", {**env, "EWMS_PILOT_PREFETCH": "many"}, data, server) == 2
    assert "configuration error" in audit.outputs["bad prefetch stderr"]
    told = audit.outputs["config --check stderr"] + audit.outputs["config --check stdout"]
    assert any(name in told for name in misnamed)  # the operator is told which name is wrong
    audit.assert_clean()


API_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys, traceback
    from ewms_pilot import consume_and_reply
    logging.basicConfig(level=logging.DEBUG)  # the caller's own logging, third-party included
    try:
        asyncio.run(consume_and_reply(**eval(sys.argv[1])))
    except Exception as e:
        print("EXC", repr(e), str(e))
        print("".join(traceback.format_exception(e)))
    else:
        print("NO EXCEPTION")
    """
)


@pytest.mark.parametrize("case", ["no host", "misnamed"])
def test_consume_and_reply_exceptions_and_logs(
    audit: Audit, case: str, rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(c) an API caller sees the error and its traceback, and its own log handlers, without secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EWMS_PILOT_")}
    address = f"guest:{audit.canaries['host-less address password']}@"
    if case == "misnamed":
        env["EWMS_PILOT_QUEUE_INCOMING_BROKER_PASSWORD"] = audit.canaries["misnamed _PASSWORD"]
        address = f"guest:guest@{rabbitmq_address}"
    kwargs = {
        "task_image": "", "task_args": f"{sys.executable} -c pass",
        "queue_incoming": queue_name + "-in", "queue_outgoing": queue_name + "-out",
        "queue_incoming_broker_type": "rabbitmq", "queue_outgoing_broker_type": "rabbitmq",
        "queue_incoming_broker_address": address, "queue_outgoing_broker_address": address,
        "queue_incoming_auth_token": audit.canaries["incoming auth token"],
        "timeout_wait_for_first_message": 2, "timeout_incoming": 1,
    }
    env.update(
        EWMS_PILOT_CONTAINER_PLATFORM="process", EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST=str(tmp_path),
        EWMS_PILOT_RECONNECT_DEADLINE="2",
    )
    res = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, repr(kwargs)], env=env, capture_output=True, text=True, timeout=90,
    )
    audit.add("api stdout", res.stdout)
    audit.add("api stderr", res.stderr)
    audit.add_files("api", tmp_path)
    if case == "no host":
        assert "EXC" in res.stdout, res.stdout + res.stderr[-2000:]
    audit.assert_clean()


def test_short_secrets_are_masked_where_their_place_is_known(
    nats_address: str, rabbitmq_address: str, queue_name: str, tmp_path: Path
) -> None:
    """(h) secrets of 1-3 characters: too short to hunt in free text (docs: README "Secrets"), but never
    shown where the pilot knows them: the banner, an address, argv, chirp and the journal, on a run that
    works and fails a task and on one the broker refuses."""
    short = Audit(
        {
            "NATS URL token": "Zk~",
            "auth token": "Zx~",
            "task env API key": "Ak~",
            "misnamed _PASSWORD": "Pw~",
            "amqp password": "Qj^",
        }
    )
    c = short.canaries
    common = {
        "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": c["auth token"],
        "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"API_KEY": c["task env API key"], "MODE": "fast"}),
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_PASSWORD": c["misnamed _PASSWORD"],
        "EWMS_PILOT_CL_LOG": "DEBUG",
        "EWMS_PILOT_CL_LOG_THIRD_PARTY": "DEBUG",
        "EWMS_PILOT_HTCHIRP": "true",
        "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": "0.1",
        "EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR": "false",
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "5",
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "1",
        "EWMS_PILOT_RECONNECT_DEADLINE": "2",
    }
    task = shlex.join([sys.executable, "-c", TASK, "<<INFILE>>", "<<OUTFILE>>"])
    asyncio.run(publish("nats", nats_address, queue_name + "-in", ["good", "bad"]))
    runs = {
        "nats": ("nats", f"nats://{c['NATS URL token']}@127.0.0.1:4222", 0),
        "refused": ("rabbitmq", f"amqp://guest:{c['amqp password']}@{rabbitmq_address}", 5),
    }
    for name, (broker, address, expected) in runs.items():
        data = tmp_path / name
        data.mkdir()
        with ChirpServer(data) as server:
            env = base_env(
                broker_type=broker, address=address, queue_in=queue_name + "-in", queue_out=queue_name + "-out",
                data_dir=data, task_args=task, extra=common,
            )
            env["_CONDOR_CHIRP_CONFIG"] = str(server.config_path)
            if broker == "rabbitmq":
                env.pop("EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN")  # the address's own password is refused
            assert _cli(short, f"{name} config --check", ["config", "--check"], env) == 0
            assert _run(short, name, env, data, server) == expected, short.outputs[f"{name} stderr"][-3000:]
    # a config error quoting the variable holding one
    bad = {**env, "EWMS_PILOT_TASK_ENV_JSON": json.dumps({"API_KEY": c["task env API key"], "NO NAME": "x"})}
    assert _cli(short, "bad env json", ["config", "--check"], bad) == 2
    assert "EWMS_PILOT_TASK_ENV_JSON" in short.outputs["bad env json stderr"]
    # the operator is told which settings hold one (by name)
    for name in ("EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN", "EWMS_PILOT_TASK_ENV_JSON:API_KEY",
                 "EWMS_PILOT_QUEUE_OUTGOING_BROKER_PASSWORD", "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS"):
        assert f"{name} holds a secret shorter than 4 characters" in short.outputs["nats stderr"] + short.outputs[
            "refused stderr"], name
    assert "HTChirpEWMSPilotError" in short.outputs["nats chirp"]  # the task failure went out through chirp
    assert any(k.endswith(".jsonl") for k in short.outputs)
    assert '"MODE": "fast"' in short.outputs["nats config --check stdout"]  # the rest of the value is shown
    short.assert_clean()
