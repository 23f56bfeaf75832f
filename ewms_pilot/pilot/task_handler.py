"""One event, one straight line: receive -> stage -> run -> collect -> publish -> settle -> `Outcome`.

Staging, running and collecting may be cancelled (the pilot is stopping);
publishing and settling run as one `Critical` unit that a cancel of the
handler does not cut: the handler waits for it and reports what it did. Only
when the scheduler gives up on it (`Critical.abandon`, at the end of the
shutdown's clean-up time) is the event recorded as left for redelivery, with
whatever was really done by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..config.model import PilotConfig
from ..errors import BrokerError, ResultRejectedError
from ..queues.base import Delivery, Settlement
from ..resources.disk import disk_full_from_exit, disk_full_from_os_error
from ..resources.oom import out_of_memory
from ..runtimes.base import RunSpec, Runtime
from ..runtimes.spec import SpecBuilder
from ..tasks.errors import (
    ContainerRunError,
    DiskFullError,
    FailurePatternError,
    InvalidDataForInfileException,
    ResultTooLargeError,
    TaskCancelledError,
    TaskFailure,
    TaskStalledError,
    TaskTimeoutError,
    TooManyRedeliveriesError,
    describe_failure,
    read_tail,
)
from ..tasks.io import NO_OUTFILE, ensure_publishable, read_outfile_sized, write_infile
from ..tasks.process import run_to_completion
from ..tasks.progress_lines import MalformedProgress, parse_progress_line
from ..tasks.taskdir import TaskDir, new_task_id, warm_root
from ..warm.driver import FileWork
from ..warm.pool import WarmPool
from .outcome import Outcome, Result
from .recorder import Recorder
from .settle import Settler

LOGGER = logging.getLogger("ewms_pilot.task")
T = TypeVar("T")

OUTPUT_DUMP_BYTES = 64 * 1024
# s between SIGTERM and SIGKILL when a task is stopped (timeout, eviction): short enough that an
# evicted pilot, after its grace, still exits within grace + 5 s with podman's stop/rm included
STOP_GRACE = 3.0
# s a disk-full task's slot waits for its files to be removed (a stop cuts it short: nothing is lost)
FREE_WAIT = 60.0


def _stage_files(tdir: TaskDir, data: Any, made: list[TaskDir]) -> int:
    """One trip to a thread before the run: the task's directories, then its infile; the infile's size.

    `made` gets the task dir once it exists, so a failed infile write still finds it to keep.
    A warm pilot's shared dir exists already (made once); it is made again only if a worker removed it.
    """
    if tdir.shared:
        made.append(tdir)  # it exists but for a worker that removed it: a failed write below still finds it
        with contextlib.suppress(FileNotFoundError):
            return write_infile(data, tdir.infile, shared_dir=True)
        tdir.make()
        return write_infile(data, tdir.infile, shared_dir=True)
    tdir.make()
    made.append(tdir)
    return write_infile(data, tdir.infile)


def _load_result(tdir: TaskDir, max_bytes: int) -> tuple[Any, int | None]:
    """(publishable outfile value or NO_OUTFILE, the bytes read); the outfile is never read through a link."""
    path = tdir.outfile
    value, size = read_outfile_sized(path, max_bytes=max_bytes, shared_dir=tdir.shared)
    if value is NO_OUTFILE:
        return value, None
    return ensure_publishable(value, path, max_bytes=max_bytes), size


class PublishFailedError(TaskFailure):
    """The task succeeded but the outgoing broker could not take its result for now; the event is released."""


class TaskSetupError(TaskFailure):
    """The pilot could not prepare or read the task's files (disk full, permissions)."""


class TaskLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the task id, so interleaved tasks stay readable."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[task {self.extra['task'] if self.extra else '?'}] {msg}", kwargs


@dc.dataclass
class RunFacts:
    """What is learned about one event while it is in hand; frozen into its `Outcome` at the end."""

    task_id: str
    start: float  # epoch seconds
    exit_code: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    progress: float | None = None
    status: str | None = None
    published: bool = False


class Critical:
    """Publish/settle units that a cancelled handler still finishes; the scheduler bounds them."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

    def start(self, coro: Awaitable[T]) -> asyncio.Future[T]:
        fut = asyncio.ensure_future(coro)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def run(self, coro: Awaitable[T]) -> T:
        """Run `coro` to its end even if the caller is cancelled meanwhile (then the cancel is dropped).

        Raises CancelledError only when the unit itself was abandoned.
        """
        fut = self.start(coro)
        while True:
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                if fut.cancelled():
                    raise
                if fut.done():  # it ended in the same turn as the cancel: what it did stands
                    return fut.result()
                # the handler was cancelled: the unit decides the event's fate, wait for it

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait(self, timeout: float) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    def abandon(self) -> int:
        """Cancel what is still in flight (the pilot must exit now); how many there were."""
        pending = list(self._pending)
        for fut in pending:
            fut.cancel()
        return len(pending)


@dc.dataclass(frozen=True)
class TaskEnvironment:
    """What every task of this pilot shares (built once at start)."""

    cfg: PilotConfig
    runtime: Runtime
    image: str  # prepared image reference
    pilot_id: str
    specs: SpecBuilder
    fail_patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def build(cls, cfg: PilotConfig, runtime: Runtime, image: str, pilot_id: str) -> TaskEnvironment:
        return cls(
            cfg=cfg,
            runtime=runtime,
            image=image,
            pilot_id=pilot_id,
            specs=SpecBuilder.for_pilot(cfg, runtime, pilot_id),
            fail_patterns=tuple(re.compile(p) for p in cfg.task_fail_patterns),
        )


class ProgressWatcher:
    """Picks `ewms_progress:` / `ewms_status:` lines out of a running task's output."""

    def __init__(
        self,
        record: RunFacts,
        log: TaskLog,
        report: Callable[[str, float | None, str | None], None] | None,
        patterns: tuple[re.Pattern[str], ...],
    ) -> None:
        self.record = record
        self.log = log
        self.report = report
        self.patterns = patterns
        self.pattern_hit: tuple[str, str] | None = None  # (pattern, line): first match wins

    def __call__(self, stream: str, line: str) -> None:
        if self.patterns and self.pattern_hit is None:
            for pattern in self.patterns:
                if pattern.search(line):
                    self.pattern_hit = (pattern.pattern, line.strip())
                    break
        try:
            update = parse_progress_line(line)
        except MalformedProgress as e:
            self.log.warning(f"ignoring malformed progress line on {stream}: {e}")
            return
        if update is None:
            return
        if update.progress is not None:
            self.record.progress = update.progress
            self.log.info(f"progress {update.progress:g}%")
        if update.status is not None:
            self.record.status = update.status
            self.log.info(f"status: {update.status}")
        if self.report:
            self.report(self.record.task_id, self.record.progress, self.record.status)



class TaskHandler:
    """Runs one event through the task container and settles it; returns its one `Outcome`."""

    def __init__(
        self,
        env: TaskEnvironment,
        settler: Settler,
        critical: Critical,
        recorder: Recorder,
        on_progress: Callable[[str, float | None, str | None], None] | None = None,
        warm_pool: WarmPool | None = None,
    ) -> None:
        self.env = env
        self.settler = settler
        self.critical = critical
        self.recorder = recorder  # the journal line and the task files' removal, off the loop
        self.on_progress = on_progress
        self.warm_pool = warm_pool  # EWMS_PILOT_TASK_MODE=warm: events go to long-lived workers

    def _spec(self, task_id: str, tdir: TaskDir, gpus: tuple[str, ...] = ()) -> RunSpec:
        return self.env.specs.task(self.env.image, self.env.cfg.task, task_id, tdir, gpus)


    async def run(self, delivery: Delivery) -> Outcome:
        """Process `delivery`; always returns its outcome (a cancel ends it released, never lost)."""
        facts = RunFacts(new_task_id(), time.time())
        log = TaskLog(LOGGER, {"task": facts.task_id})
        log.info(
            f"event {delivery.msg_id} (delivery #{delivery.delivery_count or '?'}, "
            f"attempt {delivery.attempts + 1} of {self.env.cfg.max_deliveries})"
        )
        tdir: TaskDir | None = None
        value: Any = None
        failure: TaskFailure | None = None
        if self.settler.over_redeliveries(delivery):
            result = Result.SKIPPED_REDELIVERIES
            failure = TooManyRedeliveriesError(
                f"delivered {delivery.delivery_count} times, more than EWMS_PILOT_MAX_REDELIVERIES="
                f"{self.env.cfg.max_redeliveries}, without a task ending: not run again"
            )
        elif delivery.decode_error is not None:
            result = Result.FAILED
            failure = InvalidDataForInfileException(
                f"event is not in oms-mqclient's format: {delivery.decode_error}"
            )
        else:
            result, value, failure, tdir = await self._stage_run_collect(delivery, facts, log)
        if failure is not None and result is not Result.CANCELLED:
            log.error(describe_failure(facts.task_id, failure))
            if tdir is not None:
                await self._dump_unless_cancelled(tdir, log)
        try:
            result, failure, settlement = await self.critical.run(
                self._publish_and_settle(delivery, facts, result, value, failure, log)
            )
        except asyncio.CancelledError:  # abandoned: the pilot exits with the event unsettled
            log.warning("pilot exiting before the event was settled: the broker will redeliver it")
            settlement = Settlement.LEFT
        outcome = Outcome(
            task_id=facts.task_id,
            pilot_id=self.env.pilot_id,
            event_id=delivery.msg_id,
            attempts=delivery.attempts,
            delivery_count=delivery.delivery_count,
            result=result,
            failure=failure,
            settlement=settlement,
            published=facts.published,
            start=facts.start,
            end=time.time(),
            exit_code=facts.exit_code,
            bytes_in=facts.bytes_in,
            bytes_out=facts.bytes_out,
            progress=facts.progress,
            status=facts.status,
        )
        await self._record(outcome, tdir, log)
        return outcome

    async def _stage_run_collect(
        self, delivery: Delivery, facts: RunFacts, log: TaskLog
    ) -> tuple[Result, Any, TaskFailure | None, TaskDir | None]:
        """(result, outfile value, failure, task dir); a cancel here ends as CANCELLED."""
        cfg = self.env.cfg
        made: list[TaskDir] = []  # the task dir, once it exists
        if self.warm_pool is not None:  # one dir for all of this pilot's warm events
            root = warm_root(cfg.data_dir, self.env.pilot_id)
            layout = TaskDir.in_shared(root, facts.task_id, cfg.infile_ext, cfg.outfile_ext)
        else:
            layout = TaskDir.layout(cfg.data_dir, facts.task_id, cfg.infile_ext, cfg.outfile_ext)
        tdir: TaskDir | None = None
        try:
            if self.warm_pool is not None:  # stage, run and collect in one trip to the worker's thread
                value = await self._execute_warm(layout, delivery.data, facts, made)
                tdir = layout
            else:
                facts.bytes_in = await asyncio.to_thread(_stage_files, layout, delivery.data, made)
                tdir = layout
                value = await self._execute(facts.task_id, tdir, facts, log)
        except TaskFailure as f:
            tdir = tdir or (made[0] if made else None)
            return Result.FAILED, None, f, tdir
        except OSError as e:
            tdir = tdir or (made[0] if made else None)
            failure = disk_full_from_os_error(e, "staging the task") or TaskSetupError(f"{type(e).__name__}: {e}")
            return Result.FAILED, None, failure, tdir
        except asyncio.CancelledError:
            log.warning("pilot is stopping: task stopped, event given back to the broker")
            tdir = tdir or (made[0] if made else None)
            return Result.CANCELLED, None, TaskCancelledError("stopped by the pilot's shutdown"), tdir
        except Exception as e:  # a bug, or input nobody foresaw: fail this event, keep the pilot
            log.exception("unexpected error while running the task")
            tdir = tdir or (made[0] if made else None)
            return Result.FAILED, None, TaskSetupError(f"unexpected {type(e).__name__}: {e}"), tdir
        return (Result.NO_OUTPUT if value is NO_OUTFILE else Result.SUCCEEDED), value, None, tdir

    async def _publish_and_settle(
        self,
        delivery: Delivery,
        facts: RunFacts,
        result: Result,
        value: Any,
        failure: TaskFailure | None,
        log: TaskLog,
    ) -> tuple[Result, TaskFailure | None, Settlement]:
        """The critical unit: publish a result, then settle; (result, failure, settlement) as they ended."""
        settler = self.settler
        if result is Result.CANCELLED:
            return result, failure, await settler.release(delivery, log)
        if result is Result.SKIPPED_REDELIVERIES:
            assert failure is not None
            return result, failure, await settler.failed(delivery, failure, log, ran=False)
        if result is Result.NO_OUTPUT:
            log.info("task wrote no outfile: nothing to publish; acking the event")
            return result, None, await settler.ack(delivery, log)
        if result is Result.SUCCEEDED:
            try:
                if settler.fused:  # one transaction: the result is published exactly when the event is acked
                    settlement = await settler.publish_with_ack(delivery, value, log)
                    facts.published = settlement == Settlement.ACKED
                else:
                    await settler.publish(value, log)
                    facts.published = True  # before the ack: an abandoned ack must not hide it
                    settlement = await settler.ack(delivery, log)
            except ResultRejectedError as e:
                failure = ResultTooLargeError(
                    f"result of {facts.bytes_out} bytes refused by the outgoing broker "
                    f"(limit {settler.pub.max_message_bytes or 'unknown'} bytes): {e}",
                    size=facts.bytes_out,
                    limit=settler.pub.max_message_bytes,
                )
                log.error(describe_failure(facts.task_id, failure))
                result = Result.FAILED
            except BrokerError as e:
                failure = PublishFailedError(f"result not published: {e}")
                log.error(f"{failure.reason}; releasing the event so it is redone")
                return Result.FAILED, failure, await settler.release(delivery, log)
            else:
                took = f"done in {time.time() - facts.start:.2f}s"
                if settlement == Settlement.ACKED:
                    log.info(f"{took}: result published, event acked")
                elif facts.published:
                    log.info(f"{took}: result published, event NOT acked")
                else:  # fused with the ack, and the claim was lost first
                    log.warning(f"{took}: result NOT published, its event's claim was lost: "
                                "the event will be redelivered and run again")  # fmt: skip
                return result, None, settlement
        assert failure is not None
        return Result.FAILED, failure, await settler.failed(delivery, failure, log)

    async def _record(self, outcome: Outcome, tdir: TaskDir | None, log: TaskLog) -> None:
        """Hand the journal line and the task dir's removal to the recorder's threads; wait only on a full disk.

        The dump before it is best-effort: a stop cuts it short, never skips the record of an event
        that may already be published and acked.
        """
        cfg = self.env.cfg
        free = isinstance(outcome.failure, DiskFullError)  # a full disk: a failed task's files go too
        remove = tdir is not None and (outcome.ok or free) and not cfg.keep_all_task_files
        if tdir is not None and outcome.ok and cfg.dump_task_output:
            await self._dump_unless_cancelled(tdir, log)
        freed = self.recorder.record(outcome.record(), tdir if remove else None, log, free_first=free)
        if freed is not None:  # a full disk: the next event needs the space, so this slot waits for it
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):  # a stop: the removal goes on
                async with asyncio.timeout(FREE_WAIT):
                    await asyncio.shield(freed)
        if tdir is not None and not outcome.ok and not remove:
            log.info(f"task files kept in {tdir.files_at}")

    async def _dump_unless_cancelled(self, tdir: TaskDir, log: TaskLog) -> None:
        """The task's output in the log; a stop cuts it short, it does not skip the settling/record."""
        try:
            await self._dump_outputs(tdir, log)
        except asyncio.CancelledError:
            log.warning("pilot is stopping: output dump cut short")

    async def _execute(self, task_id: str, tdir: TaskDir, record: RunFacts, log: TaskLog) -> Any:
        """Container (infile written) → outfile; raises `TaskFailure` for anything the task got wrong."""
        cfg = self.env.cfg
        with self.env.specs.gpus.lease() as gpus:  # EWMS_PILOT_TASK_GPUS: this task's own
            spec = self._spec(task_id, tdir, gpus)
            log.debug(f"running {list(spec.argv)}")
            watcher = ProgressWatcher(record, log, self.on_progress, self.env.fail_patterns)
            outcome = await run_to_completion(
                self.env.runtime,
                spec,
                stdout_path=tdir.stdout,
                stderr_path=tdir.stderr,
                timeout=cfg.task.timeout,
                stop_grace=STOP_GRACE,
                on_line=watcher,
                log_max=cfg.task_log_max,
                stall_timeout=cfg.task_stall_timeout,
            )
        record.exit_code = outcome.exit_code
        if outcome.log_error is not None:  # its output is incomplete: say why rather than judge by it
            raise disk_full_from_os_error(outcome.log_error, "writing the task's output") or outcome.log_error
        apptainer = self.env.runtime.name == "apptainer"
        if outcome.timed_out:
            tail = await asyncio.to_thread(read_tail, tdir.stderr)
            raise TaskTimeoutError.after(cfg.task.timeout or 0, tail, apptainer=apptainer)
        if outcome.stalled:
            tail = await asyncio.to_thread(read_tail, tdir.stderr)
            raise TaskStalledError.after(cfg.task_stall_timeout or 0, tail, apptainer=apptainer)
        if outcome.exit_code != 0:
            tail = await asyncio.to_thread(read_tail, tdir.stderr)
            killed_means_oom = not self.env.runtime.uses_host_paths  # containers: the OOM killer
            raise out_of_memory(
                outcome.exit_code, tail, spec.memory_limit, killed_means_oom=killed_means_oom, apptainer=apptainer
            ) or disk_full_from_exit(outcome.exit_code, tail, apptainer=apptainer) or ContainerRunError.from_exit(
                outcome.exit_code, tail, apptainer=apptainer
            )
        if watcher.pattern_hit is not None:
            raise FailurePatternError.matched(*watcher.pattern_hit)
        return await self._read_result(tdir, record)

    async def _read_result(self, tdir: TaskDir, record: RunFacts) -> Any:
        """The outfile's value, ready to publish (or `NO_OUTFILE`), in one trip to a thread."""
        value, record.bytes_out = await asyncio.to_thread(_load_result, tdir, self.env.cfg.max_result_bytes)
        return value

    async def _execute_warm(self, layout: TaskDir, data: Any, facts: RunFacts, made: list[TaskDir]) -> Any:
        """The event through a warm worker: same files, same failures, same outfile handling as one-shot.

        The warm hub's thread stages the infile, exchanges the request and collects the
        outfile in one trip; a staging or collecting error fails the event as it would one-shot.
        """
        assert self.warm_pool is not None
        timeout = self.env.cfg.task.timeout
        max_bytes = self.env.cfg.max_result_bytes

        def stage() -> None:
            facts.bytes_in = _stage_files(layout, data, made)

        def collect() -> Any:
            value, facts.bytes_out = _load_result(layout, max_bytes)
            return value

        result = await self.warm_pool.run(
            facts.task_id, layout.infile, layout.outfile, timeout, FileWork(stage, collect)
        )
        if result.file_error is not None:
            raise result.file_error
        facts.exit_code = result.exit_code
        if result.timed_out:
            raise TaskTimeoutError.after(timeout or 0, result.error or "")
        if not result.ok:
            # a worker that died on the event (the pool replaces it) may have died of its memory limit
            oom = result.exit_code is not None and out_of_memory(
                result.exit_code, result.error or "", self.env.cfg.task_memory,
                killed_means_oom=not self.env.runtime.uses_host_paths,
            )  # fmt: skip
            raise oom or ContainerRunError(result.error or "warm worker failed", exit_code=result.exit_code)
        return result.value

    async def _dump_outputs(self, tdir: TaskDir, log: TaskLog) -> None:
        for name, path in (("stdout", tdir.stdout), ("stderr", tdir.stderr)):
            text = await asyncio.to_thread(read_tail, path, OUTPUT_DUMP_BYTES)
            if text.strip():
                log.info(f"{name} (last {OUTPUT_DUMP_BYTES // 1024} KiB):\n{text.rstrip()}")
