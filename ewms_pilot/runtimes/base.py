"""What every container runtime provides: argv lists to run and stop one container.

No runtime ever builds a shell string: each returns an argv list for
`asyncio.create_subprocess_exec`.
"""

from __future__ import annotations

import abc
import dataclasses as dc
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

# Where a task inside a container sees the pilot's directories.
CONTAINER_DATA_ROOT = PurePosixPath("/ewms-pilot-data")
CONTAINER_DATA_HUB = CONTAINER_DATA_ROOT / "data-hub"
CONTAINER_TASK_IO = CONTAINER_DATA_ROOT / "task-io"

#: label put on every container a pilot starts (value: the pilot's id), so
#: leftovers of a pilot that was killed can be found and removed
OWNER_LABEL = "ewms-pilot.owner"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTAINER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dc.dataclass(frozen=True)
class Mount:
    """A host directory bound into the container."""

    source: Path  # absolute host path
    target: PurePosixPath  # absolute path inside the container
    readonly: bool = False


@dc.dataclass(frozen=True)
class RunSpec:
    """One container (or host process) to start."""

    image: str  # ignored by the process runtime
    argv: tuple[str, ...]  # the command inside, placeholders already substituted
    env: Mapping[str, str]
    mounts: tuple[Mount, ...]
    name: str  # unique container name; also used to stop it
    labels: Mapping[str, str] = dc.field(default_factory=dict)
    workdir: Path | None = None  # host cwd for the process runtime
    interactive: bool = False  # keep the client's stdin attached to the task (warm workers)
    #: owner-only host file the client reads `env` from (container runtimes: never on argv);
    #: written just before the start and removed after the exit, see `runtimes/envfile.py`
    env_file: Path | None = None
    #: pilot-side dir no task can reach, where a container client runs (`OCIRuntime.process_cwd`)
    client_dir: Path | None = None
    #: bytes the task may use (None: no limit); each runtime enforces it its own way
    memory_limit: int | None = None
    #: GPU ids (as the slot lists them) this task holds; the runtime exposes only these
    gpus: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checked here, once for every runtime: each value becomes exactly one
        # argv element (or env entry), so only what argv/env cannot carry is refused,
        # plus what a container CLI would read as an option.
        if not _CONTAINER_NAME.fullmatch(self.name):
            raise ValueError(
                f"invalid container name {self.name!r}: use letters, digits, '_', '.', '-'"
            )
        if self.image.startswith("-"):
            raise ValueError(f"invalid image {self.image!r}: must not start with '-'")
        for key, value in self.env.items():
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if "\0" in value:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        if any("\0" in a for a in (self.image, *self.argv)):
            raise ValueError("image or args contain a NUL byte")
        for key, value in self.labels.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"invalid label {key!r}")


def env_file_of(spec: RunSpec) -> Path:
    """The spec's env file; a spec for a container runtime without one is a bug."""
    if spec.env_file is None:
        raise ValueError(f"{spec.name}: no env file to pass the task's environment in")
    return spec.env_file


class Runtime(abc.ABC):
    """A container platform: docker, podman, apptainer or process."""

    name: str = "abstract"
    #: True when the task sees host paths as-is (no mounts, no path mapping)
    uses_host_paths: bool = False
    #: characters this runtime's bind-mount syntax cannot carry in a path
    mount_forbidden_chars: str = ""

    @abc.abstractmethod
    async def prepare_image(self, image: str) -> str:
        """Check / pull / convert `image` once at start; return the reference to run.

        Raises `RuntimeUnavailableError` with a one-line reason when it cannot.
        """

    @abc.abstractmethod
    def run_argv(self, spec: RunSpec) -> list[str]:
        """The argv that runs `spec` in the foreground until it exits."""

    def stop_argv(self, name: str, grace: float) -> list[str] | None:
        """The argv that stops a running container (SIGTERM, then SIGKILL after `grace`).

        None: the runtime has no separate stop command; the pilot signals the
        process group it started instead (apptainer, process).
        """
        return None

    def cleanup_argvs(self, label_key: str, label_value: str) -> list[list[str]]:
        """Commands that remove leftover containers carrying a pilot's label (none by default)."""
        return []

    # -- additive hooks (defaults suit container CLIs that take everything as argv) --

    def remove_argv(self, name: str) -> list[str] | None:
        """The argv that force-removes container `name` if it is still there after a stop.

        None: nothing outlives the process group (apptainer, process).
        """
        return None

    def process_env(self, spec: RunSpec, inherited: Mapping[str, str]) -> dict[str, str]:
        """The environment of the client process that `run_argv` starts.

        A container CLI gets the pilot's environment without the pilot's own
        settings (broker tokens among them): it needs its own configuration
        (CONTAINERS_CONF, DOCKER_HOST, ...), the task never sees it.
        """
        from .envfile import client_env  # local: keeps this interface module light

        return client_env(inherited)

    def env_file_text(self, env: Mapping[str, str]) -> str | None:
        """`env` in this runtime's env-file format; None: no env file (none needed, or not this runtime's way)."""
        return None

    def write_env_file(self, spec: RunSpec) -> None:
        """Write `spec.env_file` if this runtime reads the task's env from one (blocking, small)."""
        text = self.env_file_text(spec.env)
        if text is not None:
            from .envfile import write_env_file

            write_env_file(env_file_of(spec), text)

    def env_value_problem(self, value: str) -> str | None:
        """Why `value` cannot reach a task through this runtime (one phrase), or None."""
        if "\0" in value:
            return "contains a NUL byte"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode text"
        return None

    #: True when the task sees the host's GPUs by their host ids (CUDA_VISIBLE_DEVICES picks its own)
    sees_host_gpus: bool = False

    def limit_argv(self, spec: RunSpec) -> list[str]:
        """A prefix that applies the spec's limits to the client process itself (none by default)."""
        return []

    def launch_argv(self, spec: RunSpec) -> list[str]:
        """What the pilot execs for `spec` (one-shot task or warm worker): the limit prefix, then
        `run_argv`, under the parent-death signal (a SIGKILLed pilot takes its clients along)."""
        from ..tasks.parent_death import (
            with_parent_death_signal,  # local: keeps this interface module light
        )

        return with_parent_death_signal([*self.limit_argv(spec), *self.run_argv(spec)])

    def process_cwd(self, spec: RunSpec) -> Path | None:
        """The client process's working directory; None = the pilot's own."""
        return None

    async def cpu_reader(self, spec: RunSpec, client_pid: int) -> Callable[[], float | None] | None:
        """How to read the task's CPU seconds so far (EWMS_PILOT_TASK_STALL_TIMEOUT); None: cannot.

        By default the process group the pilot started (its leader `client_pid`): the task
        runs under the client (process, apptainer).
        """
        from ..tasks.stall import group_cpu  # local: keeps this interface module light

        return lambda: group_cpu(client_pid)

    async def remove_leftovers(self, label_key: str, label_value: str) -> list[str]:
        """Remove containers labelled `label_key=label_value`; returns what was removed.

        The default runs `cleanup_argvs` (ignoring failures) and cannot tell what
        they removed; container CLIs override this.
        """
        from .commands import run_command  # local: keeps this interface module light

        for argv in self.cleanup_argvs(label_key, label_value):
            await run_command(argv, timeout=CLEANUP_TIMEOUT)
        return []


#: upper bound in seconds for one cleanup command
CLEANUP_TIMEOUT = 60.0


class RuntimeUnavailableError(Exception):
    """The runtime binary or image cannot be used; message is one line."""
