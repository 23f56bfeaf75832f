"""Which of the slot's GPUs each running task holds, and how a runtime names them.

HTCondor lists a slot's GPUs in `AssignedGPUs` as `CUDA0,CUDA1` or as
`GPU-<uuid>`; CUDA, CDI and docker want `0` or the UUID. The concurrency is
capped at load to what the GPUs allow (resources/sizing.py), so a lease
never waits; none free is a bug, raised as one.
Untested on GPU hardware: none is on the machines this was written on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

_CUDA_N = re.compile(r"CUDA(\d+)")


def device_id(gpu: str) -> str:
    """`CUDA3` -> `3`; a UUID (`GPU-...`) or a plain index as is."""
    m = _CUDA_N.fullmatch(gpu)
    return m.group(1) if m else gpu


def cdi_id(gpu: str) -> str:
    """The device's name in `nvidia.com/gpu=<name>` (CDI) and `--gpus device=<name>` (docker)."""
    return device_id(gpu)


class GpuPool:
    """Hands out `per_task` GPUs to each task, and takes them back when it ends."""

    def __init__(self, gpus: tuple[str, ...], per_task: int) -> None:
        self.per_task = per_task
        self._free = list(gpus)

    @contextlib.contextmanager
    def lease(self) -> Iterator[tuple[str, ...]]:
        """The GPUs of one task (none when tasks get none), given back on exit."""
        if self.per_task == 0:
            yield ()
            return
        if len(self._free) < self.per_task:
            raise RuntimeError(f"no {self.per_task} free GPU(s) for a task: concurrency exceeds the GPUs")
        held = tuple(self._free[: self.per_task])
        del self._free[: self.per_task]
        try:
            yield held
        finally:
            self._free.extend(held)
