"""The pilot's configuration as one frozen value, built once at start and passed down."""

from __future__ import annotations

import dataclasses as dc
import enum
from collections.abc import Mapping
from pathlib import Path

from ..resources.lifetime import Lifetime
from ..resources.slot import Slot
from ..tasks.io import DEFAULT_MAX_RESULT_BYTES


class ContainerPlatform(str, enum.Enum):
    """How a task's argv is executed."""

    DOCKER = "docker"
    PODMAN = "podman"
    APPTAINER = "apptainer"
    PROCESS = "process"  # plain host process, no image (laptop testing, CI)


class ChirpDest(str, enum.Enum):
    """Where HTCondor chirp updates go."""

    JOB_ATTR = "JOB_ATTR"
    JOB_EVENT_LOG = "JOB_EVENT_LOG"


class TaskMode(str, enum.Enum):
    """One container per event, or long-lived warm workers fed many events."""

    ONESHOT = "oneshot"
    WARM = "warm"


@dc.dataclass(frozen=True)
class BrokerConfig:
    """One queue on one broker."""

    queue: str
    broker_type: str  # rabbitmq | nats | pulsar | local
    address: str
    auth_token: str = dc.field(default="", repr=False)  # never logged

    def __repr__(self) -> str:
        """Like the generated repr, but a password in `address` is masked (secrets never logged)."""
        from .redact import redact_url

        return (
            f"BrokerConfig(queue={self.queue!r}, broker_type={self.broker_type!r}, "
            f"address={redact_url(self.address)!r})"
        )


@dc.dataclass(frozen=True)
class ContainerConfig:
    """An image to run with its args, env and time limit (task, init or teardown)."""

    image: str
    args: str = ""  # raw string, split with shell-like quoting at run time
    env: Mapping[str, str] = dc.field(default_factory=dict)
    timeout: float | None = None  # seconds; None = no limit


@dc.dataclass(frozen=True)
class PilotConfig:
    """Every setting the pilot runs with (see `ewms-pilot config --list`)."""

    task: ContainerConfig
    incoming: BrokerConfig
    outgoing: BrokerConfig
    init: ContainerConfig | None = None
    teardown: ContainerConfig | None = None

    # incoming queue behaviour
    prefetch: int = 1
    timeout_first_message: float = 1.0  # defaults to timeout_incoming
    timeout_incoming: float = 1.0

    # task files
    infile_ext: str = ".in"
    outfile_ext: str = ".out"
    external_directories: tuple[Path, ...] = ()
    data_dir_parent: Path = Path("/")  # data lives in <this>/ewms-pilot-data
    keep_all_task_files: bool = False
    dump_task_output: bool = False

    # runtime
    container_platform: ContainerPlatform = ContainerPlatform.DOCKER
    container_debug: bool = False
    docker_shm_size: str | None = None
    apptainer_build_workdir: Path = Path("/var/tmp")
    apptainer_image_directory_must_be_present: bool = True
    task_mode: TaskMode = TaskMode.ONESHOT

    # task handling
    max_concurrent_tasks: int = 1  # `auto` is resolved at load (resources/sizing.py)
    task_stall_timeout: float | None = None  # s with no CPU use before a task is stopped; None = off
    task_cpus: int = 1
    task_memory: int | None = None  # bytes per task; None = no limit (`auto` resolved at load)
    task_gpus: int = 0
    task_log_max: int | None = 16 * 2**20  # bytes kept of each of a task's stdout/stderr; None = all
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    # bytes free where task dirs live to take an event; `auto` is resolved at load from the slot's
    # disk (outside HTCondor: the free space then, which changes: not compared)
    min_free_disk: int | None = dc.field(default=None, compare=False)
    lifetime: float | None = None  # EWMS_PILOT_LIFETIME seconds; the end found at load: `lifetime_end`
    stop_listening_on_task_error: bool = True
    okay_errors: frozenset[str] = frozenset()
    quarantine_time: float = 0.0
    task_fail_patterns: tuple[str, ...] = ()

    # reliability
    shutdown_grace: float = 10.0
    max_deliveries: int = 3  # attempts (failed task runs) per event
    max_redeliveries: int = 20  # raw broker deliveries of one copy
    queue_deadletter: str = ""
    publish_retries: int = 5
    publish_deadline: float = 60.0
    reconnect_deadline: float = 120.0

    # logging
    log_level: str = "INFO"
    log_level_third_party: str = "WARNING"

    # HTCondor chirp
    htchirp: bool = False
    htchirp_dest: ChirpDest = ChirpDest.JOB_ATTR
    htchirp_ratelimit_interval: float = 60.0

    # configuration itself
    strict_config: bool = False  # unknown EWMS_PILOT_* names refused, not warned about

    # found at load, not configured: what the slot has (free disk changes: not compared)
    slot: Slot | None = dc.field(default=None, compare=False)
    # when the pilot's time is up (EWMS_PILOT_LIFETIME or the job ad; resources/lifetime.py)
    lifetime_end: Lifetime | None = dc.field(default=None, compare=False)

    @property
    def data_dir(self) -> Path:
        """`<parent>/ewms-pilot-data`: task dirs and the data hub live here."""
        return self.data_dir_parent / "ewms-pilot-data"

    @property
    def data_hub_dir(self) -> Path:
        """Shared between the init container, every task and teardown."""
        return self.data_dir / "data-hub"

    @property
    def effective_prefetch(self) -> int:
        """Never fewer unacked events than task slots, or slots starve."""
        return max(self.prefetch, self.max_concurrent_tasks)
