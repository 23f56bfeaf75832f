"""Podman: daemonless, docker-compatible CLI (see `oci` for the shared shape)."""

from __future__ import annotations

from ..resources.gpus import cdi_id
from .oci import OCIRuntime


class PodmanRuntime(OCIRuntime):
    """Runs each task with `podman run --rm --init ...` (needs catatonit for `--init`)."""

    name = "podman"
    binary = "podman"

    def image_present_argv(self, image: str) -> list[str]:
        return [self.binary, "image", "exists", image]

    def label_template(self, key: str) -> str:
        return '{{index .Labels "' + key + '"}}'

    def gpu_options(self, gpus: tuple[str, ...]) -> list[str]:
        """One CDI device per GPU (`nvidia-ctk cdi generate` on the node)."""
        return [arg for gpu in gpus for arg in ("--device", f"nvidia.com/gpu={cdi_id(gpu)}")]

    def force_remove_options(self) -> list[str]:
        # podman's `rm --force` otherwise waits the container's stop timeout (10 s)
        return ["--time", "0"]
