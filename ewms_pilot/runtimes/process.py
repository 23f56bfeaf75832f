"""The task argv run directly on the host: no image, no isolation (laptops, CI, tests)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from .base import RunSpec, Runtime
from .envfile import task_host_env

_PRLIMIT = shutil.which("prlimit")


class ProcessRuntime(Runtime):
    """Runs `spec.argv` as a host process: `spec.env` plus the allowed part of the pilot's env."""

    name = "process"
    uses_host_paths = True
    sees_host_gpus = True

    def limit_argv(self, spec: RunSpec) -> list[str]:
        """`prlimit --as=N --`: an address-space limit (no cgroup without root); exec'd, no preexec_fn."""
        if spec.memory_limit is None:
            return []
        if _PRLIMIT is None:
            raise ValueError("EWMS_PILOT_TASK_MEMORY needs util-linux's prlimit for the process runtime")
        return [_PRLIMIT, f"--as={spec.memory_limit}", "--"]

    async def prepare_image(self, image: str) -> str:
        """Nothing to prepare: the image is ignored."""
        return image

    def run_argv(self, spec: RunSpec) -> list[str]:
        if not spec.argv:
            raise ValueError("the process runtime needs a command: the task args are empty")
        return list(spec.argv)

    def process_env(self, spec: RunSpec, inherited: Mapping[str, str]) -> dict[str, str]:
        return {**task_host_env(inherited), **spec.env}

    def process_cwd(self, spec: RunSpec) -> Path | None:
        return spec.workdir
