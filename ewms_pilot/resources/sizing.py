"""How many tasks at once, and how much memory each: decided once, at config load, from the slot.

`EWMS_PILOT_MAX_CONCURRENT_TASKS=auto` runs one task per
`EWMS_PILOT_TASK_CPUS` of the slot's CPUs, fewer when the per-task memory
(`EWMS_PILOT_TASK_MEMORY`) or GPUs (`EWMS_PILOT_TASK_GPUS`) do not fit that
many times. `EWMS_PILOT_TASK_MEMORY=auto` is the slot's memory, minus the
pilot's own share, divided by the concurrency. The rest of the pilot only
ever sees the resulting numbers in `PilotConfig`.
"""

from __future__ import annotations

import dataclasses as dc
import re
from typing import Final, Literal

from .slot import Slot

AUTO: Final = "auto"
Auto = Literal["auto"]

#: memory kept for the pilot itself (Python, broker clients, container CLIs) when sizing `auto`
PILOT_MEMORY_SHARE = 256 * 2**20
#: the smallest per-task memory limit: below it no container or interpreter even starts
MIN_TASK_MEMORY = 16 * 2**20
MAX_SIZE = 2**60

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
SIZE_EXPECTED = "a size such as 512M or 2G (K, M, G, T: powers of 1024; no unit: bytes)"


def parse_size(raw: str) -> int:
    """Bytes from `2G`, `512M`, `1.5g`, `64MiB`, `1048576`; ValueError(SIZE_EXPECTED) otherwise."""
    m = _SIZE.fullmatch(raw.strip())
    if m is None:
        raise ValueError(SIZE_EXPECTED)
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if not 0 < value <= MAX_SIZE:
        raise ValueError(SIZE_EXPECTED)
    return value


def render_size(value: object) -> str:
    """Env text for a size in bytes (`parse_size` reads it back)."""
    return "" if value is None else str(value)


def human(n: int) -> str:
    """`64 MiB`, `2 GiB`, `1.5 GiB`: for messages."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


class SizingError(ValueError):
    """A per-task request the slot cannot meet; names the variable to change."""

    def __init__(self, variable: str, expected: str) -> None:
        self.variable = variable
        self.expected = expected
        super().__init__(expected)


@dc.dataclass(frozen=True)
class Sizing:
    """What the pilot runs with, and why (for the start line)."""

    max_concurrent_tasks: int
    task_memory: int | None  # bytes per task; None = no limit
    notes: tuple[str, ...] = ()



def describe_use(slot: Slot, concurrency: int, task_memory: int | None, task_gpus: int) -> str:
    """The start line: what was found, and what the pilot will use of it."""
    limit = f"a {human(task_memory)} memory limit" if task_memory else "no memory limit"
    gpus = f", {task_gpus} GPU(s)" if task_gpus else ""
    return f"slot: {slot.describe()}; the pilot runs up to {concurrency} task(s) at once, each with {limit}{gpus}"


def _usable_memory(slot: Slot) -> int | None:
    if slot.memory_bytes is None:
        return None
    return max(0, slot.memory_bytes - PILOT_MEMORY_SHARE)


def size_tasks(
    slot: Slot,
    *,
    concurrency: int | Auto,
    task_cpus: int,
    task_memory: int | Auto | None,
    task_gpus: int,
    max_count: int,
) -> Sizing:
    """The concurrency and per-task memory for `slot`; SizingError when a task cannot fit at all."""
    notes: list[str] = []
    usable = _usable_memory(slot)
    caps: list[int] = []
    if task_gpus:
        gpu_cap = len(slot.gpus) // task_gpus
        if gpu_cap == 0:
            raise SizingError(
                "EWMS_PILOT_TASK_GPUS",
                f"at most {len(slot.gpus)} (the GPUs of this slot: {','.join(slot.gpus) or 'none'})",
            )
        caps.append(gpu_cap)
    if isinstance(task_memory, int) and usable is not None:
        mem_cap = usable // task_memory
        if mem_cap == 0:
            raise SizingError(
                "EWMS_PILOT_TASK_MEMORY",
                f"at most {human(usable)} (the slot's memory minus {human(PILOT_MEMORY_SHARE)} for the pilot)",
            )
        if not isinstance(concurrency, int):
            caps.append(mem_cap)
        elif concurrency > mem_cap:
            notes.append(f"{concurrency} tasks x {human(task_memory)} exceed the slot's memory")
    if not isinstance(concurrency, int):
        by_cpu = slot.cpus // task_cpus
        if by_cpu == 0:
            raise SizingError(
                "EWMS_PILOT_TASK_CPUS",
                f"at most {slot.cpus} (the CPUs of this slot) with EWMS_PILOT_MAX_CONCURRENT_TASKS=auto",
            )
        n = min([by_cpu, *caps, max_count])
    else:
        n = concurrency
        if caps and n > min(caps):
            notes.append(f"EWMS_PILOT_MAX_CONCURRENT_TASKS={n} capped to {min(caps)}: one GPU set per task")
            n = min(caps)
    memory = task_memory if isinstance(task_memory, int) else None
    if task_memory == AUTO:
        if usable is None:
            raise SizingError(
                "EWMS_PILOT_TASK_MEMORY", f"{SIZE_EXPECTED}: `auto` needs the slot's memory, not known here"
            )
        memory = usable // n
        if memory < MIN_TASK_MEMORY:
            raise SizingError(
                "EWMS_PILOT_TASK_MEMORY",
                f"{SIZE_EXPECTED}: `auto` gives {human(memory)} per task, below {human(MIN_TASK_MEMORY)}",
            )
    return Sizing(n, memory, tuple(notes))
