"""HTCondor chirp status reports: job-ad attributes (or job-event-log lines) about the pilot."""

from .reporter import ChirpReporter
from .status import ChirpAttr, PilotStatus

__all__ = ["ChirpAttr", "ChirpReporter", "PilotStatus"]
