"""A fixed set of warm workers that the pilot streams events through.

The scheduler never runs more than `max_concurrent_tasks` events at once (it
alone counts them), so the pool has that many slots and `run` always finds an
idle one; finding none is a bug, raised as such. A slot whose worker died, or was stopped after a timeout, gets
a new worker when it is next used, after a back-off that grows while workers
keep dying without finishing an event; after `MAX_BARREN_DEATHS` such deaths
in a row the pool gives up and fails every further event with the reason,
instead of restarting a broken worker forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config.model import PilotConfig
from ..runtimes.base import RunSpec, Runtime, RuntimeUnavailableError
from ..runtimes.spec import SpecBuilder
from ..tasks.taskdir import remove_warm_root, warm_root
from .driver import Done, Ended, FileWork
from .protocol import ENV_TASK_MODE, WARM, encode_request
from .worker_proc import Exited, WarmWorker

LOGGER = logging.getLogger("ewms_pilot.warm")

#: workers in a row that die without finishing one event before the pool gives up
MAX_BARREN_DEATHS = 5
#: first restart delay (s) after such a death; doubles with each further one
RESTART_BACKOFF = 0.25
RESTART_BACKOFF_MAX = 10.0
#: seconds a worker gets to exit by itself once its stdin is closed
EOF_GRACE = 5.0
#: seconds between SIGTERM (or the runtime's stop) and SIGKILL when a worker is stopped
STOP_GRACE = 5.0
#: s to look for the exit of a worker whose stdout closed: a crash's exit says more than the closed pipe
EXIT_LOOK = 1.0
#: seconds the pool's close waits for the workers' logs to be written
LOG_WAIT = 2.0
#: where worker logs go, under the pilot's data dir
LOG_DIR_NAME = "warm-workers"
#: a live worker that closed a pipe: which one, and what that means for the event
_CUT_OFF = {
    Ended.MUTE: ("stdout", "no answer could come"),
    Ended.UNHEARD: ("stdout", "no answer could come"),
    Ended.DEAF: ("stdin", "it could not be given the event"),
}


@dc.dataclass(frozen=True)
class WarmResult:
    """How one event went in a warm worker."""

    ok: bool
    error: str | None  # the worker's error text, the crash's stderr line, or the last stderr line on timeout
    exit_code: int | None  # the worker's exit code when it died on this event
    timed_out: bool
    value: Any = None  # what `FileWork.collect` returned (ok only)
    file_error: BaseException | None = None  # staging or collecting failed (the worker is fine)


class WarmStartError(RuntimeUnavailableError):
    """The workers cannot be started at all (bad args, missing command); one line."""


@dc.dataclass
class _Slot:
    index: int
    generation: int = 0
    worker: WarmWorker | None = None


class WarmPool:
    """`size` long-lived task workers (default: `cfg.max_concurrent_tasks`)."""

    #: seconds `close` takes at most when not cut shorter (EOF, then stop)
    CLOSE_TIME = EOF_GRACE + STOP_GRACE

    def __init__(
        self,
        cfg: PilotConfig,
        runtime: Runtime,
        image: str,
        pilot_id: str,
        *,
        size: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.image = image
        self.pilot_id = pilot_id
        self.size = size or cfg.max_concurrent_tasks
        self.log_dir = cfg.data_dir / LOG_DIR_NAME
        # where the workers' clients run: outside the data dir, which every worker sees (made at start)
        self._client_dir: Path | None = None
        # the whole data dir is bound, so every per-task dir is visible to a long-lived container
        self.specs = SpecBuilder.for_pilot(cfg, runtime, pilot_id)
        self._slots = [_Slot(i) for i in range(self.size)]
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            self._idle.put_nowait(slot)
        self._barren_deaths = 0  # workers in a row that died without finishing an event
        self._broken: str | None = None
        self._closed = False
        self._retired: list[WarmWorker] = []  # taken out of their slots, maybe still being stopped

    # -- set-up -----------------------------------------------------------------

    def _spec(self, slot: _Slot) -> RunSpec:
        """Config loading already refused per-event placeholders and bad quoting in the args."""
        worker_id = f"warm{slot.index}-{slot.generation}"
        if self._client_dir is None:
            raise RuntimeError("a warm worker before the pool's start: a bug")
        return self.specs.warm_worker(
            self.image, self.cfg.task, worker_id, self.log_dir, {ENV_TASK_MODE: WARM}, self._client_dir
        )

    async def _spawn(self, slot: _Slot) -> WarmWorker:
        slot.generation += 1
        spec = self._spec(slot)
        worker = WarmWorker(self.runtime, spec, self.log_dir / f"{spec.name}.log")
        await worker.start()
        slot.worker = worker
        return worker

    async def start(self) -> None:
        """Start every worker; `WarmStartError` when they cannot be started at all."""
        prefix = f"ewms-pilot-{self.pilot_id}-warm-"
        self._client_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix))  # owner-only
        if self.cfg.task.timeout is not None:
            LOGGER.info(
                "warm mode: EWMS_PILOT_TASK_TIMEOUT applies per event; a worker's first event "
                "also includes its start-up"
            )
        results = await asyncio.gather(
            *(self._spawn(slot) for slot in self._slots), return_exceptions=True
        )
        for result in results:
            if isinstance(result, OSError):
                command = self._spec(self._slots[0]).argv[:1]
                raise WarmStartError(f"cannot start a warm worker {command}: {result.strerror or result}")
            if isinstance(result, BaseException):
                raise result
        LOGGER.info(f"warm mode: {self.size} worker(s) started")

    # -- events -----------------------------------------------------------------

    @property
    def broken(self) -> str | None:
        """Why the pool gave up (every event now fails with this), or None."""
        return self._broken

    async def run(
        self, task_id: str, infile: Path, outfile: Path, timeout: float | None, work: FileWork
    ) -> WarmResult:
        """Run one event in an idle worker: `work` stages its infile before and collects its outfile after."""
        try:
            slot = self._idle.get_nowait()
        except asyncio.QueueEmpty:
            raise RuntimeError("more events than warm workers: the scheduler's count is wrong") from None
        try:
            return await self._run_in(slot, task_id, infile, outfile, timeout, work)
        finally:
            self._idle.put_nowait(slot)

    async def _run_in(
        self, slot: _Slot, task_id: str, infile: Path, outfile: Path, timeout: float | None, work: FileWork,
        *, again: bool = True,
    ) -> WarmResult:
        worker = await self._ready_worker(slot)
        if worker is None:
            return WarmResult(False, self._broken or "the warm pool is closed", None, False)
        line = encode_request(task_id, self.specs.warm_path(infile), self.specs.warm_path(outfile))
        try:
            reply = await worker.request(task_id, line, work, timeout)
        except BaseException:  # cancelled (pilot stopping): its event is abandoned, so is the worker
            await self._retire(slot, stop=True)
            raise
        if reply is None:
            stderr_line = worker.exit_info.stderr_line if worker.exit_info else ""
            LOGGER.warning(f"warm worker {worker.name}: event {task_id} timed out: replacing the worker")
            exited = await self._retire(slot, stop=True)
            return WarmResult(False, exited.stderr_line or stderr_line or None, None, True)
        cut_off = _CUT_OFF.get(reply.ended) if isinstance(reply, Done) and reply.ended is not None else None
        if isinstance(reply, Done) and cut_off is not None:
            # a crash closes its pipes just before its exit is seen (later still on a busy loop): the exit says more
            exited_itself = await worker.exited_within(EXIT_LOOK)
            if exited_itself is not None:
                reply = exited_itself if reply.ended is Ended.MUTE else Done(ended=Ended.NOT_TAKEN)
            else:
                pipe, why = cut_off
                LOGGER.warning(f"warm worker {worker.name} closed its {pipe} (event {task_id}): replacing the worker")
                await self._retire(slot, stop=True, barren=True)
                if reply.ended is not Ended.MUTE and again:  # it never saw the event: a new worker takes it
                    return await self._run_in(slot, task_id, infile, outfile, timeout, work, again=False)
                return WarmResult(False, f"the warm worker closed its {pipe}, so {why}", None, False)
        if isinstance(reply, Done) and reply.ended is Ended.NOT_TAKEN:
            # it exited between events, before this one reached it: not the event's failure
            exited = await self._retire(slot, stop=False)
            if again:
                LOGGER.info(f"warm worker {worker.name} exited before taking event {task_id}: a new worker takes it")
                return await self._run_in(slot, task_id, infile, outfile, timeout, work, again=False)
            detail = f": {exited.stderr_line}" if exited.stderr_line else ""
            return WarmResult(
                False, f"warm worker exited (code {exited.exit_code}) before taking the event{detail}",
                exited.exit_code, False,
            )  # fmt: skip
        if isinstance(reply, Exited):
            await self._retire(slot, stop=False)
            detail = f": {reply.stderr_line}" if reply.stderr_line else ""
            return WarmResult(
                False, f"warm worker exited (code {reply.exit_code}){detail}", reply.exit_code, False
            )
        if reply.answer is None:  # staging failed: the worker never saw the event
            return WarmResult(False, None, None, False, file_error=reply.file_error)
        self._barren_deaths = 0
        answer = reply.answer
        if answer.ok:
            return WarmResult(True, None, None, False, value=reply.value, file_error=reply.file_error)
        return WarmResult(False, answer.error or "the warm worker answered ok=false without an error text", None, False)

    async def _ready_worker(self, slot: _Slot) -> WarmWorker | None:
        """The slot's live worker, or a new one (after the back-off); None once the pool gave up."""
        if slot.worker is not None and not slot.worker.alive:
            await self._retire(slot, stop=False)  # died while idle
        if slot.worker is not None:
            return slot.worker
        if self._broken is not None or self._closed:
            return None
        if self._barren_deaths:
            delay = min(RESTART_BACKOFF * 2 ** (self._barren_deaths - 1), RESTART_BACKOFF_MAX)
            LOGGER.info(f"restarting warm worker slot {slot.index} in {delay:.2f}s")
            await asyncio.sleep(delay)
            if slot.worker is not None:  # another event in this slot? (cannot happen: slots are exclusive)
                return slot.worker
        try:
            return await self._spawn(slot)
        except OSError as e:
            self._broken = f"cannot start a new warm worker: {e.strerror or e}"
            LOGGER.error(self._broken)
            return None

    async def _retire(self, slot: _Slot, *, stop: bool, barren: bool | None = None) -> Exited:
        """Take the slot's worker out (stopping it first if asked); count a barren death (by default: one
        that ended by itself) when it finished no event."""
        worker = slot.worker
        assert worker is not None
        slot.worker = None
        self._retired = [w for w in self._retired if w.alive]  # only those still being stopped matter
        self._retired.append(worker)
        exited = await worker.stop(STOP_GRACE) if stop else await worker.close(0.0, STOP_GRACE)
        if (not stop if barren is None else barren) and worker.completed == 0:
            self._barren_deaths += 1
            if self._barren_deaths >= MAX_BARREN_DEATHS and self._broken is None:
                detail = f": {exited.stderr_line}" if exited.stderr_line else ""
                self._broken = (
                    f"warm workers keep exiting before finishing an event ({self._barren_deaths} in a row, "
                    f"last with code {exited.exit_code}{detail}); no more workers are started"
                )
                LOGGER.error(self._broken)
        return exited

    # -- end --------------------------------------------------------------------

    async def close(self, budget: float | None = None) -> None:
        """Close every worker's stdin so it exits; stop those that linger. Nothing is left running.

        `budget` (the shutdown's remaining time) splits between waiting for the EOF
        exit and stopping: a worker that ignores both is killed within it.
        """
        started = time.monotonic()
        eof_grace, stop_grace = EOF_GRACE, STOP_GRACE
        if budget is not None and budget < self.CLOSE_TIME:
            eof_grace, stop_grace = budget * 0.4, budget * 0.4  # the rest: SIGKILL and reaping
        self._closed = True
        slotted = [s.worker for s in self._slots if s.worker is not None]
        for slot in self._slots:
            slot.worker = None
        # and those a cancelled event was stopping: the handler's stop may be cut short at the end
        # of the shutdown, and a worker that ignores SIGTERM would then outlive the pilot
        live = slotted + [w for w in self._retired if w.alive]
        ends = await asyncio.gather(
            *(w.close(eof_grace, stop_grace) for w in live), return_exceptions=True
        )
        for worker, end in zip(live, ends, strict=True):
            if isinstance(end, BaseException):
                LOGGER.error(f"closing warm worker {worker.name} failed: {end!r}")
        # their logs' last lines (a crash's traceback) are written by threads that die with the pilot
        logged = list(dict.fromkeys([*live, *self._retired]))
        log_wait = LOG_WAIT if budget is None else max(0.0, min(LOG_WAIT, budget - (time.monotonic() - started)))
        waited = await asyncio.gather(*(w.log_written(log_wait) for w in logged))
        for worker, written in zip(logged, waited, strict=True):
            if not written:
                LOGGER.warning(f"warm worker {worker.name}: its log {worker.log_path} could not be written for "
                               f"{log_wait:g}s (a stalled file system?): the rest of it may be lost")
        # a retired worker's log stays: it was taken out for a reason (a timeout, a closed stdout)
        await asyncio.to_thread(self._tidy_logs, slotted, ends[: len(slotted)])
        if self._client_dir is not None:  # with what a client left there (conmon's `oom`)
            await asyncio.to_thread(shutil.rmtree, self._client_dir, ignore_errors=True)

    def _tidy_logs(self, closed: list[WarmWorker], ends: list[Exited | BaseException]) -> None:
        """Drop the logs of workers that exited 0 when closed (unless all task files are kept); one that
        exited by itself keeps its log, which its warning named."""
        if self.cfg.keep_all_task_files:
            return
        for worker, end in zip(closed, ends, strict=True):
            if isinstance(end, Exited) and end.exit_code == 0 and not worker.ended_by_itself:
                with contextlib.suppress(OSError):
                    worker.log_path.unlink()
        with contextlib.suppress(OSError):
            self.log_dir.rmdir()  # only when empty: crash logs stay for a look
        remove_warm_root(warm_root(self.cfg.data_dir, self.pilot_id))  # kept events' files stay too
