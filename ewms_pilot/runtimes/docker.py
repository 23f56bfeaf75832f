"""Docker: the `docker` CLI talking to a docker daemon (see `oci` for the shared shape)."""

from __future__ import annotations

from ..resources.gpus import cdi_id
from .oci import PULL_TIMEOUT, OCIRuntime


class DockerRuntime(OCIRuntime):
    """Runs each task with `docker run --rm --init ...`."""

    name = "docker"
    binary = "docker"

    def __init__(
        self,
        *,
        shm_size: str | None = None,
        binary: str | None = None,
        pull_timeout: float = PULL_TIMEOUT,
    ) -> None:
        super().__init__(binary=binary, pull_timeout=pull_timeout)
        # docker's default /dev/shm is 64 MB, too small for many scientific codes
        self.shm_size = shm_size

    def image_present_argv(self, image: str) -> list[str]:
        return [self.binary, "image", "inspect", "--format", "{{.Id}}", image]

    def extra_run_options(self) -> list[str]:
        return ["--shm-size", self.shm_size] if self.shm_size else []

    def gpu_options(self, gpus: tuple[str, ...]) -> list[str]:
        # a list needs docker's CSV quoting: `"device=0,1"` (one argv element, no shell)
        ids = ",".join(cdi_id(g) for g in gpus)
        return ["--gpus", f'"device={ids}"' if len(gpus) > 1 else f"device={ids}"]
