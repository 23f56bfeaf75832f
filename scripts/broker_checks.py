"""Checks scripts/test-env.sh runs against the shared test brokers (needs the venv's pika / nats-py).

    python scripts/broker_checks.py amqp-login HOST PORT TIMEOUT
        exit 0 when guest/guest can log in and open a channel within TIMEOUT s, else 1 (reason on
        stderr). A broker can accept TCP and even answer the protocol header while every AMQP
        login times out (seen with hundreds of leftover quorum queues): only a real login tells.
    python scripts/broker_checks.py sweep-nats URL PATTERN MIN_AGE
        delete the JetStream streams whose name matches PATTERN (a regex, searched) and that were created
        more than MIN_AGE s ago: test runs that were killed never deleted theirs. Prints how many.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
import threading


def amqp_login(host: str, port: int, timeout: float) -> int:
    import pika

    params = pika.ConnectionParameters(
        host=host, port=port, socket_timeout=timeout, blocked_connection_timeout=timeout,
        stack_timeout=timeout, connection_attempts=1,
    )
    box: dict[str, str] = {}

    def _login() -> None:
        try:
            conn = pika.BlockingConnection(params)
            try:
                conn.channel().close()
            finally:
                conn.close()
            box["ok"] = ""
        except Exception as e:  # any failure means "not usable"; say which
            box["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=_login, daemon=True)  # a hung handshake must not hang the script
    t.start()
    t.join(timeout + 2)
    if "ok" in box:
        return 0
    print(f"AMQP login to {host}:{port}: {box.get('error', f'no answer within {timeout:g}s')}", file=sys.stderr)
    return 1


async def sweep_nats(url: str, pattern: str, min_age: float) -> int:
    import nats

    name_re = re.compile(pattern)
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=10)
        now = dt.datetime.now(dt.UTC)
        n = 0
        for info in await js.streams_info():
            name, created = info.config.name or "", info.created
            if not name_re.search(name) or created is None:
                continue
            if isinstance(created, str):  # nats-py versions differ: datetime or RFC 3339 text
                created = dt.datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
            if (now - created).total_seconds() > min_age:
                await js.delete_stream(name)
                n += 1
        print(n)
        return 0
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "amqp-login":
        return amqp_login(argv[1], int(argv[2]), float(argv[3]))
    if len(argv) == 4 and argv[0] == "sweep-nats":
        return asyncio.run(sweep_nats(argv[1], argv[2], float(argv[3])))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
