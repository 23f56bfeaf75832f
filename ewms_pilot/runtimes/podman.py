"""Podman: daemonless, docker-compatible CLI (see `oci` for the shared shape)."""

from __future__ import annotations

from .oci import OCIRuntime


class PodmanRuntime(OCIRuntime):
    """Runs each task with `podman run --rm --init ...` (needs catatonit for `--init`)."""

    name = "podman"
    binary = "podman"

    def image_present_argv(self, image: str) -> list[str]:
        return [self.binary, "image", "exists", image]

    def label_template(self, key: str) -> str:
        return '{{index .Labels "' + key + '"}}'

    def force_remove_options(self) -> list[str]:
        # podman's `rm --force` otherwise waits the container's stop timeout (10 s)
        return ["--time", "0"]
