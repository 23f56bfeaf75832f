"""Pick the broker implementation for a `BrokerConfig`."""

from __future__ import annotations

from ..config.model import BrokerConfig
from .base import Publisher, Subscription

LOCAL = "local"


async def open_subscription(cfg: BrokerConfig, prefetch: int) -> Subscription:
    """Connect to the incoming queue; raises `BrokerUnavailableError` when unreachable."""
    if cfg.broker_type == LOCAL:
        from .local import LocalSubscription

        return await LocalSubscription.open(cfg, prefetch)
    from .mqclient_broker import MQClientSubscription

    return await MQClientSubscription.open(cfg, prefetch)


async def open_publisher(cfg: BrokerConfig) -> Publisher:
    """Connect to an outgoing queue; raises `BrokerUnavailableError` when unreachable."""
    if cfg.broker_type == LOCAL:
        from .local import LocalPublisher

        return await LocalPublisher.open(cfg)
    from .mqclient_broker import MQClientPublisher

    return await MQClientPublisher.open(cfg)
