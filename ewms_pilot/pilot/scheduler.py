"""The pilot's main loop: take events while there are slots, end on a stop request, drain in `finally`.

Only `Tally.running` counts concurrency; only `_running` holds the task
coroutines. The subscription is polled in short slices so a stop request or a
freed slot is acted on promptly, and a `get` is never cancelled mid-flight (a
delivery that arrives after the stop is given straight back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses as dc
import logging
import time
import traceback
import uuid
from collections.abc import Iterator

from ..chirp import ChirpReporter, PilotStatus
from ..config.model import PilotConfig, TaskMode
from ..errors import BrokerError, BrokerUnavailableError, ConfigError
from ..queues.base import Delivery, Publisher, Subscription
from ..queues.factory import open_publisher, open_subscription
from ..runtimes import get_runtime
from ..runtimes.base import Runtime, RuntimeUnavailableError
from ..tasks.errors import TaskFailure
from ..tasks.taskdir import prepare_data_dir
from ..warm.pool import WarmPool
from .init_step import InitFailedError, run_init_container, run_once_container
from .journal import JOURNAL_NAME, Journal
from .ownership import sweep_orphans
from .shutdown import StopCause, StopRequest
from .state import PilotState, Tally
from .summary import render_summary
from .task_handler import Critical, PublishFailedError, TaskEnvironment, TaskHandler, TaskOutcome

LOGGER = logging.getLogger("ewms_pilot")

POLL_SLICE = 1.0  # s: longest a single broker `get` may wait before the loop looks around
CRITICAL_WAIT = 30.0  # s: bound on finishing in-flight publish/ack/nack at the end
EVICTED_CRITICAL_WAIT = 2.0  # s: the same after an eviction, which must end within grace + 5 s


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
        self.stop_request: StopRequest | None = None
        self._stop_event = asyncio.Event()
        self._hurry = asyncio.Event()
        self._signalled = asyncio.Event()
        self._running: set[asyncio.Task[TaskOutcome]] = set()
        self._critical = Critical()
        self._last_activity = time.monotonic()
        self._publish_failing_since: float | None = None
        self.journal = Journal(cfg.data_dir / JOURNAL_NAME)
        self.failures: list[tuple[str, TaskFailure]] = []  # (task id or "init", failure): the API raises from it

    # -- control ------------------------------------------------------------

    def request_stop(self, request: StopRequest) -> None:
        """Stop taking events; a second request with a smaller grace hurries the drain."""
        if self.stop_request is None or (
            request.cause == StopCause.SIGNAL and self.stop_request.cause != StopCause.SIGNAL
        ):
            self.stop_request = request
            LOGGER.warning(f"stopping: {request.reason}")
        elif request.cause == StopCause.SIGNAL:
            LOGGER.warning("second stop signal: stopping running tasks now")
            self._hurry.set()
        if request.cause == StopCause.SIGNAL:
            self._signalled.set()
        self._stop_event.set()

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
        sub: Subscription | None = None
        pub: Publisher | None = None
        dlq: Publisher | None = None
        pool: WarmPool | None = None
        try:
            await asyncio.to_thread(prepare_data_dir, self.cfg.data_dir, self.cfg.data_hub_dir)
            image = await self.runtime.prepare_image(self.cfg.task.image)
            await sweep_orphans(self.runtime)
            if self.cfg.init is not None:
                self._set_state(PilotState.INIT)
                await run_init_container(self.cfg, self.runtime, self.pilot_id, self._stop_event)
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
                env = TaskEnvironment.build(self.cfg, self.runtime, image, self.pilot_id)
                handler = TaskHandler(
                    env, sub, pub, self._critical, deadletter=dlq,
                    journal=self.journal, on_progress=self.chirp.set_task_progress, warm_pool=pool,
                )
                await self._consume(sub, handler)
        except ConfigError as e:
            self._fatal(StopCause.CONFIG, f"configuration error: {e}", e)
        except InitFailedError as e:
            if e.failure is not None:
                self.failures.append(("init", e.failure))
            self._fatal(StopCause.INIT_FAILED, f"init container failed: {e}", e)
        except (BrokerUnavailableError, BrokerError) as e:
            self._fatal(StopCause.BROKER, str(e), e)
        except RuntimeUnavailableError as e:
            self._fatal(StopCause.RUNTIME, f"container runtime unusable: {e}", e)
        except Exception as e:
            LOGGER.exception("unexpected error")
            self._fatal(StopCause.FATAL, f"unexpected error: {type(e).__name__}: {e}", e)
        finally:
            await self._drain(sub)
            if pool is not None:
                await pool.close()
            await self._teardown()
            await self._close(sub, pub, dlq)
        request = self.stop_request or StopRequest(StopCause.FATAL, "ended without a reason")
        await self._finish(request)
        return request

    def _fatal(self, cause: StopCause, reason: str, exc: BaseException) -> None:
        self.chirp.set_error(reason, "".join(traceback.format_exception(exc)))
        self.request_stop(StopRequest(cause, reason, grace=self.cfg.shutdown_grace))

    async def _consume(self, sub: Subscription, handler: TaskHandler) -> None:
        """Take events until a stop is requested or the queue stays empty long enough."""
        self._set_state(PilotState.AWAITING_FIRST)
        self._last_activity = time.monotonic()
        got_first = False
        broken_since: float | None = None
        while self.stop_request is None:
            if len(self._running) >= self.cfg.max_concurrent_tasks:
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
                delivery = await sub.get(slice_)
                broken_since = None
            except BrokerError as e:
                broken_since = broken_since or time.monotonic()
                down = time.monotonic() - broken_since
                if down > self.cfg.reconnect_deadline:
                    raise BrokerError(f"incoming broker unreachable for {down:.0f}s: {e}") from e
                LOGGER.warning(f"incoming broker connection lost, reconnecting ({down:.0f}s so far): {e}")
                await self._pause(min(2 + down / 4, 15))
                self._last_activity = time.monotonic()  # an outage is not an empty queue
                continue
            if delivery is None:
                continue
            if self.stop_request is not None:  # arrived while we were told to stop
                await self._critical.run(_give_back(sub, delivery))
                break
            if not got_first:
                got_first = True
                self._set_state(PilotState.TASKING)
            self._start(handler, delivery)
        if self._running:
            self._set_state(PilotState.PENDING_REMAINING)

    def _start(self, handler: TaskHandler, delivery: Delivery) -> None:
        self.tally.received += 1
        self.tally.running += 1
        self._last_activity = time.monotonic()
        task = asyncio.create_task(handler.run(delivery))
        self._running.add(task)
        task.add_done_callback(self._finished)
        self._report()

    def _finished(self, task: asyncio.Task[TaskOutcome]) -> None:
        self._running.discard(task)
        self.tally.running -= 1
        self._last_activity = time.monotonic()
        if task.cancelled():
            self._report()
            return
        exc = task.exception()
        if exc is not None:  # a bug in the handler: never swallow it silently
            LOGGER.error("task handler crashed", exc_info=exc)
            self.tally.failed += 1
            self.request_stop(StopRequest(StopCause.FATAL, f"task handler crashed: {exc!r}"))
            self._report()
            return
        outcome = task.result()
        if outcome.no_output:
            self.tally.no_output += 1
        if outcome.ok:
            self.tally.succeeded += 1
            if outcome.record.published:
                self._publish_failing_since = None
        else:
            self.tally.failed += 1
            self.tally.dead_lettered += int(outcome.dead_lettered)
            self._on_failure(outcome)
        self._report()

    def _on_failure(self, outcome: TaskOutcome) -> None:
        assert outcome.failure is not None
        self.failures.append((outcome.task_id, outcome.failure))
        self.chirp.set_error(outcome.failure)
        if isinstance(outcome.failure, PublishFailedError):
            # the task was fine, the outgoing broker is not: not this node's fault, so no
            # stop-on-error; but an outage longer than the reconnect deadline ends the pilot
            now = time.monotonic()
            self._publish_failing_since = self._publish_failing_since or now
            down = now - self._publish_failing_since
            if down > self.cfg.reconnect_deadline:
                self.request_stop(
                    StopRequest(StopCause.BROKER, f"outgoing broker unusable for {down:.0f}s: {outcome.failure.reason}")
                )
            return
        if not self.cfg.stop_listening_on_task_error:
            return
        count = outcome.delivery.delivery_count
        if count is not None and count > 1:
            # The rule: an event that already failed (or was cut short) elsewhere is
            # suspected, not this node; stopping here would let one poison event
            # take down pilot after pilot. Only a first delivery trips stop-on-error.
            LOGGER.warning(
                f"task {outcome.task_id} failed on delivery #{count} of its event: "
                "blaming the event, not this node (stop-on-error applies to first deliveries)"
            )
            return
        names = outcome.failure.names()
        if names & self.cfg.okay_errors:
            LOGGER.info(f"failure {type(outcome.failure).__name__} is in EWMS_PILOT_OKAY_ERRORS: carrying on")
            return
        self.request_stop(
            StopRequest(
                StopCause.TASK_ERRORS,
                f"task {outcome.task_id} failed ({type(outcome.failure).__name__}): {outcome.failure.reason}",
            )
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once on a stop request."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    async def _wait_for_slot(self) -> None:
        stop = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({stop, *self._running}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    # -- ending ---------------------------------------------------------------

    async def _drain(self, sub: Subscription | None) -> None:
        """Let running tasks finish (within the grace for evictions), then stop the rest."""
        if not self._running:
            await self._critical.wait(CRITICAL_WAIT)
            return
        request = self.stop_request
        grace = request.grace if request else None
        if request and request.cause == StopCause.SIGNAL:
            self._set_state(PilotState.DRAINING)
        LOGGER.info(
            f"waiting for {len(self._running)} running task(s)"
            + (f" up to {grace:g}s" if grace is not None else "")
        )
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            deadline = None if grace is None else time.monotonic() + grace
            while self._running and not self._hurry.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                await asyncio.wait({hurry, *self._running}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        if self._running:
            LOGGER.warning(f"stopping {len(self._running)} unfinished task(s); their events go back to the broker")
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
        # evicted: what is still in flight (a publish to a hung broker) may not hold up the exit;
        # an event whose outcome is cut off stays unacked, and the broker redelivers it
        evicted = request is not None and request.cause == StopCause.SIGNAL
        await self._critical.wait(EVICTED_CRITICAL_WAIT if evicted else CRITICAL_WAIT)

    async def _teardown(self) -> None:
        """Run the teardown container once (after success, failure or eviction alike)."""
        teardown = self.cfg.teardown
        if teardown is None:
            return
        if self.stop_request is not None and self.stop_request.cause == StopCause.SIGNAL:
            budget = max(self.cfg.shutdown_grace, 5.0)  # evicted: stay within the grace
            teardown = dc.replace(teardown, timeout=min(teardown.timeout or budget, budget))
        try:
            await run_once_container(
                self.cfg, teardown, self.runtime, self.pilot_id, "teardown", asyncio.Event()
            )
        except (InitFailedError, RuntimeUnavailableError) as e:
            LOGGER.error(f"teardown failed: {e}")
            self.chirp.set_error(f"teardown failed: {e}", None)

    async def _close(self, *conns: Subscription | Publisher | None) -> None:
        for conn in conns:
            if conn is not None:
                try:
                    await conn.close()
                except Exception as e:
                    LOGGER.warning(f"closing a broker connection failed: {e!r}")

    async def _finish(self, request: StopRequest) -> None:
        final = {
            StopCause.QUEUE_EMPTY: PilotState.DONE,
            StopCause.SIGNAL: PilotState.EVICTED,
        }.get(request.cause, PilotState.FATAL)
        self._set_state(final)
        self.chirp.set_end_reason(request.reason)
        self._report()
        records = await asyncio.to_thread(self.journal.read, self.pilot_id)
        print(render_summary(self.tally, request, records), flush=True)
        if request.cause == StopCause.TASK_ERRORS and self.cfg.quarantine_time > 0:
            LOGGER.warning(f"quarantine: sleeping {self.cfg.quarantine_time:g}s before exiting")
            try:
                await asyncio.wait_for(self._signalled.wait(), self.cfg.quarantine_time)
            except TimeoutError:
                pass
        await self.chirp.aclose()


@contextlib.contextmanager
def _names_variable(variable: str) -> Iterator[None]:
    """A broker found its address invalid: say which variable holds it."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(variable, e.value, e.expected) from e


async def _give_back(sub: Subscription, delivery: Delivery) -> None:
    await sub.release(delivery)  # LEFT (logged by the subscription): the broker redelivers it
