"""Apptainer: runs a sandbox (unpacked directory) image, as HTCondor execute points allow.

- `run --containall --no-eval`: no host home/tmp/env leaks in, and neither the
  task's args nor its env values are shell-evaluated.
- The task's env is passed with `--env-file` (owner-only, see `envfile`), not
  `--env NAME=VALUE`: argv is world-readable in `ps`, and apptainer parses
  `--env` as a comma-separated list. Apptainer reads the file as shell
  assignments, so each value is single-quoted (never expanded).
- Only sandbox directories run reliably on execute points (SIF needs FUSE or
  setuid mounts), so other references are converted once with
  `apptainer build --fix-perms --sandbox` when allowed.
- There is no stop command: the pilot signals the client's process group,
  and apptainer takes the container (its own PID namespace) down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import functools
import hashlib
import logging
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path

from .base import RunSpec, Runtime, RuntimeUnavailableError, env_file_of
from .clientpaths import (
    APPTAINER_PATH_TRANSPORTS,
    absolute_apptainer_source,
    absolute_env,
    start_dir,
)
from .commands import run_command
from .envfile import client_env
from .mounts import require_plain_paths

LOGGER = logging.getLogger(__name__)

#: the 1.x name (with its leading underscore), the only one the config reads
MUST_BE_PRESENT_VAR = "_EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT"
#: `--bind src:dst:ro` splits on these
BIND_FORBIDDEN_CHARS = ",:\n"
#: default seconds allowed for one image conversion
BUILD_TIMEOUT = 3600.0


@functools.cache
def memory_limit_enforceable() -> bool:
    """Whether `apptainer run --memory` can work here: as root, or on cgroup v2 (rootless via systemd).

    Elsewhere apptainer refuses to start a container with a limit, so none is passed
    (the loader warns once: EWMS_PILOT_TASK_MEMORY is then not enforced).
    """
    return os.geteuid() == 0 or Path("/sys/fs/cgroup/cgroup.controllers").exists()


@dc.dataclass(frozen=True)
class BuildSource:
    """What `apptainer build` reads for an image, parsed once (`build_source`).

    `transport` is "file" for a local file (`.sif`), the transport of an archive or
    layout on disk, or "" for a URI; `rest` what follows the transport's colon;
    `path` the absolute file or layout dir it reads (None for a URI, or a path that
    is not absolute); `tag` an OCI layout's tag (`oci:DIR:TAG`).
    """

    text: str  # as handed to `apptainer build`
    transport: str = ""
    rest: str = ""
    path: str | None = None
    tag: str = ""


def build_source(image: str, base: Path | None) -> BuildSource:
    """What `apptainer build` should read for `image`, a relative path made absolute against `base`.

    URIs (`docker://`, `oras://`, ...) as given; an archive or layout on disk
    (`docker-archive:x.tar`, `oci-archive:`, `oci:`, with one colon or `://`) and a
    local file (`.sif`) with an absolute path, since the build runs in its build
    workdir; a bare reference (`ghcr.io/org/img:tag`, `python:3.12`) is a
    registry image.
    """
    transport, colon, _ = image.partition(":")
    if colon and transport in APPTAINER_PATH_TRANSPORTS:
        text = absolute_apptainer_source(image, base)
        rest = text.partition(":")[2]
        path, tag = rest, ""
        if transport == "oci" and not os.path.exists(rest) and ":" in rest:
            path, tag = rest.rsplit(":", 1)
        return BuildSource(text, transport, rest, path if os.path.isabs(path) else None, tag)
    if "://" in image:
        return BuildSource(image)
    path = image if base is None else os.path.join(base, image)
    if os.path.isfile(path):
        resolved = str(Path(path).resolve())
        return BuildSource(resolved, "file", resolved, resolved)
    return BuildSource(f"docker://{image}")


#: what `apptainer run` executes; without it apptainer falls back to `/bin/sh ARGS`
RUNSCRIPT = Path(".singularity.d") / "runscript"


def require_runscript(sandbox: Path) -> str:
    """`sandbox` as a string when apptainer can `run` it, else a one-line reason.

    A plain root file system (a debootstrap dir, a copied rootfs) has no
    runscript: `apptainer run` would hand the task's args to `/bin/sh`, and
    every event would fail with "cannot open python3" instead of the pilot not
    starting.
    """
    if not (sandbox / RUNSCRIPT).is_file():
        raise RuntimeUnavailableError(
            f"apptainer image {sandbox} has no /{RUNSCRIPT}: not an apptainer sandbox"
            f" (make one with `apptainer build --sandbox DIR docker-archive:FILE` or from a registry)"
        )
    return str(sandbox)


def sandbox_name(source: BuildSource, content: str | None = None) -> str:
    """A recognizable, file-system-safe directory name for the converted `source`.

    `content` (`disk_content`): what an image on disk holds, so its name follows its
    contents, not where it lies. An HTCondor job brings its archive into a new scratch
    dir each time, whose name a later job may reuse for another archive: by path, every
    job would convert it again, and a later one could run an earlier one's image.
    """
    if content is None:
        label = source.text
    elif source.transport == "file":
        label = os.path.basename(source.text)
    else:
        label = f"{source.transport}_{os.path.basename(source.rest.rstrip('/'))}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:100]
    digest = hashlib.sha256((source.text if content is None else content).encode()).hexdigest()[:12]
    return f"{readable}-{digest}"


def disk_content(source: BuildSource) -> str | None:
    """For an image on disk, a digest of what it holds; None otherwise.

    A file (archive, `.sif`): its bytes. An OCI layout dir (`oci:DIR[:TAG]`): its `index.json`
    and the tag. Blocking: reads the whole file (run it off the loop).
    """
    if source.path is None:
        return None
    path = Path(source.path)
    if path.is_dir():
        path = path / "index.json"
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"{source.transport}:{digest.hexdigest()}:{source.tag}"


class ApptainerRuntime(Runtime):
    """Runs each task with `apptainer run --containall --no-eval ...`."""

    name = "apptainer"
    mount_forbidden_chars = BIND_FORBIDDEN_CHARS
    sees_host_gpus = True

    def __init__(
        self,
        *,
        build_workdir: Path,
        image_directory_must_be_present: bool = True,
        debug: bool = False,
        binary: str = "apptainer",
        build_timeout: float = BUILD_TIMEOUT,
    ) -> None:
        self.build_workdir = build_workdir
        self.image_directory_must_be_present = image_directory_must_be_present
        self.debug = debug
        self.binary = binary
        self.build_timeout = build_timeout
        #: what the build's relative paths mean: the pilot's cwd when it starts (the runtime is made then)
        self.start_dir = start_dir()

    def _base(self) -> list[str]:
        return [self.binary, *(["--debug"] if self.debug else [])]

    # -- argv --

    def run_argv(self, spec: RunSpec) -> list[str]:
        argv = [*self._base(), "run", "--containall", "--no-eval"]
        for mount in spec.mounts:
            require_plain_paths(mount, self.mount_forbidden_chars, self.name)
            argv += ["--bind", f"{mount.source}:{mount.target}" + (":ro" if mount.readonly else "")]
        if spec.env:
            argv += ["--env-file", str(env_file_of(spec))]
        if spec.memory_limit is not None and memory_limit_enforceable():  # through cgroups
            argv += ["--memory", str(spec.memory_limit), "--memory-swap", str(spec.memory_limit)]
        if spec.gpus:  # the host's GPUs are visible: CUDA_VISIBLE_DEVICES (in the env) picks this task's
            argv.append("--nv")
        return [*argv, spec.image, *spec.argv]

    def env_file_text(self, env: Mapping[str, str]) -> str | None:
        if not env:
            return None
        return "".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items())

    def build_argv(self, source: str, sandbox_dir: Path) -> list[str]:
        """Convert `source` (see `build_source`) into the sandbox directory `sandbox_dir`."""
        return [*self._base(), "build", "--fix-perms", "--sandbox", str(sandbox_dir), source]

    def build_env(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """Build temp files go to the build workdir (where the space is) unless the site chose; no pilot
        settings; path-valued variables absolute (`clientpaths`: the build runs in its workdir)."""
        env = absolute_env(client_env(inherited), self.start_dir)
        if "APPTAINER_TMPDIR" not in env and "SINGULARITY_TMPDIR" not in env:
            env["APPTAINER_TMPDIR"] = str(self.build_workdir)
        return env

    async def sandbox_path(self, image: str) -> Path:
        """Where the converted `image` lives (reused by later pilots on the same host)."""
        return (await self._located(image))[1]

    async def _located(self, image: str) -> tuple[BuildSource, Path]:
        """`build_source` and `disk_content` in one trip to a thread: both look at the disk."""

        def locate() -> tuple[BuildSource, str | None]:
            source = build_source(image, self.start_dir)
            return source, disk_content(source)

        source, content = await asyncio.to_thread(locate)
        return source, self.build_workdir / sandbox_name(source, content)

    # -- image --

    async def prepare_image(self, image: str) -> str:
        """A sandbox directory as is; anything else converted once (when allowed)."""
        if not image or image.startswith("-"):
            raise RuntimeUnavailableError(f"invalid image reference {image!r}")
        if os.path.isdir(image):
            return require_runscript(Path(image).resolve())
        if self.image_directory_must_be_present:
            raise RuntimeUnavailableError(
                f"apptainer image {image!r} is not an existing sandbox directory"
                f" (set {MUST_BE_PRESENT_VAR}=false to let the pilot convert it)"
            )
        if shutil.which(self.binary) is None:
            raise RuntimeUnavailableError(f"{self.binary} not found on PATH")
        if not self.build_workdir.is_dir():
            raise RuntimeUnavailableError(
                f"apptainer build workdir {self.build_workdir} is not an existing directory"
            )
        source, target = await self._located(image)
        if target.is_dir():
            LOGGER.info(f"using {target}, converted earlier from {image}")
            return require_runscript(target)
        return await self._convert(image, source.text, target)

    async def _convert(self, image: str, source: str, target: Path) -> str:
        # build next to the target, then rename: a crash never leaves a half-built
        # sandbox that a later pilot would take for a finished one
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        LOGGER.info(f"converting {source} to the apptainer sandbox {target}")
        try:
            result = await run_command(
                self.build_argv(source, partial),
                timeout=self.build_timeout,
                env=self.build_env(os.environ),
                cwd=self.build_workdir,
            )
            if not result.ok:
                raise RuntimeUnavailableError(
                    f"cannot convert {image!r} to an apptainer sandbox: {result.reason()}"
                )
            try:
                partial.rename(target)
            except OSError as e:
                if not target.is_dir():  # not just another pilot having finished first
                    raise RuntimeUnavailableError(
                        f"cannot move the converted sandbox to {target}: {e.strerror}"
                    ) from e
        finally:
            if partial.exists():
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(shutil.rmtree, partial)
        LOGGER.info(f"image converted: {target}")
        return str(target)
