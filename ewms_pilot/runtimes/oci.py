"""What docker and podman share: the same `run`/`stop`/`rm`/`pull` command shapes.

How a container dies with its pilot:
- `--init`: a tiny init is PID 1 in the container and forwards SIGTERM to the
  task, so `stop` ends a task that has no signal handler at once instead of
  after the whole grace (a bare PID 1 ignores SIGTERM).
- The client is run attached (`run` without `-d`), so it relays signals
  (sig-proxy) and its exit code is the task's.
- On a timeout or cancellation the pilot runs `stop -t <grace>` (SIGTERM, then
  SIGKILL), kills the client, then `rm --force` in case `--rm` did not get to it.
- Every container carries `ewms-pilot.owner=<pilot id>` (RunSpec.labels), so
  what a SIGKILLed pilot left behind can be removed with `remove_leftovers`.
- The task's environment goes in through `--env-file` (owner-only, see
  `envfile`), never `--env NAME=VALUE`: argv is world-readable in `ps`. The
  format is one `NAME=VALUE` line per variable, the value taken as is: a value
  cannot hold a line break.
- The client runs in its container's private dir (`RunSpec.client_dir`), not in
  the pilot's cwd (`process_cwd` says why); relative paths it is given are made
  absolute against the pilot's start dir first (`clientpaths`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from ..tasks.stall import process_tree_reader
from .base import CLEANUP_TIMEOUT, RunSpec, Runtime, RuntimeUnavailableError, env_file_of
from .clientpaths import absolute_env, absolute_image, start_dir
from .commands import run_command
from .envfile import client_env
from .mounts import require_plain_paths

LOGGER = logging.getLogger(__name__)

#: characters `--mount type=bind,source=...` cannot carry unquoted
MOUNT_FORBIDDEN_CHARS = ',"\n'

#: seconds allowed for checking whether an image is present locally
INSPECT_TIMEOUT = 60.0
#: default seconds allowed for one pull
PULL_TIMEOUT = 1800.0
#: looking up a starting container's pid (stall detection): tries, seconds apart
PID_TRIES = 60
PID_RETRY = 0.5


class OCIRuntime(Runtime):
    """A docker-compatible CLI (docker, podman)."""

    binary: str = "abstract"
    mount_forbidden_chars = MOUNT_FORBIDDEN_CHARS

    def __init__(self, *, binary: str | None = None, pull_timeout: float = PULL_TIMEOUT) -> None:
        if binary is not None:
            self.binary = binary
        self.pull_timeout = pull_timeout
        #: what the client's relative paths mean: the pilot's cwd when it starts (the runtime is made then)
        self.start_dir = start_dir()

    def process_cwd(self, spec: RunSpec) -> Path | None:
        """The container's private dir (`spec.client_dir`), never the pilot's cwd.

        podman's conmon inherits the client's cwd and, after an out-of-memory kill,
        creates an empty `oom` file there: conmon before containers/conmon#514 (2024;
        Debian 12 has 2.1.6) always does, besides the copy in its `--persist-dir`, and
        no podman or conmon option moves that one (containers/conmon#504). In an
        HTCondor job the pilot's cwd is the scratch dir, whose new files go back to the
        submitter; in the container's dir the file goes away with it. No task may reach
        that dir: conmon follows a link there. docker (or podman behind a `docker` name)
        runs the same way, so both read relative paths alike (`clientpaths`).
        """
        return spec.client_dir

    def process_env(self, spec: RunSpec, inherited: Mapping[str, str]) -> dict[str, str]:
        """The pilot's environment without its settings; path-valued variables absolute (`clientpaths`)."""
        return absolute_env(client_env(inherited), self.start_dir)

    # -- hooks for the concrete CLIs --

    @abc.abstractmethod
    def image_present_argv(self, image: str) -> list[str]:
        """Exit code 0 when `image` is already in local storage."""

    def extra_run_options(self) -> list[str]:
        """Options only this CLI adds to `run` (placed just before the image)."""
        return []

    def force_remove_options(self) -> list[str]:
        """Options for `rm --force` so it does not wait for a stop timeout."""
        return []

    @abc.abstractmethod
    def gpu_options(self, gpus: tuple[str, ...]) -> list[str]:
        """Options exposing exactly these GPUs (inside, they are numbered from 0)."""

    # -- argv --

    def pull_argv(self, image: str) -> list[str]:
        return [self.binary, "pull", image]

    def run_argv(self, spec: RunSpec) -> list[str]:
        argv = [self.binary, "run", "--rm", "--init", "--name", spec.name]
        if spec.interactive:  # warm workers read their requests from stdin
            argv.append("--interactive")
        for key, value in spec.labels.items():
            argv += ["--label", f"{key}={value}"]
        for mount in spec.mounts:
            require_plain_paths(mount, self.mount_forbidden_chars, self.name)
            option = f"type=bind,source={mount.source},target={mount.target}"
            argv += ["--mount", option + (",readonly" if mount.readonly else "")]
        if spec.env:
            argv += ["--env-file", str(env_file_of(spec))]
        if spec.memory_limit is not None:  # swap equal to memory: no swap, a real limit
            argv += ["--memory", f"{spec.memory_limit}b", "--memory-swap", f"{spec.memory_limit}b"]
        if spec.gpus:
            argv += self.gpu_options(spec.gpus)
        argv += self.extra_run_options()
        return [*argv, spec.image, *spec.argv]

    def env_value_problem(self, value: str) -> str | None:
        if "\n" in value or "\r" in value:
            return f"contains a line break ({self.name} reads a task's environment one line per variable)"
        return super().env_value_problem(value)

    def env_file_text(self, env: Mapping[str, str]) -> str | None:
        if not env:
            return None
        for key, value in env.items():
            problem = self.env_value_problem(value)
            if problem is not None:
                raise ValueError(f"environment variable {key} {problem}")
        return "".join(f"{key}={value}\n" for key, value in env.items())

    async def cpu_reader(self, spec: RunSpec, client_pid: int) -> Callable[[], float | None] | None:
        """The container's cgroup (else process group), from its main pid (`inspect`, retried while it starts).

        The task runs under the runtime's monitor, not under the client the pilot started.
        """
        for _ in range(PID_TRIES):
            got = await run_command(
                [self.binary, "inspect", "--format", "{{.State.Pid}}", spec.name], timeout=INSPECT_TIMEOUT
            )
            text = got.stdout.strip()
            if got.ok and text.isdigit() and int(text) > 0:
                return await asyncio.to_thread(process_tree_reader, int(text))
            await asyncio.sleep(PID_RETRY)
        return None

    def stop_argv(self, name: str, grace: float) -> list[str] | None:
        return [self.binary, "stop", "-t", str(int(grace)), name]

    def remove_argv(self, name: str) -> list[str] | None:
        return [self.binary, "rm", "--force", *self.force_remove_options(), name]

    def list_labelled_argv(self, label_key: str, label_value: str) -> list[str]:
        return [
            self.binary,
            "ps",
            "--all",
            "--quiet",
            "--filter",
            f"label={label_key}={label_value}",
        ]

    # -- async operations --

    def _require_binary(self) -> None:
        if shutil.which(self.binary) is None:
            raise RuntimeUnavailableError(f"{self.binary} not found on PATH")

    async def prepare_image(self, image: str) -> str:
        """Use `image` from local storage, else pull it once; one-line error when neither works.

        Returns the reference every container runs: a path transport's relative path
        (`docker-archive:x.tar`, which `run` reads again) absolute against the start dir.
        """
        if not image or image.startswith("-"):
            raise RuntimeUnavailableError(f"invalid image reference {image!r}")
        image = absolute_image(image, self.start_dir)
        self._require_binary()
        present = await run_command(self.image_present_argv(image), timeout=INSPECT_TIMEOUT)
        if present.ok:
            LOGGER.info(f"image {image} is present locally")
            return image
        LOGGER.info(f"pulling image {image} with {self.binary}")
        pulled = await run_command(self.pull_argv(image), timeout=self.pull_timeout)
        if not pulled.ok:
            raise RuntimeUnavailableError(
                f"cannot pull image {image!r} with {self.binary}: {pulled.reason()}"
            )
        return image

    def label_template(self, key: str) -> str:
        """A `ps --format` Go template printing one label's value (docker's flavour)."""
        return '{{.Label "' + key + '"}}'

    async def labelled(self, label_key: str, label_value: str, show_key: str) -> list[tuple[str, str]]:
        """(container id, value of label `show_key`) of every container labelled `label_key=label_value`."""
        self._require_binary()
        listed = await run_command(
            [
                self.binary, "ps", "--all",
                "--filter", f"label={label_key}={label_value}",
                "--format", "{{.ID}} " + self.label_template(show_key),
            ],
            timeout=CLEANUP_TIMEOUT,
        )
        if not listed.ok:
            LOGGER.warning(f"cannot list containers: {listed.reason()}")
            return []
        rows = []
        for line in listed.stdout.splitlines():
            cid, _, value = line.strip().partition(" ")
            if cid:
                rows.append((cid, value.strip()))
        return rows

    async def remove(self, ids: list[str]) -> None:
        """Force-remove containers by id (running or not)."""
        if not ids:
            return
        removed = await run_command(
            [self.binary, "rm", "--force", *self.force_remove_options(), *ids],
            timeout=CLEANUP_TIMEOUT,
        )
        if not removed.ok:
            LOGGER.warning(f"cannot remove containers: {removed.reason()}")

    async def remove_leftovers(self, label_key: str, label_value: str) -> list[str]:
        """Force-remove every container (running or not) labelled `label_key=label_value`."""
        self._require_binary()
        listed = await run_command(
            self.list_labelled_argv(label_key, label_value), timeout=CLEANUP_TIMEOUT
        )
        ids = listed.stdout.split() if listed.ok else []
        if not listed.ok:
            LOGGER.warning(f"cannot list leftover containers: {listed.reason()}")
        if ids:
            removed = await run_command(
                [self.binary, "rm", "--force", *self.force_remove_options(), *ids],
                timeout=CLEANUP_TIMEOUT,
            )
            if not removed.ok:
                LOGGER.warning(f"cannot remove leftover containers: {removed.reason()}")
        return ids
