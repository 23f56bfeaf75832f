"""An in-process pilot on the in-memory broker (a real queue implementation), for fast tests."""

from __future__ import annotations

import dataclasses as dc
import json
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

from ewms_pilot.config.loader import load_config
from ewms_pilot.config.model import PilotConfig
from ewms_pilot.pilot.journal import journal_path
from ewms_pilot.queues.base import Delivery
from ewms_pilot.queues.factory import open_publisher, open_subscription

ECHO = "import sys; d=open(sys.argv[1]).read(); open(sys.argv[2],'w').write('out:'+d)"
FAIL = "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"


@dc.dataclass
class Queues:
    broker: str
    incoming: str
    outgoing: str
    deadletter: str


def new_queues() -> Queues:
    """Fresh queue names on a fresh in-memory broker."""
    tag = uuid.uuid4().hex[:8]
    return Queues(f"mem-{tag}", f"in-{tag}", f"out-{tag}", f"dlq-{tag}")


def memory_config(q: Queues, tmp: Path, code: str, **extra: str) -> PilotConfig:
    env = {
        "EWMS_PILOT_QUEUE_INCOMING": q.incoming,
        "EWMS_PILOT_QUEUE_OUTGOING": q.outgoing,
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": "127.0.0.1",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": "127.0.0.1",
        "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST": str(tmp),
        "EWMS_PILOT_CONTAINER_PLATFORM": "process",
        "EWMS_PILOT_TASK_ARGS": shlex.join([sys.executable, "-c", code, "{{INFILE}}", "{{OUTFILE}}"]),
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": "5",
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": "0.5",
        "EWMS_PILOT_SHUTDOWN_GRACE": "0",
        **extra,
    }
    cfg = load_config(env)
    return dc.replace(
        cfg,
        incoming=dc.replace(cfg.incoming, broker_type="memory", address=q.broker),
        outgoing=dc.replace(cfg.outgoing, broker_type="memory", address=q.broker),
    )


async def put(cfg: PilotConfig, *items: Any, headers: dict[str, Any] | None = None) -> None:
    pub = await open_publisher(dc.replace(cfg.incoming))
    for item in items:
        await pub.send(item, headers)
    await pub.close()


async def take(cfg: PilotConfig, queue: str) -> list[Delivery]:
    """Everything in `queue` (acked: the queue is empty afterwards)."""
    sub = await open_subscription(dc.replace(cfg.incoming, queue=queue), 100)
    out = []
    while (d := await sub.get(0.05)) is not None:
        out.append(d)
        await sub.ack(d)
    await sub.close()
    return out


def journal(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal_path(tmp).read_text().splitlines()]
