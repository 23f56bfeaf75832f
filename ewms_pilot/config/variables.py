"""Every `EWMS_PILOT_*` variable in one declarative table.

Each entry names the `PilotConfig` field it fills (`field`, dotted for the
nested task/init/teardown containers and the two brokers), so the loader builds
the config from this table, the banner and `config --list` print it, and
`config_as_environ` writes a config back: a setting is wired in one place.
Names and defaults match ewms-pilot 1.x; the new ones serve 2.x features.
The value types live in `types.py`.
"""

from __future__ import annotations

import dataclasses as dc
from collections.abc import Mapping

from .types import (
    ABS_PATH_LIST,
    BOOL,
    BROKER_TYPE,
    BUILD_DIR,
    CHIRP_DEST,
    COUNT,
    COUNT_OR_AUTO,
    DATA_DIR,
    ENV_JSON,
    EXT,
    INT_GE0,
    INT_GE1,
    LOG_LEVEL,
    NAME,
    NAME_LIST,
    OPT_SECONDS_GT0,
    OPT_SIZE,
    OPT_SIZE_OR_AUTO,
    PLATFORM,
    QUEUE_NAME,
    REGEX_LIST,
    SECONDS_GE0,
    SECONDS_GT0,
    SHM_SIZE,
    SIZE,
    SIZE_AUTO_OR_OFF,
    TASK_MODE,
    TEXT,
    ValueType,
)

PREFIXES = ("EWMS_PILOT_", "_EWMS_PILOT_")
_NO_LIMIT = "run it with no time limit (a hung container would hold the slot for good)"


@dc.dataclass(frozen=True, kw_only=True)
class EnvVar:
    """One environment variable: how to read it, its default, and the `PilotConfig` field it fills."""

    name: str
    type: ValueType
    default: str  # env text used when the variable is unset (or blank, see `ValueType`)
    help: str  # one line, shown in `ewms-pilot config --list` and the README
    section: str
    field: str  # `PilotConfig` attribute, dotted into a nested config ("task.image")
    secret: bool = False  # value never shown: `***` when set
    old_names: tuple[str, ...] = ()  # older spellings still accepted (with a warning)
    default_doc: str | None = None  # how docs show the default, when not just `default`
    # non-empty: a misspelled name for this variable (while it is unset) is refused, not
    # only warned about, because its default would silently do this (shown in the error)
    misspelling_refused: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Current name first, then the old spellings."""
        return (self.name, *self.old_names)

    def get(self, cfg: object) -> object:
        """This setting's value in a built config (None inside an unset init/teardown step)."""
        obj: object = cfg
        for part in self.field.split("."):
            if obj is None:
                return None
            obj = getattr(obj, part)
        return obj


def _container_vars(which: str, section: str, what: str, extra_image_help: str) -> list[EnvVar]:
    upper = which.upper()
    return [
        EnvVar(
            name=f"EWMS_PILOT_{upper}_IMAGE",
            type=NAME,
            default="",
            section=section,
            help=f"Image to run {what}{extra_image_help}",
            field=f"{which}.image",
            default_doc="required unless platform is `process`" if which == "task" else None,
        ),
        EnvVar(
            name=f"EWMS_PILOT_{upper}_ARGS",
            type=TEXT,
            default="",
            section=section,
            help=f"Arguments for the {which} command, split with shell-like quoting (never run by a shell)"
            + (
                "; required when platform is `process` (it is the command)"
                if which == "task"
                else ""
            ),
            field=f"{which}.args",
        ),
        EnvVar(
            name=f"EWMS_PILOT_{upper}_ENV_JSON",
            type=ENV_JSON,
            default="{}",
            section=section,
            help=f'Extra env vars for the {which} as a JSON object, e.g. {{"K": "v"}} (docker/podman: no line breaks in values)',
            field=f"{which}.env",
        ),
    ]


def _broker_vars(direction: str) -> list[EnvVar]:
    upper = direction.upper()
    section = f"{direction} queue"
    return [
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}",
            type=QUEUE_NAME,
            default="",
            section=section,
            help=f"Name of the {direction} queue",
            field=f"{direction}.queue",
            default_doc="required",
        ),
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}_AUTH_TOKEN",
            type=TEXT,
            default="",
            section=section,
            help=f"Auth token for the {direction} queue",
            field=f"{direction}.auth_token",
            secret=True,
        ),
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}_BROKER_TYPE",
            type=BROKER_TYPE,
            default="",
            section=section,
            help=f"Broker of the {direction} queue: rabbitmq, nats, pulsar or local (embedded SQLite)",
            field=f"{direction}.broker_type",
            default_doc="required",
        ),
        EnvVar(
            name=f"EWMS_PILOT_QUEUE_{upper}_BROKER_ADDRESS",
            type=NAME,
            default="",
            section=section,
            help=f"Broker address of the {direction} queue: rabbitmq `[amqp://|amqps://][USER[:PASSWORD]@]HOST[:PORT][/VHOST]` (amqps: TLS, server certificate checked against the system CAs or `SSL_CERT_FILE`), "
            "nats `[nats://][TOKEN@]HOST[:PORT]`, local: the SQLite file; URL passwords are masked in logs",
            field=f"{direction}.address",
            default_doc="required",
        ),
    ]


VARIABLES: tuple[EnvVar, ...] = (
    *_container_vars("task", "task", "for each event", ""),
    EnvVar(
        name="EWMS_PILOT_TASK_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="task",
        help="Seconds a task may run before it is killed and counted as failed",
        field="task.timeout",
        old_names=("EWMS_PILOT_SUBPROC_TIMEOUT",),
        default_doc="no limit",
        misspelling_refused=_NO_LIMIT,
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_STALL_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="task",
        help="Seconds a one-shot task may use no CPU at all before it is stopped as TaskStalledError (a "
        "TaskTimeoutError): process/apptainer read its process group, podman/docker its container's cgroup",
        field="task_stall_timeout",
        default_doc="off",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_MODE",
        type=TASK_MODE,
        default="oneshot",
        section="task",
        help="`oneshot`: one container per event; `warm`: long-lived workers take many events",
        field="task_mode",
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_CONCURRENT_TASKS",
        type=COUNT_OR_AUTO,
        default="1",
        section="task",
        help="How many tasks run at the same time; `auto`: one per EWMS_PILOT_TASK_CPUS of the slot's CPUs "
        "(HTCondor machine ad, else cgroup and CPU affinity), fewer if EWMS_PILOT_TASK_MEMORY or EWMS_PILOT_TASK_GPUS do not fit",
        field="max_concurrent_tasks",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_CPUS",
        type=INT_GE1,
        default="1",
        section="task resources",
        help="CPUs one task uses (sizes EWMS_PILOT_MAX_CONCURRENT_TASKS=auto; not enforced)",
        field="task_cpus",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_MEMORY",
        type=OPT_SIZE_OR_AUTO,
        default="",
        section="task resources",
        help="Memory limit of each task (e.g. 2G, 512M; `auto`: the slot's memory minus 256 MiB for the pilot, "
        "divided by the concurrency). docker/podman: `--memory` = `--memory-swap`; apptainer: `--memory` (needs cgroups); "
        "process: address-space limit. A task over it fails as TaskOutOfMemoryError",
        field="task_memory",
        default_doc="no limit",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_GPUS",
        type=INT_GE0,
        default="0",
        section="task resources",
        help="GPUs each task gets from the slot's (AssignedGPUs, else CUDA_VISIBLE_DEVICES; 10000 = none): "
        "its own CUDA_VISIBLE_DEVICES, podman `--device nvidia.com/gpu=ID`, docker `--gpus device=ID`, apptainer `--nv`. "
        "Caps the concurrency; one-shot tasks only; untested on GPU hardware",
        field="task_gpus",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_LOG_MAX",
        type=OPT_SIZE,
        default="16M",
        section="task resources",
        help="Most bytes kept of each task's stdout and stderr files: beyond it the head and the tail are kept "
        "around a marker (empty or 0: keep all)",
        field="task_log_max",
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_RESULT_SIZE",
        type=SIZE,
        default="64M",
        section="task resources",
        help="Largest outfile result published; a larger one fails the task (InvalidDataFromOutfileException)",
        field="max_result_bytes",
    ),
    EnvVar(
        name="EWMS_PILOT_LIFETIME",
        type=OPT_SECONDS_GT0,
        default="",
        section="task resources",
        help="Seconds this pilot may run (from its start). Under HTCondor the job ad's `OriginalTime` (set by EWMS) or "
        "`AllowedJobDuration` counts too, from the job's start; the earlier end wins. No event is taken unless "
        "EWMS_PILOT_TASK_TIMEOUT (else the longest task so far) plus 5 s fits in the time left; then the pilot "
        "drains and exits 0, \"lifetime ending\"",
        field="lifetime",
        default_doc="the job ad's, else no limit",
    ),
    EnvVar(
        name="EWMS_PILOT_MIN_FREE_DISK",
        type=SIZE_AUTO_OR_OFF,
        default="auto",
        section="task resources",
        help="Free space needed where task dirs live to take an event (`auto`: 1G, or 10% of the slot's disk if "
        "less; 0: no check). Below it no event is taken while tasks run; with none running the pilot ends "
        "(exit 8). A task that fills the disk fails as DiskFullError",
        field="min_free_disk",
    ),
    *_container_vars("init", "init", "once before any event", " (empty: no init step)"),
    EnvVar(
        name="EWMS_PILOT_INIT_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="init",
        help="Seconds the init container may run",
        field="init.timeout",
        default_doc="no limit",
        misspelling_refused=_NO_LIMIT,
    ),
    *_container_vars(
        "teardown", "teardown", "once after the last event", " (empty: no teardown step)"
    ),
    EnvVar(
        name="EWMS_PILOT_TEARDOWN_TIMEOUT",
        type=OPT_SECONDS_GT0,
        default="",
        section="teardown",
        help="Seconds the teardown container may run",
        field="teardown.timeout",
        default_doc="no limit",
        misspelling_refused=_NO_LIMIT,
    ),
    *_broker_vars("incoming"),
    EnvVar(
        name="EWMS_PILOT_PREFETCH",
        type=COUNT,
        default="1",
        section="incoming queue",
        help="Events held unacked at once (raised to EWMS_PILOT_MAX_CONCURRENT_TASKS if lower)",
        field="prefetch",
    ),
    EnvVar(
        name="EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE",
        type=OPT_SECONDS_GT0,
        default="",
        section="incoming queue",
        help="Seconds to wait for the first event before ending with nothing done",
        field="timeout_first_message",
        default_doc="= EWMS_PILOT_TIMEOUT_QUEUE_INCOMING",
    ),
    EnvVar(
        name="EWMS_PILOT_TIMEOUT_QUEUE_INCOMING",
        type=SECONDS_GT0,
        default="1",
        section="incoming queue",
        help="Seconds the incoming queue may stay empty before the pilot finishes",
        field="timeout_incoming",
    ),
    *_broker_vars("outgoing"),
    EnvVar(
        name="EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST",
        type=DATA_DIR,
        default="",
        section="files",
        help="Directory holding `ewms-pilot-data/` (task dirs, data hub); relative paths resolve against the working directory. "
        "Checked at start: an existing directory (or one that can be made) writable by the pilot, not under /proc, /sys or /dev",
        field="data_dir_parent",
        default_doc="`$_CONDOR_SCRATCH_DIR` when set (an HTCondor job), else /",
    ),
    EnvVar(
        name="EWMS_PILOT_INFILE_EXT",
        type=EXT,
        default=".in",
        section="files",
        help="Extension of the file each event is written to for the task",
        field="infile_ext",
    ),
    EnvVar(
        name="EWMS_PILOT_OUTFILE_EXT",
        type=EXT,
        default=".out",
        section="files",
        help="Extension of the file the task writes its result to",
        field="outfile_ext",
    ),
    EnvVar(
        name="EWMS_PILOT_EXTERNAL_DIRECTORIES",
        type=ABS_PATH_LIST,
        default="",
        section="files",
        help="Existing absolute host directories mounted read-only into tasks at the same path (commas/spaces, a JSON list or a Python list); /, /proc, /sys, /dev, /run, /boot and links into them are refused",
        field="external_directories",
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_KEEP_ALL_TASK_FILES",
        type=BOOL,
        default="false",
        section="files",
        help="Keep every task's directory, not only those of failed tasks",
        field="keep_all_task_files",
    ),
    EnvVar(
        name="EWMS_PILOT_DUMP_TASK_OUTPUT",
        type=BOOL,
        default="false",
        section="files",
        help="Copy each task's stdout/stderr to the pilot's stdout/stderr",
        field="dump_task_output",
    ),
    EnvVar(
        name="EWMS_PILOT_CONTAINER_PLATFORM",
        type=PLATFORM,
        default="docker",
        section="runtime",
        help="How tasks run: docker, podman, apptainer, or process (plain host command, no image)",
        field="container_platform",
        old_names=("_EWMS_PILOT_CONTAINER_PLATFORM",),
    ),
    EnvVar(
        name="EWMS_PILOT_CONTAINER_DEBUG",
        type=BOOL,
        default="false",
        section="runtime",
        help="Run the container tool with its debug output",
        field="container_debug",
    ),
    EnvVar(
        name="_EWMS_PILOT_DOCKER_SHM_SIZE",
        type=SHM_SIZE,
        default="",
        section="runtime",
        help="docker `--shm-size` for tasks (e.g. 2g)",
        field="docker_shm_size",
        default_doc="docker's default",
    ),
    EnvVar(
        name="_EWMS_PILOT_APPTAINER_BUILD_WORKDIR",
        type=BUILD_DIR,
        default="/var/tmp",
        section="runtime",
        help="Where apptainer converts an image that is not a sandbox dir (registry, `docker-archive:`/`oci-archive:` file, `.sif`) into one, reused by later pilots; relative paths are the pilot's start dir's",
        field="apptainer_build_workdir",
    ),
    EnvVar(
        name="_EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT",
        type=BOOL,
        default="true",
        section="runtime",
        help="Apptainer images must be existing sandbox directories (no building from a registry)",
        field="apptainer_image_directory_must_be_present",
    ),
    EnvVar(
        name="EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR",
        type=BOOL,
        default="true",
        section="task failures",
        help="After a task fails, take no new events (a bad node should not eat the queue)",
        field="stop_listening_on_task_error",
    ),
    EnvVar(
        name="EWMS_PILOT_OKAY_ERRORS",
        type=NAME_LIST,
        default="",
        section="task failures",
        help="Task error class names that do not trigger EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR (commas/spaces, a JSON list or a Python list)",
        field="okay_errors",
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_QUARANTINE_TIME",
        type=SECONDS_GE0,
        default="0",
        section="task failures",
        help="Seconds to sleep after stopping on a task error, so HTCondor does not reuse a bad node at once",
        field="quarantine_time",
    ),
    EnvVar(
        name="EWMS_PILOT_TASK_FAIL_PATTERNS",
        type=REGEX_LIST,
        default="",
        section="task failures",
        help="JSON or Python list of regexes (never split on commas: a regex has them); a task with a stdout/stderr line matching one counts as failed, even with exit code 0",
        field="task_fail_patterns",
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_SHUTDOWN_GRACE",
        type=SECONDS_GE0,
        default="10",
        section="reliability",
        help="Seconds running tasks get to finish after SIGTERM before they are stopped (0: none); in an HTCondor job at most its vacate time (JobMaxVacateTime, MachineMaxVacateTime) minus 5",
        field="shutdown_grace",
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_DELIVERIES",
        type=INT_GE1,
        default="3",
        section="reliability",
        help="Attempts per event: an event whose task failed this many times is not run again "
        "(it goes to EWMS_PILOT_QUEUE_DEADLETTER, if set); evictions and crashes do not count",
        field="max_deliveries",
    ),
    EnvVar(
        name="EWMS_PILOT_MAX_REDELIVERIES",
        type=INT_GE1,
        default="20",
        section="reliability",
        help="Raw broker deliveries of one event (evictions, crashes, prefetch included): over this many "
        "it is dead-lettered without running (the event that kills every pilot that touches it)",
        field="max_redeliveries",
    ),
    EnvVar(
        name="EWMS_PILOT_QUEUE_DEADLETTER",
        type=QUEUE_NAME,
        default="",
        section="reliability",
        help="Queue (on the incoming broker) for events over EWMS_PILOT_MAX_DELIVERIES or "
        "EWMS_PILOT_MAX_REDELIVERIES (empty: no dead-letter queue; such events are dropped with an error line)",
        field="queue_deadletter",
        misspelling_refused="drop events over the delivery limit instead of keeping them",
        default_doc="none",
    ),
    EnvVar(
        name="EWMS_PILOT_PUBLISH_RETRIES",
        type=INT_GE0,
        default="5",
        section="reliability",
        help="Retries of a failed publish before the event is released (given back, no attempt counted)",
        field="publish_retries",
    ),
    EnvVar(
        name="EWMS_PILOT_PUBLISH_DEADLINE",
        type=SECONDS_GT0,
        default="60",
        section="reliability",
        help="Seconds one publish (with its retries) may take",
        field="publish_deadline",
    ),
    EnvVar(
        name="EWMS_PILOT_RECONNECT_DEADLINE",
        type=SECONDS_GE0,
        default="120",
        section="reliability",
        help="Seconds to keep reconnecting to a lost broker before giving up (exit code 5)",
        field="reconnect_deadline",
    ),
    EnvVar(
        name="EWMS_PILOT_CL_LOG",
        type=LOG_LEVEL,
        default="INFO",
        section="logging",
        help="Log level of the pilot's own loggers",
        field="log_level",
    ),
    EnvVar(
        name="EWMS_PILOT_CL_LOG_THIRD_PARTY",
        type=LOG_LEVEL,
        default="WARNING",
        section="logging",
        help="Log level of third-party loggers",
        field="log_level_third_party",
    ),
    EnvVar(
        name="EWMS_PILOT_HTCHIRP",
        type=BOOL,
        default="false",
        section="HTCondor chirp",
        help="Report status to HTCondor with chirp",
        field="htchirp",
    ),
    EnvVar(
        name="EWMS_PILOT_HTCHIRP_DEST",
        type=CHIRP_DEST,
        default="JOB_ATTR",
        section="HTCondor chirp",
        help="Chirp destination: JOB_ATTR or JOB_EVENT_LOG",
        field="htchirp_dest",
    ),
    EnvVar(
        name="EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL",
        type=SECONDS_GE0,
        default="60",
        section="HTCondor chirp",
        help="Minimum seconds between two chirp updates",
        field="htchirp_ratelimit_interval",
    ),
    EnvVar(
        name="EWMS_PILOT_STRICT_CONFIG",
        type=BOOL,
        default="false",
        section="configuration",
        help="Refuse (exit 2) every unknown EWMS_PILOT_* name instead of warning about it",
        field="strict_config",
    ),
)

BY_NAME: Mapping[str, EnvVar] = {name: var for var in VARIABLES for name in var.names}
"""Every accepted spelling (current and old) -> its variable."""
