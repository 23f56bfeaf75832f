"""Configuration: read once from `EWMS_PILOT_*` env vars into a frozen `PilotConfig`."""

from .model import (
    BrokerConfig,
    ChirpDest,
    ContainerConfig,
    ContainerPlatform,
    PilotConfig,
    TaskMode,
)

__all__ = [
    "BrokerConfig",
    "ChirpDest",
    "ContainerConfig",
    "ContainerPlatform",
    "PilotConfig",
    "TaskMode",
]
