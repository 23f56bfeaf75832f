"""Pick the broker adapter for a `BrokerConfig` (one module per broker type).

Each adapter is imported on use, so a missing optional client (pulsar, nats)
only matters to who asks for that broker.
"""

from __future__ import annotations

from ..config.model import BrokerConfig
from ..errors import BrokerUnavailableError
from .base import Publisher, Subscription

LOCAL = "local"
MEMORY = "memory"  # in-process only (tests, a `PilotConfig` built in code): not a config choice


def _missing(cfg: BrokerConfig, e: ImportError) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"{cfg.broker_type}: its client is not installed ({e})")


async def open_subscription(cfg: BrokerConfig, prefetch: int) -> Subscription:
    """Connect to the incoming queue; raises `BrokerUnavailableError` when unreachable."""
    try:
        if cfg.broker_type == LOCAL:
            from .local import LocalSubscription as Sub
        elif cfg.broker_type == MEMORY:
            from .memory import MemorySubscription as Sub  # type: ignore[assignment]
        elif cfg.broker_type == "rabbitmq":
            from .rabbitmq import RabbitMQSubscription as Sub  # type: ignore[assignment]
        elif cfg.broker_type == "nats":
            from .nats import NatsSubscription as Sub  # type: ignore[assignment]
        elif cfg.broker_type == "pulsar":
            from .pulsar import PulsarSubscription as Sub  # type: ignore[assignment]
        else:
            raise BrokerUnavailableError(f"unknown broker type {cfg.broker_type!r}")
    except ImportError as e:
        raise _missing(cfg, e) from e
    return await Sub.open(cfg, prefetch)


async def open_publisher(cfg: BrokerConfig) -> Publisher:
    """Connect to an outgoing queue; raises `BrokerUnavailableError` when unreachable."""
    try:
        if cfg.broker_type == LOCAL:
            from .local import LocalPublisher as Pub
        elif cfg.broker_type == MEMORY:
            from .memory import MemoryPublisher as Pub  # type: ignore[assignment]
        elif cfg.broker_type == "rabbitmq":
            from .rabbitmq import RabbitMQPublisher as Pub  # type: ignore[assignment]
        elif cfg.broker_type == "nats":
            from .nats import NatsPublisher as Pub  # type: ignore[assignment]
        elif cfg.broker_type == "pulsar":
            from .pulsar import PulsarPublisher as Pub  # type: ignore[assignment]
        else:
            raise BrokerUnavailableError(f"unknown broker type {cfg.broker_type!r}")
    except ImportError as e:
        raise _missing(cfg, e) from e
    return await Pub.open(cfg)
