"""One event, start to end: infile, container, outfile, publish, then ack or nack.

The publish+ack step and the nack on cancellation run shielded and are
registered with `Critical`, so a pilot being stopped waits for them before it
closes its connections: an outcome is never lost half-way.
"""

from __future__ import annotations

import asyncio
import dataclasses as dc
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..config.model import PilotConfig
from ..errors import BrokerError
from ..queues import codec
from ..queues.base import Delivery, Publisher, Settlement, Subscription
from ..runtimes.base import RunSpec, Runtime
from ..runtimes.spec import SpecBuilder
from ..tasks.errors import (
    ContainerRunError,
    FailurePatternError,
    InvalidDataForInfileException,
    TaskFailure,
    TaskTimeoutError,
    describe_failure,
    read_tail,
)
from ..tasks.io import NO_OUTFILE, ensure_publishable, read_outfile, write_infile
from ..tasks.process import run_to_completion
from ..tasks.progress_lines import MalformedProgress, parse_progress_line
from ..tasks.taskdir import TaskDir, new_task_id
from ..warm.pool import WarmPool
from .journal import Journal, TaskRecord
from .publish import publish_with_retry

LOGGER = logging.getLogger("ewms_pilot.task")
T = TypeVar("T")

OUTPUT_DUMP_BYTES = 64 * 1024
# s between SIGTERM and SIGKILL when a task is stopped (timeout, eviction): short enough that an
# evicted pilot, after its grace, still exits within grace + 5 s with podman's stop/rm included
STOP_GRACE = 3.0


def _write_event(data: Any, path: Path) -> int:
    """Write the infile; its size in bytes."""
    write_infile(data, path)
    return os.lstat(path).st_size


def _load_result(path: Path) -> tuple[Any, int | None]:
    """(publishable outfile value or NO_OUTFILE, its size in bytes); lstat: never follow a link."""
    value = read_outfile(path)
    if value is NO_OUTFILE:
        return value, None
    size = os.lstat(path).st_size
    return ensure_publishable(value, path), size


class PublishFailedError(TaskFailure):
    """The task succeeded but its result could not be published; the event is nacked."""


class TaskSetupError(TaskFailure):
    """The pilot could not prepare or read the task's files (disk full, permissions)."""


class TaskLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the task id, so interleaved tasks stay readable."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[task {self.extra['task'] if self.extra else '?'}] {msg}", kwargs


@dc.dataclass(frozen=True)
class TaskOutcome:
    """What happened to one event (the journal record holds the details)."""

    task_id: str
    delivery: Delivery
    failure: TaskFailure | None
    record: TaskRecord
    no_output: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def runtime(self) -> float:
        return self.record.runtime

    @property
    def nacked(self) -> bool:
        return self.record.nacked

    @property
    def dead_lettered(self) -> bool:
        return self.record.dead_lettered


class Critical:
    """Operations that must finish even when the pilot is cancelling tasks."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

    async def run(self, coro: Awaitable[T]) -> T:
        fut = asyncio.ensure_future(coro)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return await asyncio.shield(fut)

    async def wait(self, timeout: float) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)


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
        record: TaskRecord,
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
    """Runs one event through the task container and settles it with the broker."""

    def __init__(
        self,
        env: TaskEnvironment,
        subscription: Subscription,
        publisher: Publisher,
        critical: Critical,
        deadletter: Publisher | None = None,
        journal: Journal | None = None,
        on_progress: Callable[[str, float | None, str | None], None] | None = None,
        warm_pool: WarmPool | None = None,
    ) -> None:
        self.env = env
        self.sub = subscription
        self.pub = publisher
        self.critical = critical
        self.deadletter = deadletter
        self.journal = journal
        self.on_progress = on_progress
        self.warm_pool = warm_pool  # EWMS_PILOT_TASK_MODE=warm: events go to long-lived workers

    def _spec(self, task_id: str, tdir: TaskDir) -> RunSpec:
        return self.env.specs.task(self.env.image, self.env.cfg.task, task_id, tdir)

    async def run(self, delivery: Delivery) -> TaskOutcome:
        """Process `delivery`; always settles it (ack, nack or dead-letter)."""
        task_id = new_task_id()
        log = TaskLog(LOGGER, {"task": task_id})
        cfg = self.env.cfg
        record = TaskRecord(task_id, self.env.pilot_id, delivery.msg_id, delivery.delivery_count, time.time())
        log.info(f"event {delivery.msg_id} (delivery #{delivery.delivery_count or '?'})")
        failure: TaskFailure | None = None
        tdir: TaskDir | None = None
        outcome: TaskOutcome | None = None
        try:
            try:
                tdir = await asyncio.to_thread(
                    TaskDir.create, cfg.data_dir, task_id, cfg.infile_ext, cfg.outfile_ext
                )
                result = await self._execute(task_id, tdir, delivery, record, log)
            except TaskFailure as f:
                failure = f
            except OSError as e:
                failure = TaskSetupError(f"{type(e).__name__}: {e}")
            except Exception as e:  # a bug, or input nobody foresaw: fail this event, keep the pilot
                log.exception("unexpected error while running the task")
                failure = TaskSetupError(f"unexpected {type(e).__name__}: {e}")
            except asyncio.CancelledError:
                log.warning("pilot is stopping: task stopped, event given back to the broker")
                record.error, record.error_type = "stopped by pilot shutdown", "TaskCancelledError"
                record.nacked = await self.critical.run(self._nack(delivery, log))
                raise
            if failure is None:
                outcome = await self.critical.run(self._publish_and_ack(delivery, result, record, log))
                return outcome
            record.error, record.error_type = failure.reason, type(failure).__name__
            log.error(describe_failure(task_id, failure))
            if tdir is not None:
                await self._dump_outputs(tdir, log)
            if self._is_last_delivery(delivery):
                record.acked = await self.critical.run(self._dead_letter(delivery, failure, log))
                record.dead_lettered = True
            else:
                record.nacked = await self.critical.run(self._nack(delivery, log))
            outcome = TaskOutcome(task_id, delivery, failure, record)
            return outcome
        finally:
            record.end = time.time()
            if self.journal is not None:
                await asyncio.to_thread(self.journal.append, record)
            if tdir is not None:
                await self._cleanup(tdir, ok=failure is None and outcome is not None and outcome.ok, log=log)

    async def _cleanup(self, tdir: TaskDir, *, ok: bool, log: TaskLog) -> None:
        cfg = self.env.cfg
        if ok and cfg.dump_task_output:
            await self._dump_outputs(tdir, log)
        if ok and not cfg.keep_all_task_files:
            try:
                await asyncio.to_thread(tdir.remove)
            except OSError as e:
                log.warning(f"could not remove task files {tdir.root}: {e}")
        elif not ok:
            log.info(f"task files kept in {tdir.root}")

    async def _execute(
        self, task_id: str, tdir: TaskDir, delivery: Delivery, record: TaskRecord, log: TaskLog
    ) -> Any:
        """Infile → container → outfile; raises `TaskFailure` for anything the task got wrong."""
        cfg = self.env.cfg
        if delivery.decode_error is not None:
            raise InvalidDataForInfileException(
                f"event {delivery.msg_id} is not in oms-mqclient's format: {delivery.decode_error}"
            )
        record.bytes_in = await asyncio.to_thread(_write_event, delivery.data, tdir.infile)
        if self.warm_pool is not None:
            return await self._execute_warm(task_id, tdir, record)
        spec = self._spec(task_id, tdir)
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
        )
        record.exit_code = outcome.exit_code
        apptainer = self.env.runtime.name == "apptainer"
        if outcome.timed_out:
            tail = await asyncio.to_thread(read_tail, tdir.stderr)
            raise TaskTimeoutError.after(cfg.task.timeout or 0, tail, apptainer=apptainer)
        if outcome.exit_code != 0:
            tail = await asyncio.to_thread(read_tail, tdir.stderr)
            raise ContainerRunError.from_exit(outcome.exit_code, tail, apptainer=apptainer)
        if watcher.pattern_hit is not None:
            raise FailurePatternError.matched(*watcher.pattern_hit)
        return await self._read_result(tdir, record)

    async def _read_result(self, tdir: TaskDir, record: TaskRecord) -> Any:
        """The outfile's value, ready to publish (or `NO_OUTFILE`), in one trip to a thread."""
        value, record.bytes_out = await asyncio.to_thread(_load_result, tdir.outfile)
        return value

    async def _execute_warm(self, task_id: str, tdir: TaskDir, record: TaskRecord) -> Any:
        """The event through a warm worker: same failures, same outfile handling as one-shot."""
        assert self.warm_pool is not None
        timeout = self.env.cfg.task.timeout
        result = await self.warm_pool.run(task_id, tdir.infile, tdir.outfile, timeout)
        record.exit_code = result.exit_code
        if result.timed_out:
            raise TaskTimeoutError.after(timeout or 0, result.error or "")
        if not result.ok:
            raise ContainerRunError(result.error or "warm worker failed", exit_code=result.exit_code)
        return await self._read_result(tdir, record)

    async def _publish_and_ack(
        self, delivery: Delivery, result: Any, record: TaskRecord, log: TaskLog
    ) -> TaskOutcome:
        cfg = self.env.cfg
        task_id = record.task_id
        if result is NO_OUTFILE:
            log.info("task wrote no outfile: nothing to publish; acking the event")
            record.acked = await self._ack(delivery, log)
            return TaskOutcome(task_id, delivery, None, record, no_output=True)
        try:
            await publish_with_retry(
                self.pub, result, retries=cfg.publish_retries, deadline=cfg.publish_deadline, log=log
            )
        except BrokerError as e:
            failure = PublishFailedError(f"result not published: {e}")
            record.error, record.error_type = failure.reason, type(failure).__name__
            log.error(f"{failure.reason}; nacking the event so it is redone elsewhere")
            record.nacked = await self._nack(delivery, log)
            return TaskOutcome(task_id, delivery, failure, record)
        record.published = True
        record.acked = await self._ack(delivery, log)
        log.info(
            f"done in {time.time() - record.start:.2f}s: result published"
            + (", event acked" if record.acked else "")
        )
        return TaskOutcome(task_id, delivery, None, record)

    def _is_last_delivery(self, delivery: Delivery) -> bool:
        count = delivery.delivery_count
        return count is not None and count >= self.env.cfg.max_deliveries

    async def _dead_letter(self, delivery: Delivery, failure: TaskFailure, log: TaskLog) -> bool:
        """Park a poison event with its last error, then ack it; nack if parking fails."""
        cfg = self.env.cfg
        if self.deadletter is None:
            log.error(
                f"event {delivery.msg_id} failed {delivery.delivery_count} deliveries "
                f"(EWMS_PILOT_MAX_DELIVERIES={cfg.max_deliveries}) and no "
                "EWMS_PILOT_QUEUE_DEADLETTER is set: dropping it"
            )
            return await self._ack(delivery, log)
        headers = codec.dead_letter_headers(
            delivery,
            attempts=delivery.attempts + 1,
            error=failure.reason,
            error_type=type(failure).__name__,
            pilot_id=self.env.pilot_id,
        )
        try:
            await publish_with_retry(
                self.deadletter, delivery.data, headers=headers,
                retries=cfg.publish_retries, deadline=cfg.publish_deadline, log=log,
            )
        except BrokerError as e:
            log.error(f"dead-lettering failed, nacking instead: {e}")
            await self._nack(delivery, log)
            return False
        log.error(
            f"event {delivery.msg_id} failed {delivery.delivery_count} deliveries: "
            f"moved to dead-letter queue '{cfg.queue_deadletter}'"
        )
        return await self._ack(delivery, log)

    async def _ack(self, delivery: Delivery, log: TaskLog) -> bool:
        return await self._settle(delivery, log, ack=True)

    async def _nack(self, delivery: Delivery, log: TaskLog) -> bool:
        return await self._settle(delivery, log, ack=False)

    async def _settle(self, delivery: Delivery, log: TaskLog, *, ack: bool) -> bool:
        """Ack or release; True only when the broker took it (else it is redelivered)."""
        settlement = await (self.sub.ack if ack else self.sub.release)(delivery)
        if settlement is Settlement.LEFT and ack:
            log.warning("ack not taken: the broker will redeliver the event (duplicate result possible)")
        return settlement in (Settlement.ACKED, Settlement.RELEASED)

    async def _dump_outputs(self, tdir: TaskDir, log: TaskLog) -> None:
        for name, path in (("stdout", tdir.stdout), ("stderr", tdir.stderr)):
            text = await asyncio.to_thread(read_tail, path, OUTPUT_DUMP_BYTES)
            if text.strip():
                log.info(f"{name} (last {OUTPUT_DUMP_BYTES // 1024} KiB):\n{text.rstrip()}")
