"""The names HTCondor sees: pilot statuses and the job-ad attributes they are reported in.

The attribute names, and the status values 1.x has, are those of ewms-pilot
1.x, so existing condor_q constraints, dashboards and the EWMS TMS keep
working; new ones (`Draining`, `Evicted`, the dead-letter count, the end
reason, task progress) are listed in docs/design.md.
"""

from __future__ import annotations

import enum


class PilotStatus(str, enum.Enum):  # noqa: UP042 - the agreed (str, Enum) style
    """Where the pilot is in its life; reported as `HTChirpEWMSPilotStatus`."""

    Started = "Started"
    RunningInitCommand = "RunningInitCommand"  # the init container runs (1.x's name)
    AwaitingFirstMessage = "AwaitingFirstMessage"
    Tasking = "Tasking"
    PendingRemainingTasks = "PendingRemainingTasks"
    Draining = "Draining"
    Evicted = "Evicted"
    FatalError = "FatalError"
    Done = "Done"


class ChirpAttr(str, enum.Enum):  # noqa: UP042 - the agreed (str, Enum) style
    """Job-ad attribute (or job-event-log line prefix) for each reported value."""

    HTChirpEWMSPilotLastUpdatedTimestamp = "HTChirpEWMSPilotLastUpdatedTimestamp"
    HTChirpEWMSPilotStartedTimestamp = "HTChirpEWMSPilotStartedTimestamp"
    HTChirpEWMSPilotStatus = "HTChirpEWMSPilotStatus"
    HTChirpEWMSPilotTasksTotal = "HTChirpEWMSPilotTasksTotal"
    HTChirpEWMSPilotTasksFailed = "HTChirpEWMSPilotTasksFailed"
    HTChirpEWMSPilotTasksSuccess = "HTChirpEWMSPilotTasksSuccess"
    HTChirpEWMSPilotTasksDeadLettered = "HTChirpEWMSPilotTasksDeadLettered"
    HTChirpEWMSPilotError = "HTChirpEWMSPilotError"
    HTChirpEWMSPilotErrorTraceback = "HTChirpEWMSPilotErrorTraceback"
    HTChirpEWMSPilotEndReason = "HTChirpEWMSPilotEndReason"
    HTChirpEWMSPilotTaskProgress = "HTChirpEWMSPilotTaskProgress"
