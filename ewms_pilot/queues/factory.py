"""Pick the broker adapter for a `BrokerConfig` (one module per broker type).

Each adapter is imported on use, so a missing optional client (pulsar, nats)
only matters to who asks for that broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..config.model import BrokerConfig
from ..errors import BrokerUnavailableError
from .base import Publisher, Subscription

LOCAL = "local"
MEMORY = "memory"  # in-process only (tests, a `PilotConfig` built in code): not a config choice

OpenSub = Callable[[BrokerConfig, int], Awaitable[Subscription]]
OpenPub = Callable[[BrokerConfig], Awaitable[Publisher]]


def _adapter(broker_type: str) -> tuple[OpenSub, OpenPub]:
    """The adapter's (subscription, publisher) openers; ImportError when its client is missing."""
    if broker_type == LOCAL:
        from .local import LocalPublisher, LocalSubscription

        return LocalSubscription.open, LocalPublisher.open
    if broker_type == MEMORY:
        from .memory import MemoryPublisher, MemorySubscription

        return MemorySubscription.open, MemoryPublisher.open
    if broker_type == "rabbitmq":
        from .rabbitmq import RabbitMQPublisher, RabbitMQSubscription

        return RabbitMQSubscription.open, RabbitMQPublisher.open
    if broker_type == "nats":
        from .nats import NatsPublisher, NatsSubscription

        return NatsSubscription.open, NatsPublisher.open
    if broker_type == "pulsar":
        from .pulsar import PulsarPublisher, PulsarSubscription

        return PulsarSubscription.open, PulsarPublisher.open
    raise BrokerUnavailableError(f"unknown broker type {broker_type!r}")


def _openers(cfg: BrokerConfig) -> tuple[OpenSub, OpenPub]:
    try:
        return _adapter(cfg.broker_type)
    except ImportError as e:
        raise BrokerUnavailableError(f"{cfg.broker_type}: its client is not installed ({e})") from e


async def open_subscription(cfg: BrokerConfig, prefetch: int) -> Subscription:
    """Connect to the incoming queue; raises `BrokerUnavailableError` when unreachable."""
    return await _openers(cfg)[0](cfg, prefetch)


async def open_publisher(cfg: BrokerConfig) -> Publisher:
    """Connect to an outgoing queue; raises `BrokerUnavailableError` when unreachable."""
    return await _openers(cfg)[1](cfg)
