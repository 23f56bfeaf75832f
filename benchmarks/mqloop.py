"""The RabbitMQ bound for one event at a time: a bare oms-mqclient consumer + publisher loop, no pilot.

Run by the harness exactly like a pilot (same EWMS_PILOT_* queue variables,
measured the same way, results checked by value): for each event it
publishes the doubled data (with publisher confirms, as the pilot does) and
only then acks the event; it ends once no event came for
EWMS_PILOT_TIMEOUT_QUEUE_INCOMING seconds. One RabbitMQ round trip per event,
nothing else: what a pilot at concurrency 1 could reach at best here.
Standalone (imports only oms-mqclient): it runs outside this repo's tree.
"""

from __future__ import annotations

import asyncio
import os

import mqclient


def _queue(name: str, timeout: int) -> mqclient.Queue:
    return mqclient.Queue(
        "rabbitmq",
        address=os.environ["EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS"],
        name=name,
        prefetch=1,
        timeout=timeout,
        except_errors=False,
    )


async def main() -> None:
    timeout = int(os.environ["EWMS_PILOT_TIMEOUT_QUEUE_INCOMING"])
    incoming = _queue(os.environ["EWMS_PILOT_QUEUE_INCOMING"], timeout)
    outgoing = _queue(os.environ["EWMS_PILOT_QUEUE_OUTGOING"], timeout)
    async with outgoing.open_pub() as pub, incoming.open_sub() as sub:
        async for data in sub:  # acked when the loop body is done, i.e. after the confirmed publish
            await pub.send(data + data)


if __name__ == "__main__":
    asyncio.run(main())
