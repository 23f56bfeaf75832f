"""The init container: runs once before any event is taken, and may fill the data hub."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..config.model import ContainerConfig, PilotConfig
from ..runtimes.base import Runtime
from ..runtimes.spec import SpecBuilder
from ..tasks.errors import ContainerRunError, TaskFailure, TaskTimeoutError, read_tail
from ..tasks.process import run_to_completion
from ..tasks.taskdir import make_fresh_dir

LOGGER = logging.getLogger("ewms_pilot.init")


class InitFailedError(Exception):
    """The init (or teardown) container failed, timed out or could not start.

    `failure` says how the container itself failed (None: it never ran to an end);
    the Python API raises it to 1.x callers as a `ContainerRunError`.
    """

    def __init__(self, message: str, failure: TaskFailure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


async def run_once_container(
    cfg: PilotConfig,
    container: ContainerConfig,
    runtime: Runtime,
    pilot_id: str,
    role: str,
    stop: asyncio.Event,
    *,
    stop_grace: float = 5.0,
) -> None:
    """Run `container` with the data hub mounted; raise `InitFailedError` unless it exits 0."""
    image = await runtime.prepare_image(container.image)
    outputs = cfg.data_dir / role / "outputs"
    # a warm worker (or an older pilot's) may have planted links there: never written through;
    # no task runs meanwhile (init: before the first, teardown: after the last)
    await asyncio.to_thread(make_fresh_dir, cfg.data_dir, Path(role, "outputs"))
    specs = await asyncio.to_thread(SpecBuilder.for_pilot, cfg, runtime, pilot_id)
    spec = specs.once(image, container, role, outputs)
    LOGGER.info(f"running {role} container ({container.image or 'host process'})")
    run = asyncio.ensure_future(
        run_to_completion(
            runtime,
            spec,
            stdout_path=outputs / "stdoutfile",
            stderr_path=outputs / "stderrfile",
            timeout=container.timeout,
            stop_grace=stop_grace,
        )
    )
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not run.done():
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        raise InitFailedError(f"{role} container stopped: the pilot is stopping")
    outcome = run.result()
    apptainer = runtime.name == "apptainer"
    if outcome.timed_out:
        tail = await asyncio.to_thread(read_tail, outputs / "stderrfile")
        failure: TaskFailure = TaskTimeoutError.after(container.timeout or 0, tail, apptainer=apptainer)
        raise InitFailedError(f"{role} container timed out after {container.timeout}s", failure)
    if outcome.exit_code != 0:
        tail = await asyncio.to_thread(read_tail, outputs / "stderrfile")
        failure = ContainerRunError.from_exit(outcome.exit_code, tail, apptainer=apptainer)
        raise InitFailedError(f"{role} container {failure.reason}", failure)
    LOGGER.info(f"{role} container done in {outcome.duration:.1f}s")


async def run_init_container(
    cfg: PilotConfig, runtime: Runtime, pilot_id: str, stop: asyncio.Event
) -> None:
    """Run the configured init container (the caller checks one is configured)."""
    assert cfg.init is not None
    await run_once_container(cfg, cfg.init, runtime, pilot_id, "init", stop)
