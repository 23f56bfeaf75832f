"""Container runtimes: how one task argv becomes a docker/podman/apptainer/host command."""

from __future__ import annotations

from pathlib import Path
from typing import overload

from ..config.model import ContainerPlatform, PilotConfig
from .apptainer import ApptainerRuntime
from .base import OWNER_LABEL, Mount, RunSpec, Runtime, RuntimeUnavailableError
from .docker import DockerRuntime
from .mounts import MountPolicyError, external_mounts, validate_mount, validate_mounts
from .podman import PodmanRuntime
from .process import ProcessRuntime

__all__ = [
    "OWNER_LABEL",
    "ApptainerRuntime",
    "DockerRuntime",
    "Mount",
    "MountPolicyError",
    "PodmanRuntime",
    "ProcessRuntime",
    "RunSpec",
    "Runtime",
    "RuntimeUnavailableError",
    "external_mounts",
    "get_runtime",
    "validate_mount",
    "validate_mounts",
]


@overload
def get_runtime(platform: PilotConfig) -> Runtime: ...


@overload
def get_runtime(
    platform: ContainerPlatform,
    *,
    docker_shm_size: str | None = None,
    apptainer_build_workdir: Path = Path("/var/tmp"),
    apptainer_image_directory_must_be_present: bool = True,
    container_debug: bool = False,
) -> Runtime: ...


def get_runtime(
    platform: ContainerPlatform | PilotConfig,
    *,
    docker_shm_size: str | None = None,
    apptainer_build_workdir: Path = Path("/var/tmp"),
    apptainer_image_directory_must_be_present: bool = True,
    container_debug: bool = False,
) -> Runtime:
    """The runtime for `platform` (or for a whole PilotConfig, taking its runtime settings)."""
    if isinstance(platform, PilotConfig):
        cfg = platform
        return get_runtime(
            cfg.container_platform,
            docker_shm_size=cfg.docker_shm_size,
            apptainer_build_workdir=cfg.apptainer_build_workdir,
            apptainer_image_directory_must_be_present=cfg.apptainer_image_directory_must_be_present,
            container_debug=cfg.container_debug,
        )
    match ContainerPlatform(platform):
        case ContainerPlatform.DOCKER:
            return DockerRuntime(shm_size=docker_shm_size)
        case ContainerPlatform.PODMAN:
            return PodmanRuntime()
        case ContainerPlatform.APPTAINER:
            return ApptainerRuntime(
                build_workdir=apptainer_build_workdir,
                image_directory_must_be_present=apptainer_image_directory_must_be_present,
                debug=container_debug,
            )
        case ContainerPlatform.PROCESS:
            return ProcessRuntime()
