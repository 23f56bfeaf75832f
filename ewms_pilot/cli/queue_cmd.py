"""`ewms-pilot queue put|get|count`: feed, drain and inspect a queue on any broker type.

For trying a task image without EWMS (put events in a local queue, run a
pilot, get the results) and for replaying events: `get` prints each event's
data as one JSON line, which `put --json` reads back unchanged.

Talks to every broker through `queues.factory`, so it exercises the same code
the pilot uses. The auth token comes from an environment variable, never from
the command line (it would show in `ps`), and is never printed; so may the
address (`--broker-address-env`): one given in argv with a password is warned about.

Exit codes: 0 done, 2 usage or bad input (nothing was sent), 5 broker error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..config import jsontext
from ..config.addresses import normalize_address
from ..config.model import BrokerConfig
from ..config.redact import address_secrets, redact_url, register_address, register_secret
from ..config.types import QUEUE_NAME
from ..errors import BrokerError, ConfigError
from ..exitcodes import ExitCode
from ..queues.factory import LOCAL, open_publisher, open_subscription
from .logs import install_scrubber, say, scrub_uncaught
from .options import OneLineParser, env_name, positive_count, queue_timeout

BROKER_TYPES = ("local", "rabbitmq", "nats", "pulsar")
DEFAULT_TOKEN_ENV = "EWMS_PILOT_QUEUE_AUTH_TOKEN"
ADDRESS_ENV_OPTION = "--broker-address-env"
STDIN = "-"


class InputError(Exception):
    """A `put` input line cannot become an event: one line naming file and line number."""


# --------------------------------------------------------------------- parser


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-type", required=True, choices=BROKER_TYPES)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--broker-address",
        help="broker URL/host, or for `local` the SQLite database file; a password or token in it "
        f"shows in `ps` to every user of the machine: use {ADDRESS_ENV_OPTION} for those",
    )
    where.add_argument(
        ADDRESS_ENV_OPTION,
        type=env_name,
        metavar="NAME",
        help="environment variable holding the broker address (instead of --broker-address: "
        "keeps its password or token out of `ps`)",
    )
    p.add_argument("--queue", required=True, type=_queue_name, help="queue name")
    p.add_argument(
        "--auth-token-env",
        type=env_name,
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"environment variable holding the auth token (default: {DEFAULT_TOKEN_ENV})",
    )


def _queue_name(text: str) -> str:
    try:
        name = QUEUE_NAME.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected {e}") from None
    if not isinstance(name, str) or not name:
        raise argparse.ArgumentTypeError("expected a queue name")
    return name


def _add_commands(parser: argparse.ArgumentParser) -> None:
    cmds = parser.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")

    put = cmds.add_parser(
        "put",
        help="send each input line as one event",
        description="Send each line of stdin (or of each FILE; '-' is stdin) as one event. "
        "All lines are read and checked before anything is sent.",
    )
    _broker_args(put)
    put.add_argument("--json", action="store_true", help="parse each line as a JSON value")
    put.add_argument("files", nargs="*", metavar="FILE")

    get = cmds.add_parser(
        "get",
        help="take (and ack) events, printing each one's data as a JSON line",
        description="Take and ack events, printing each one's data as one JSON line, "
        "until none arrived for --timeout seconds or --max were taken.",
    )
    _broker_args(get)
    get.add_argument("--timeout", type=queue_timeout, default=5.0, metavar="S")
    get.add_argument("--max", type=positive_count, default=None, metavar="N")

    count = cmds.add_parser(
        "count",
        help="ready / in-flight events (local queues only)",
    )
    _broker_args(count)
    count.add_argument("--json", action="store_true", help="print one JSON object")


def add_queue_parser(subparsers: argparse._SubParsersAction[OneLineParser]) -> None:
    """Register `queue` (with put/get/count) on the main `ewms-pilot` parser."""
    parser = subparsers.add_parser(
        "queue",
        help="put / get / count events on a queue (any broker type)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    _add_commands(parser)
    parser.set_defaults(run=run_queue_command)


# ---------------------------------------------------------------------- input


def _read_sources(files: Sequence[str]) -> list[tuple[str, bytes]]:
    """(name, content) per input; runs in a thread (files may be large)."""
    out: list[tuple[str, bytes]] = []
    for name in files or [STDIN]:
        if name == STDIN:
            out.append(("<stdin>", sys.stdin.buffer.read()))
            continue
        try:
            with open(name, "rb") as f:
                out.append((name, f.read()))
        except OSError as e:
            raise InputError(f"cannot read {name!r}: {e.strerror or e}") from e
        except ValueError as e:  # a NUL in the name
            raise InputError(f"cannot read {name!r}: {e}") from e
    return out


def parse_lines(sources: list[tuple[str, bytes]], as_json: bool) -> list[Any]:
    """Every line of every source as one event; the first bad line raises `InputError`."""
    events: list[Any] = []
    for name, content in sources:
        for number, raw in enumerate(content.splitlines(keepends=True), start=1):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{name}:{number}: not valid UTF-8 (byte {e.start + 1}); "
                    "events are JSON text, binary data cannot be sent"
                ) from e
            if not as_json:
                events.append(text)
                continue
            if not text.strip():
                raise InputError(f"{name}:{number}: not valid JSON (empty line)")
            try:
                events.append(jsontext.loads(text))
            except ValueError as e:
                raise InputError(f"{name}:{number}: not valid JSON ({e})") from e
    return events


# ------------------------------------------------------------------- commands


def _given_address(args: argparse.Namespace) -> tuple[str, str]:
    """(the broker address, where it came from: the option or the variable it names)."""
    if args.broker_address_env is None:
        return args.broker_address, "--broker-address"
    address = os.environ.get(args.broker_address_env)
    if address is None:
        raise ConfigError(args.broker_address_env, "<unset>", f"the broker address (named by {ADDRESS_ENV_OPTION})")
    return address, args.broker_address_env


def _broker_config(args: argparse.Namespace) -> BrokerConfig:
    token = os.environ.get(args.auth_token_env)
    if token is None and args.auth_token_env != DEFAULT_TOKEN_ENV:
        raise ConfigError(
            args.auth_token_env, "<unset>", "the auth token (named by --auth-token-env)"
        )
    register_secret(token or "")
    given, source = _given_address(args)
    register_address(given)
    try:
        address = normalize_address(args.broker_type, given)
    except ValueError as e:
        raise ConfigError(source, redact_url(given), str(e)) from None
    if source == "--broker-address" and address_secrets(given):
        say(
            "ewms-pilot queue: warning: --broker-address holds a password or token, which `ps` shows "
            f"to every user of this machine; put the address in an environment variable and pass "
            f"{ADDRESS_ENV_OPTION} NAME"
        )
    return BrokerConfig(
        queue=args.queue,
        broker_type=args.broker_type,
        address=address,
        auth_token=token or "",
    )


async def _put(args: argparse.Namespace) -> int:
    cfg = _broker_config(args)
    sources = await asyncio.to_thread(_read_sources, args.files)
    events = await asyncio.to_thread(parse_lines, sources, args.json)
    pub = await open_publisher(cfg)
    sent = 0
    try:
        for event in events:
            await pub.send(event)
            sent += 1
    except BrokerError as e:
        raise BrokerError(f"sent {sent} of {len(events)} event(s), then: {e}") from e
    finally:
        await pub.close()
    print(f"sent {sent} event(s) to {cfg.broker_type} queue '{cfg.queue}'")
    return ExitCode.OK


def _json_line(data: Any) -> bytes:
    try:
        return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a \\ud800 escape: keep them escaped
        return (json.dumps(data) + "\n").encode("ascii")


def _emit(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()


async def _get(args: argparse.Namespace) -> int:
    cfg = _broker_config(args)
    sub = await open_subscription(cfg, prefetch=1)
    taken = 0
    try:
        while args.max is None or taken < args.max:
            delivery = await sub.get(args.timeout)
            if delivery is None:
                break
            if delivery.decode_error is not None:
                await sub.release(delivery)
                raise BrokerError(
                    f"event {delivery.msg_id} is not in oms-mqclient's format "
                    f"({delivery.decode_error}); left in the queue"
                )
            try:  # printed first, acked after: a failed write leaves the event queued
                await asyncio.to_thread(_emit, _json_line(delivery.data))
            except BrokenPipeError:
                await sub.release(delivery)
                _silence_stdout()
                return ExitCode.OK
            except BaseException:
                await sub.release(delivery)
                raise
            await sub.ack(delivery)
            taken += 1
    finally:
        await sub.close()
    say(f"took {taken} event(s) from {cfg.broker_type} queue '{cfg.queue}'")
    return ExitCode.OK


def _silence_stdout() -> None:
    """The reader went away (`get ... | head`): don't let interpreter exit complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def _count(args: argparse.Namespace) -> int:
    cfg = _broker_config(args)
    if cfg.broker_type != LOCAL:
        raise ConfigError("--broker-type", cfg.broker_type, "local (count works on local queues only)")
    from ..queues.local import local_counts

    counts = await local_counts(cfg)
    if args.json:
        print(json.dumps(counts))
    else:
        for key, n in counts.items():
            print(f"{key}: {n}")
    return ExitCode.OK


_COMMANDS = {"put": _put, "get": _get, "count": _count}


def run_queue_command(args: argparse.Namespace) -> int:
    """Run the parsed `queue` subcommand; returns the process exit code (errors are one line)."""
    where = f"ewms-pilot queue {args.queue_command}"
    install_scrubber()
    try:
        return asyncio.run(_COMMANDS[args.queue_command](args))
    except (ConfigError, InputError) as e:
        say(f"{where}: error: {e}")
        return ExitCode.CONFIG
    except BrokerError as e:
        say(f"{where}: error: {e}")
        return ExitCode.BROKER
    except KeyboardInterrupt:
        say(f"{where}: interrupted")
        return ExitCode.EVICTED


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ewms_pilot.cli.queue_cmd put|get|count ...` (same surface as `ewms-pilot queue`)."""
    parser = OneLineParser(prog="ewms-pilot queue", description=__doc__)
    _add_commands(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (one line, exit 2) or --help
        return e.code if isinstance(e.code, int) else int(ExitCode.CONFIG)
    scrub_uncaught()
    return run_queue_command(args)


if __name__ == "__main__":
    sys.exit(main())
