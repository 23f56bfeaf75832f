"""The pilot's main loop: take events while there are slots, end on a stop request, drain in `finally`.

Concurrency is counted once, from the outcomes (`Tally.running`); `_running`
only holds the handler tasks to wait on. The subscription is polled in short
slices so a stop request or a freed slot is acted on promptly; a delivery
that arrives after the stop is given straight back. Every ending step takes
its time from the one shutdown deadline (`shutdown.Shutdown`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterator

from ..chirp import ChirpReporter, PilotStatus
from ..config.banner import resources_line
from ..config.model import PilotConfig, TaskMode
from ..errors import BrokerError, BrokerUnavailableError, ConfigError
from ..queues.base import Delivery, Publisher, Settlement, Subscription
from ..queues.factory import open_publisher, open_subscription
from ..resources.disk import DiskWatch
from ..resources.lifetime import END_RESERVE, expected_task_seconds, task_fits
from ..runtimes import get_runtime
from ..runtimes.base import Runtime, RuntimeUnavailableError
from ..tasks.errors import DiskFullError, TaskFailure
from ..tasks.taskdir import prepare_data_dir
from ..warm.pool import WarmPool
from .health import BrokerHealth
from .init_step import InitFailedError, run_init_container, run_once_container
from .journal import Journal, journal_path
from .outcome import Outcome, Result
from .ownership import sweep_orphans
from .recorder import Recorder
from .settle import Settler
from .shutdown import Shutdown, StopCause, StopRequest
from .state import PilotState, Tally
from .summary import render_summary
from .task_handler import Critical, PublishFailedError, TaskEnvironment, TaskHandler

LOGGER = logging.getLogger("ewms_pilot")

POLL_SLICE = 1.0  # s: longest a single broker `get` may wait before the loop looks around
CRITICAL_WAIT = 30.0  # s: bound on finishing in-flight publish/settle at an end without a deadline
ABANDON_RESERVE = 1.0  # s of the clean-up time left when what is still publishing/settling is given up
TEARDOWN_STOP = 1.0  # s between SIGTERM and SIGKILL for a teardown cut short by the deadline
TEARDOWN_RESERVE = 2.0  # s of the clean-up time kept for stopping the teardown and what follows
FINAL_STEP_MIN = 0.5  # s every last step (closing connections, chirp flush) gets, even when late


class Pilot:
    """One pilot run. Construct, then `await run()`; `request_stop()` may be called from a signal handler."""

    def __init__(
        self,
        cfg: PilotConfig,
        *,
        chirp: ChirpReporter | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.cfg = cfg
        self.pilot_id = uuid.uuid4().hex[:8]
        self.tally = Tally()
        self.state = PilotState.STARTED
        self.chirp = chirp or ChirpReporter.from_config(cfg)
        self.runtime = runtime or get_runtime(cfg)
        self.failures: list[tuple[str, TaskFailure]] = []  # (task id, failure): the only list of them
        self._running: set[asyncio.Task[Outcome]] = set()
        self._critical = Critical()
        self._nudge: asyncio.Event | None = None  # set when a handler ends or a stop is requested
        self._last_activity = time.monotonic()
        self.health = BrokerHealth()  # every broker call's outcome; read by the consume loop
        self.journal = Journal(journal_path(cfg.data_dir_parent))
        self.recorder = Recorder(self.journal)  # its thread starts with `run`
        self.disk = DiskWatch(cfg.data_dir, cfg.min_free_disk)  # free space where task dirs live
        # the lifetime's end on the monotonic clock (a wall-clock step must not move it)
        end = cfg.lifetime_end
        self._lifetime_end = None if end is None else time.monotonic() + end.ends_at - time.time()
        # every stop's running tasks get at most until the lifetime's end, less the pilot's own ending
        ceiling = None if self._lifetime_end is None else self._lifetime_end - END_RESERVE
        self.shutdown = Shutdown(ceiling=ceiling)

    # -- control ------------------------------------------------------------

    @property
    def stop_request(self) -> StopRequest | None:
        return self.shutdown.request

    def request_stop(self, request: StopRequest) -> None:
        """Stop taking events (safe from a signal handler); a later request can only hurry the end."""
        self.shutdown.request_stop(request)
        self._wake_consumer()

    def _wake_consumer(self) -> None:
        if self._nudge is not None:
            self._nudge.set()

    def _set_state(self, state: PilotState) -> None:
        self.state = state
        self.chirp.set_status(PilotStatus(state.value))

    def _report(self) -> None:
        t = self.tally
        self.chirp.set_counts(t.received, t.succeeded, t.failed, t.dead_lettered)

    # -- main ---------------------------------------------------------------

    async def run(self) -> StopRequest:
        """Run until the queue stays empty, tasks fail, a signal arrives or a broker is lost."""
        self.state = PilotState.STARTED
        self.chirp.start()  # reports Started (once) with the start time
        LOGGER.info(resources_line(self.cfg))  # what the slot has, what the pilot uses of it
        sub: Subscription | None = None
        pub: Publisher | None = None
        dlq: Publisher | None = None
        pool: WarmPool | None = None
        umask_before: int | None = None
        self.recorder.start()
        try:
            umask_before = await asyncio.to_thread(prepare_data_dir, self.cfg.data_dir, self.cfg.data_hub_dir)
            image = await self.runtime.prepare_image(self.cfg.task.image)
            await sweep_orphans(self.runtime)
            if self.cfg.init is not None:
                self._set_state(PilotState.INIT)
                await run_init_container(self.cfg, self.runtime, self.pilot_id, self.shutdown.stopping)
            if self.stop_request is None:
                if self.cfg.task_mode == TaskMode.WARM:
                    pool = WarmPool(self.cfg, self.runtime, image, self.pilot_id)
                    await pool.start()
                with _names_variable("EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS"):
                    sub = await open_subscription(self.cfg.incoming, self.cfg.effective_prefetch)
                with _names_variable("EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS"):
                    pub = await open_publisher(self.cfg.outgoing)
                if self.cfg.queue_deadletter:
                    dlq = await open_publisher(
                        dc.replace(self.cfg.incoming, queue=self.cfg.queue_deadletter)
                    )
                if pub.max_message_bytes is not None:
                    LOGGER.info(f"outgoing broker takes results up to {pub.max_message_bytes} bytes")
                env = TaskEnvironment.build(self.cfg, self.runtime, image, self.pilot_id)
                handler = TaskHandler(
                    env, Settler(self.cfg, self.pilot_id, sub, pub, dlq, self.health), self._critical,
                    self.recorder, on_progress=self.chirp.set_task_progress, warm_pool=pool,
                )
                await self._consume(sub, handler)
        except ConfigError as e:
            self._fatal(StopCause.CONFIG, f"configuration error: {e}", e)
        except InitFailedError as e:
            if e.failure is not None:
                self.failures.append(("init", e.failure))
            # chirp the init container's own traceback (as for a task), not the pilot's
            detail = e.failure.detail if e.failure is not None else ""
            self._fatal(StopCause.INIT_FAILED, f"init container failed: {e}", e, detail or None)
        except (BrokerUnavailableError, BrokerError) as e:
            self._fatal(StopCause.BROKER, str(e), e)
        except RuntimeUnavailableError as e:
            self._fatal(StopCause.RUNTIME, f"container runtime unusable: {e}", e)
        except Exception as e:
            LOGGER.exception("unexpected error")
            self._fatal(StopCause.FATAL, f"unexpected error: {type(e).__name__}: {e}", e)
        finally:
            try:
                await self._drain()
                if pool is not None:
                    await self.recorder.flush(self._final_step())  # its events' files, before its dir goes
                    await pool.close(self.shutdown.cleanup_budget(pool.CLOSE_TIME))
                await self._teardown()
                await self._close(sub, pub, dlq)
            finally:
                # every line before the summary reads the journal; the threads end even if this is cut short
                await self.recorder.close(self._final_step())
                if umask_before is not None:
                    os.umask(umask_before)
        request = self.stop_request or StopRequest(StopCause.FATAL, "ended without a reason")
        await self._finish(request)
        return request

    def _fatal(
        self, cause: StopCause, reason: str, exc: BaseException, traceback_text: str | None = None
    ) -> None:
        self.chirp.set_error(reason, traceback_text or "".join(traceback.format_exception(exc)))
        # the incoming broker is gone: running tasks' events can no longer be settled, and the
        # broker redelivers them; waiting for the tasks would only delay the exit
        grace = 0.0 if cause == StopCause.BROKER else self.cfg.shutdown_grace
        self.request_stop(StopRequest(cause, reason, grace=grace))

    async def _consume(self, sub: Subscription, handler: TaskHandler) -> None:
        """Take events until a stop is requested or the queue stays empty long enough."""
        self._set_state(PilotState.AWAITING_FIRST)
        self._last_activity = time.monotonic()
        got_first = False
        while self.stop_request is None:
            self._check_brokers()
            if self._lifetime_ending():
                break
            if await self._disk_short():
                if self.stop_request is None:
                    await self._wait_for_slot()  # a task ending may free space
                continue
            if self.tally.running >= self.cfg.max_concurrent_tasks:
                await self._wait_for_slot()
                continue
            wait_limit = self.cfg.timeout_incoming if got_first else self.cfg.timeout_first_message
            idle = time.monotonic() - self._last_activity
            if not self._running and idle >= wait_limit:
                what = "incoming queue stayed empty" if got_first else "no first event arrived"
                self.request_stop(StopRequest(StopCause.QUEUE_EMPTY, f"{what} for {wait_limit:g}s"))
                break
            slice_ = min(POLL_SLICE, max(wait_limit - idle, 0.05))
            try:
                delivery = await self._get(sub, slice_)
                self.health.ok("incoming")
            except BrokerError as e:
                self.health.failed("incoming", e)
                down = self.health.down_for("incoming") or 0.0
                left = self.cfg.reconnect_deadline - down
                if left > 0:
                    LOGGER.warning(f"incoming broker connection lost, reconnecting ({down:.0f}s so far): {e}")
                    await self._pause(min(2 + down / 4, 15, left))  # wake up at the deadline, not after it
                self._last_activity = time.monotonic()  # an outage is not an empty queue
                continue
            if delivery is None:
                continue
            if self.stop_request is not None or self._lifetime_ending():  # arrived too late to run
                await self._critical.run(_give_back(sub, delivery))
                break
            if not got_first:
                got_first = True
                self._set_state(PilotState.TASKING)
            self._start(handler, delivery)
        await sub.stop_taking()  # nothing held back from other pilots while this one drains
        if self._running:
            self._set_state(PilotState.PENDING_REMAINING)

    def _lifetime_ending(self) -> bool:
        """True (and the stop requested) once one more task would not end within the lifetime.

        Running tasks get until the lifetime's end, less the pilot's own ending: the shutdown's ceiling.
        """
        if self._lifetime_end is None:
            return False
        left = self._lifetime_end - time.monotonic()
        expected = expected_task_seconds(self.cfg.task.timeout, self.tally.longest_runtime)
        if task_fits(left, expected):
            return False
        assert self.cfg.lifetime_end is not None
        basis = "EWMS_PILOT_TASK_TIMEOUT" if self.cfg.task.timeout is not None else "the longest task so far"
        self.request_stop(StopRequest(
            StopCause.LIFETIME,
            f"lifetime ending: {max(left, 0):.0f}s left of {self.cfg.lifetime_end.describe()}; a task takes up to "
            f"{expected:.0f}s ({basis})",
        ))
        return True

    async def _disk_short(self) -> bool:
        """True while free disk is below EWMS_PILOT_MIN_FREE_DISK (or unknown): no event is taken.

        With no task running and every finished task's files removed, nothing of this
        pilot's can free it (a fresh reading confirms): the pilot ends, its events
        left on the queue. A data dir that does not answer is waited for, never
        called full.
        """
        short = await self.disk.short()
        if short is not None and not self._running and not self.disk.unanswered:
            if not await self.recorder.flush(POLL_SLICE):  # finished tasks' files are still being removed
                return True
            short = await self.disk.short(fresh=True)  # the last task's files may be gone just now
            if short is not None and not self.disk.unanswered:
                self.chirp.set_error(DiskFullError(short))
                self.request_stop(StopRequest(StopCause.DISK_FULL, f"disk full: {short}"))
        return short is not None

    def _check_brokers(self) -> None:
        """Raise `BrokerError` once a broker has been failing for longer than the reconnect deadline."""
        worst = self.health.worst()
        if worst is not None and worst[1] >= self.cfg.reconnect_deadline:
            which, down, error = worst
            raise BrokerError(f"{which} broker unreachable for {down:.0f}s: {error}")

    async def _get(self, sub: Subscription, slice_: float) -> Delivery | None:
        """One `get`; during an outage it may not outlast the reconnect deadline (a reconnect can hang)."""
        down = self.health.down_for("incoming")
        if down is None:
            return await sub.get(slice_)
        try:
            return await asyncio.wait_for(sub.get(slice_), max(self.cfg.reconnect_deadline - down, 0.05))
        except TimeoutError:
            raise BrokerError("reconnecting did not finish in time") from None

    def _start(self, handler: TaskHandler, delivery: Delivery) -> None:
        self.tally.received += 1
        self._last_activity = time.monotonic()
        task = asyncio.create_task(handler.run(delivery))
        self._running.add(task)
        task.add_done_callback(self._finished)
        self._report()

    def _finished(self, task: asyncio.Task[Outcome]) -> None:
        self._running.discard(task)
        self._last_activity = time.monotonic()
        self._wake_consumer()
        exc = None if task.cancelled() else task.exception()
        if task.cancelled() or exc is not None:  # a bug in the handler: never swallow it silently
            LOGGER.error("task handler crashed", exc_info=exc)
            self.tally.crashed += 1
            self.request_stop(StopRequest(StopCause.FATAL, f"task handler crashed: {exc!r}"))
            self._report()
            return
        outcome = task.result()
        self.tally.add(outcome)
        if outcome.failure is not None and outcome.result is not Result.CANCELLED:
            self.failures.append((outcome.task_id, outcome.failure))
            self._on_failure(outcome)
        self._report()

    def _on_failure(self, outcome: Outcome) -> None:
        failure = outcome.failure
        assert failure is not None
        self.chirp.set_error(failure)
        if isinstance(failure, PublishFailedError):
            # the task was fine, the outgoing broker is not: not this node's fault, so no
            # stop-on-error (an outage past the reconnect deadline ends the pilot: `_check_brokers`)
            return
        if not self.cfg.stop_listening_on_task_error:
            return
        if outcome.attempts > 0 or outcome.result is Result.SKIPPED_REDELIVERIES:
            # The rule: an event that already failed elsewhere is suspected, not this node;
            # stopping here would let one poison event take down pilot after pilot. Only an
            # event that never failed before trips stop-on-error (evictions do not count).
            LOGGER.warning(
                f"task {outcome.task_id} failed on an event that failed {outcome.attempts} time(s) before: "
                "blaming the event, not this node (stop-on-error applies to first attempts)"
            )
            return
        names = failure.names()
        if names & self.cfg.okay_errors:
            LOGGER.info(f"failure {type(failure).__name__} is in EWMS_PILOT_OKAY_ERRORS: carrying on")
            return
        # no task id: the reason goes to chirp's end reason too, which (like the error) must read
        # the same on every pilot that hit the same failure; the task's own log line names it
        self.request_stop(
            StopRequest(StopCause.TASK_ERRORS, f"a task failed ({type(failure).__name__}): {failure.reason}")
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once on a stop request."""
        try:
            await asyncio.wait_for(self.shutdown.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _wait_for_slot(self) -> None:
        """Until a handler ends or a stop is requested, at most a slice (so a broker outage is noticed).

        One event, set by both: no task or callback per wait on the per-event path.
        """
        if self._nudge is None:
            self._nudge = asyncio.Event()
        self._nudge.clear()
        if self.stop_request is not None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_SLICE):
                await self._nudge.wait()

    # -- ending ---------------------------------------------------------------

    async def _drain(self) -> None:
        """Let running tasks finish until the deadline, then stop the rest and let them settle."""
        sd = self.shutdown
        if self._running:
            if sd.evicted:
                self._set_state(PilotState.DRAINING)
            left = sd.remaining()
            LOGGER.info(
                f"waiting for {len(self._running)} running task(s)"
                + (f" up to {left:.1f}s" if left is not None else "")
            )
            while self._running and not sd.hurried:
                changed = asyncio.ensure_future(sd.wait_changed(None))
                try:
                    await asyncio.wait(
                        {changed, *self._running}, timeout=sd.remaining(), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
        if self._running:
            # a handler created in the loop's last round may not have run its first step yet; a
            # cancel then would never reach its code: let every one start (and guard its event)
            await asyncio.sleep(0)
            LOGGER.warning(f"stopping {len(self._running)} unfinished task(s); their events go back to the broker")
            for task in list(self._running):
                task.cancel()
            if sd.hurried and self.health.down:  # a dead broker will not take what is in flight
                self._abandon_critical()
            # stopping a container takes its stop grace and the runtime's stop/rm; an event still
            # being published or settled gets the same time, less a reserve to give it up in
            await asyncio.wait(set(self._running), timeout=max(sd.cleanup_budget(CRITICAL_WAIT) - ABANDON_RESERVE, 0))
        if not (sd.hurried and self.health.down):
            await self._critical.wait(max(sd.cleanup_budget(CRITICAL_WAIT) - ABANDON_RESERVE, 0))
        self._abandon_critical()
        if self._running:  # containers still stopping (the stop cannot be skipped): the rest of the time
            await asyncio.wait(set(self._running), timeout=self._final_step())

    def _abandon_critical(self) -> None:
        if self._critical.pending:
            # out of time: what is still publishing/settling is given up; unsettled events are
            # redelivered by the broker, and each handler records its event as left for redelivery
            LOGGER.warning(f"giving up {self._critical.abandon()} unsettled event(s): the broker redelivers them")

    async def _teardown(self) -> None:
        """Run the teardown container once (after success, failure or eviction alike), within the deadline."""
        teardown = self.cfg.teardown
        if teardown is None:
            return
        sd = self.shutdown
        if sd.deadline is not None and sd.cleanup_budget(CRITICAL_WAIT) <= TEARDOWN_RESERVE:
            LOGGER.error("teardown skipped: no time left before the shutdown deadline")
            self.chirp.set_error("teardown skipped: no time left before the shutdown deadline", None)
            return
        stop = asyncio.Event()
        watch = asyncio.ensure_future(self._stop_before_the_end(stop, TEARDOWN_RESERVE))
        try:
            await run_once_container(
                self.cfg, teardown, self.runtime, self.pilot_id, "teardown", stop, stop_grace=TEARDOWN_STOP
            )
        except (InitFailedError, RuntimeUnavailableError) as e:
            LOGGER.error(f"teardown failed: {e}")
            self.chirp.set_error(f"teardown failed: {e}", None)
        finally:
            watch.cancel()

    async def _stop_before_the_end(self, stop: asyncio.Event, reserve: float) -> None:
        """Set `stop` once only `reserve` seconds of the clean-up time remain (re-read on every signal)."""
        sd = self.shutdown
        while True:
            left = None if sd.deadline is None else sd.cleanup_budget(CRITICAL_WAIT) - reserve
            if left is not None and left <= 0:
                stop.set()
                return
            await sd.wait_changed(left)

    def _final_step(self) -> float:
        """Seconds one step of the pilot's ending may take: what is left of the clean-up time, at least a little."""
        return max(self.shutdown.cleanup_budget(CRITICAL_WAIT), FINAL_STEP_MIN)

    async def _close(self, *conns: Subscription | Publisher | None) -> None:
        """Close every connection at once, within what is left of the clean-up time."""
        live = [c for c in conns if c is not None]
        if not live:
            return
        budget = self._final_step()
        if self.health.down and self.shutdown.deadline is not None:
            budget = FINAL_STEP_MIN  # a broker that is down does not answer a close either
        results = await asyncio.gather(
            *(asyncio.wait_for(c.close(), budget) for c in live), return_exceptions=True
        )
        for result in results:
            if isinstance(result, TimeoutError):
                LOGGER.warning(f"closing a broker connection took over {budget:.1f}s: left to the process exit")
            elif isinstance(result, BaseException):
                LOGGER.warning(f"closing a broker connection failed: {result!r}")

    async def _finish(self, request: StopRequest) -> None:
        final = (
            PilotState.DONE if request.cause.clean
            else PilotState.EVICTED if request.cause == StopCause.SIGNAL
            else PilotState.FATAL
        )  # fmt: skip
        self._set_state(final)
        self.chirp.set_end_reason(request.reason)
        self._report()
        runtimes = await asyncio.to_thread(self.journal.runtimes, self.pilot_id)
        print(render_summary(self.tally, request, runtimes), flush=True)
        if request.cause == StopCause.TASK_ERRORS and self.cfg.quarantine_time > 0 and not self.shutdown.evicted:
            LOGGER.warning(f"quarantine: sleeping {self.cfg.quarantine_time:g}s before exiting")
            await self.shutdown.wait_changed(self.cfg.quarantine_time)
        await self.chirp.aclose(max(self.shutdown.cleanup_budget(10.0), FINAL_STEP_MIN))


@contextlib.contextmanager
def _names_variable(variable: str) -> Iterator[None]:
    """A broker found its address invalid: say which variable holds it."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(variable, e.value, e.expected) from e


async def _give_back(sub: Subscription, delivery: Delivery) -> None:
    try:
        settlement = await sub.release(delivery)
    except BrokerError as e:
        LOGGER.warning(f"release of late event {delivery.msg_id} failed; the broker redelivers it: {e}")
        return
    if settlement is not Settlement.RELEASED:
        LOGGER.warning(f"late event {delivery.msg_id} not released ({settlement.value}); the broker redelivers it")
