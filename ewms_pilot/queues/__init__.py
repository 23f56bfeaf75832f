"""Queues: the pilot's broker interface and its implementations."""

from .base import Delivery, Publisher, Settlement, Subscription
from .factory import open_publisher, open_subscription

__all__ = ["Delivery", "Publisher", "Settlement", "Subscription", "open_publisher", "open_subscription"]
