"""Which pilot owns a container, and removing containers whose pilot died.

Every task container is labelled with its pilot's machine and process
identity. A pilot that is SIGKILLed cannot stop its containers; its podman or
docker clients get SIGTERM through the kernel's parent-death signal (see
`tasks/process.py`), which `--init` passes to the task, and whatever still
runs is removed by the next pilot started on the same machine, which sweeps
containers whose owner process is gone.
"""

from __future__ import annotations

import functools
import hashlib
import logging

from .. import liveness
from ..runtimes.base import Runtime
from ..runtimes.oci import OCIRuntime

LOGGER = logging.getLogger("ewms_pilot.ownership")

OWNER = "ewms-pilot.owner"  # the pilot id (also in the container name)
MACHINE = "ewms-pilot.machine"  # hash of hostname + boot id + pid namespace
HOLDER = "ewms-pilot.holder"  # "<pid>:<start time>" of the pilot process


def _machine_key(identity: liveness.ProcessIdentity) -> str:
    return hashlib.sha256(identity.machine.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def owner_labels(pilot_id: str) -> dict[str, str]:
    """Labels for a container started by this pilot process."""
    me = liveness.current()
    return {OWNER: pilot_id, MACHINE: _machine_key(me), HOLDER: f"{me.pid}:{me.start}"}


async def sweep_orphans(runtime: Runtime) -> list[str]:
    """Remove this machine's pilot containers whose pilot process is gone; returns their ids."""
    if not isinstance(runtime, OCIRuntime):
        return []
    me = liveness.current()
    orphans = []
    for cid, holder in await runtime.labelled(MACHINE, _machine_key(me), HOLDER):
        pid_text, _, start = holder.partition(":")
        try:
            owner = liveness.ProcessIdentity(me.machine, int(pid_text), start)
        except ValueError:
            continue
        if liveness.is_surely_dead(owner, me):
            orphans.append(cid)
    if orphans:
        LOGGER.warning(f"removing {len(orphans)} container(s) left running by a dead pilot: {' '.join(orphans)}")
        await runtime.remove(orphans)
    return orphans
