"""Feed and empty a local (SQLite) queue through the pilot's own adapter, as `ewms-pilot queue` does."""

from __future__ import annotations

from pathlib import Path

from ewms_pilot.config.model import BrokerConfig
from ewms_pilot.queues.factory import open_publisher, open_subscription


async def put_local(db: Path, queue: str, items: list[str]) -> None:
    """Publish each item, in order."""
    pub = await open_publisher(BrokerConfig(queue, "local", str(db)))
    try:
        for item in items:
            await pub.send(item)
    finally:
        await pub.close()


async def take_all_local(db: Path, queue: str) -> list[str]:
    """Every event in the queue (acked), until it stays empty for half a second."""
    sub = await open_subscription(BrokerConfig(queue, "local", str(db)), 50)
    out = []
    try:
        while (d := await sub.get(0.5)) is not None:
            out.append(d.data)
            await sub.ack(d)
    finally:
        await sub.close()
    return out
