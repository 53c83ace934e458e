"""The asyncio scheduler: batches Score and Generate work from all concurrent calls.

Requests arrive already validated and authenticated, as one `tropd.teacher.auth.Job`, and pass
`tropd.teacher.admission` (the job's quotas, then the server-wide queue bound). Each sequence
becomes a `WorkItem` with its own future, queued under its job; one loop task asks the
`BatchPlanner` for the next batch (start-time fair queueing over jobs in tokens, token budget,
delay cap, bucketing) and runs it on the backend in ONE worker thread, so the event loop keeps
serving health checks, metrics and new requests during a forward pass. Work whose caller
cancelled or whose deadline passed is dropped before it reaches the backend. A failed forward
fails only the futures of its own batch; the loop never dies. Time comes from an injectable
`Clock`, so the policy is tested with a fake clock and a fake backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from tropd.teacher.admission import Admission
from tropd.teacher.auth import ANONYMOUS, Job
from tropd.teacher.backends.base import Backend, GenerateTask, ScoreTask
from tropd.teacher.batching import BatchPlanner, Kind, WorkItem, padded_tokens
from tropd.teacher.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    TeacherError,
    Unavailable,
)
from tropd.wire.types import Generation, ScoredSequence, Timing

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Time source of the scheduler, in seconds."""

    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        """Return once `event` is set or `timeout` seconds of this clock have passed."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic` and asyncio timeouts."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


@dataclass(frozen=True)
class Served:
    """One sequence of a batch that is about to run: whose, how long it waited, its tokens, and
    how many batches were dispatched while it waited (0: it rides the first batch after it
    arrived; a count, so fairness is checked without timing anything)."""

    job: str
    wait_s: float
    tokens: int
    batches_ahead: int = 0


class SchedulerHooks(Protocol):
    """Observation points for metrics; every method must be cheap and must not raise."""

    def on_queue_depth(self, tokens: int, items: int, job_tokens: dict[str, int]) -> None: ...

    def on_batch(self, kind: Kind, served: Sequence[Served], padded_tokens: int) -> None: ...

    def on_forward(self, kind: Kind, seconds: float, ok: bool) -> None: ...

    def on_rejection(self, reason: str, job: str | None = None) -> None: ...


class NullHooks:
    """Hooks that record nothing."""

    def on_queue_depth(self, tokens: int, items: int, job_tokens: dict[str, int]) -> None:
        pass

    def on_batch(self, kind: Kind, served: Sequence[Served], padded_tokens: int) -> None:
        pass

    def on_forward(self, kind: Kind, seconds: float, ok: bool) -> None:
        pass

    def on_rejection(self, reason: str, job: str | None = None) -> None:
        pass


@dataclass(frozen=True)
class JobLoad:
    """A job's live share of the scheduler (for /v1/jobs)."""

    queued_tokens: int
    queued_sequences: int
    in_flight_requests: int
    served_tokens: int  # sequence tokens sent to the backend since start


@dataclass(frozen=True)
class _Done:
    """What a finished WorkItem's future holds: its output and how it was served."""

    output: Any
    wait_s: float
    batch: int  # serial number of the batch that carried it
    forward_s: float


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int  # padded tokens per forward pass
    max_delay_s: float  # longest wait for a batch to fill
    max_queue_tokens: int  # queued tokens before RESOURCE_EXHAUSTED (for jobs over their share)
    contended_batch_tokens: int | None = None  # budget while 2+ jobs wait; None = the max


def _item_error(item: WorkItem, now: float) -> TeacherError:
    if item.deadline is not None and now >= item.deadline:
        return DeadlineExceeded(
            f"deadline passed after {now - item.enqueued_at:.3f}s in the queue, before compute"
        )
    return Cancelled("the caller cancelled the request before compute")


class Scheduler:
    """Token-budget batching of Score and Generate work in front of one backend."""

    def __init__(
        self,
        backend: Backend,
        config: SchedulerConfig,
        clock: Clock | None = None,
        hooks: SchedulerHooks | None = None,
        executor: Executor | None = None,
    ) -> None:
        """Args:
        backend: the model; called from one worker thread only.
        config: budget, delay cap and queue bound.
        clock: time source (default: the monotonic clock).
        hooks: metrics observer (default: records nothing).
        executor: where backend calls run (default: a private single-thread pool).
        """
        self._backend = backend
        self._config = config
        self._clock = clock or MonotonicClock()
        self._hooks = hooks or NullHooks()
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="teacher-backend")
        self._planner = BatchPlanner(
            config.max_batch_tokens, config.max_delay_s, config.contended_batch_tokens
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[WorkItem] = []
        self._closing = False
        self._admission = Admission(
            self._planner, config.max_queue_tokens, config.max_delay_s, self._hooks.on_rejection
        )
        self._served: dict[str, int] = {}  # tokens dispatched per job
        self._batches = 0  # batches dispatched since start

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def queued_tokens(self) -> int:
        return self._planner.queued_tokens

    def job_loads(self) -> dict[str, JobLoad]:
        """Every job seen since start: queued work, requests in flight, tokens served."""
        items = self._planner.job_items()
        return {
            job: JobLoad(
                self._planner.job_tokens.get(job, 0),
                items.get(job, 0),
                self._admission.requests.get(job, 0),
                self._served.get(job, 0),
            )
            for job in sorted(self._admission.weights)
        }

    @property
    def idle(self) -> bool:
        return self._planner.num_items == 0 and not self._in_flight

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def score(
        self,
        tasks: Sequence[ScoreTask],
        deadline: float | None = None,
        job: Job = ANONYMOUS,
        timing: Timing | None = None,
    ) -> list[ScoredSequence]:
        """Score validated tasks; they may be spread over several batches.

        Args:
            tasks: validated ScoreTasks (see `tropd.teacher.validation`).
            deadline: clock time after which unstarted work is dropped, or None.
            job: who asks: its queue, weight and quotas.
            timing: filled in with the request's queue and compute time, if given.
        Returns:
            One ScoredSequence per task, in order.
        Raises:
            ResourceExhausted: over a quota of the job, or the queue is full and the job holds
                more than its weighted share of it; carries a retry hint unless the request
                alone exceeds a limit.
            Unavailable: the scheduler is draining.
            DeadlineExceeded, Cancelled, Internal: the work was dropped or its batch failed.
        """
        # Positions from end - 1 on feed no scored row, so a backend need not run them.
        lengths = [t.end - 1 for t in tasks]
        return await self._submit("score", tasks, lengths, deadline, job, timing)

    async def generate(
        self,
        tasks: Sequence[GenerateTask],
        deadline: float | None = None,
        job: Job = ANONYMOUS,
        timing: Timing | None = None,
    ) -> list[Generation]:
        """Generate for validated tasks; like `score`, batched apart from score work.

        Args:
            tasks: validated GenerateTasks.
            deadline: clock time after which unstarted work is dropped, or None.
            job: who asks (see `score`).
            timing: filled in with the request's queue and compute time, if given.
        Returns:
            One Generation per task, in order.
        """
        lengths = [len(t.prompt) + t.max_new_tokens for t in tasks]
        return await self._submit("generate", tasks, lengths, deadline, job, timing)

    async def _submit(
        self,
        kind: Kind,
        tasks: Sequence[Any],
        lengths: list[int],
        deadline: float | None,
        job: Job,
        timing: Timing | None,
    ) -> list[Any]:
        if self._closing:
            self._hooks.on_rejection("draining", job.name)
            raise Unavailable("the teacher is shutting down; retry on another replica")
        self._admission.admit(job, sum(lengths))
        try:
            loop = asyncio.get_running_loop()
            now = self._clock.now()
            items = [
                WorkItem(
                    kind,
                    task,
                    length,
                    loop.create_future(),
                    now,
                    deadline,
                    job.name,
                    job.weight,
                    self._batches,
                )
                for task, length in zip(tasks, lengths, strict=True)
            ]
            self._planner.add(items)
            self._report_depth()
            self._wake.set()
            try:
                done: list[_Done] = list(await asyncio.gather(*(item.future for item in items)))
            except BaseException:
                # One piece failed or the caller went away: the rest must not reach the backend.
                for item in items:
                    item.future.cancel()
                self._wake.set()
                raise
        finally:
            self._admission.finished(job)
        if timing is not None:
            timing.queue_seconds = max(d.wait_s for d in done)
            timing.compute_seconds = sum({d.batch: d.forward_s for d in done}.values())
        return [d.output for d in done]

    def _report_depth(self) -> None:
        planner = self._planner
        self._hooks.on_queue_depth(planner.queued_tokens, planner.num_items, planner.job_tokens)

    def _drop_dead(self) -> None:
        now = self._clock.now()
        dead = self._planner.remove_dead(now)
        for item in dead:
            if item.future.cancelled():
                self._hooks.on_rejection("cancelled", item.job)
            elif not item.future.done():
                error = _item_error(item, now)
                self._hooks.on_rejection(error.reason, item.job)
                item.future.set_exception(error)
        if dead:
            self._report_depth()

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any bug in one iteration
                log.exception("scheduler iteration failed; continuing")
                await asyncio.sleep(0.01)

    async def _step(self) -> None:
        self._drop_dead()
        now = self._clock.now()
        batch = self._planner.next_batch(now, flush=self._closing)
        if batch is None:
            self._wake.clear()
            wake = self._planner.wake_time()
            await self._clock.wait(self._wake, None if wake is None else wake - now)
            return
        self._report_depth()
        await self._dispatch(batch)

    async def _dispatch(self, batch: list[WorkItem]) -> None:
        kind = batch[0].kind
        now = self._clock.now()
        padded = padded_tokens(batch)
        served = [Served(it.job, now - it.enqueued_at, it.length, self._batches - it.batches_before)
                  for it in batch]  # fmt: skip
        self._hooks.on_batch(kind, served, padded)
        for item in batch:
            self._served[item.job] = self._served.get(item.job, 0) + item.length
        call: Callable[[Any], Sequence[Any]] = (
            self._backend.score if kind == "score" else self._backend.generate
        )
        self._in_flight = batch
        self._batches += 1
        batch_no = self._batches
        started = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, call, [it.task for it in batch]
            )
            if len(outputs) != len(batch):
                raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(batch)}")
        except Exception as exc:
            seconds = time.perf_counter() - started
            self._hooks.on_forward(kind, seconds, ok=False)
            log.exception("%s batch of %d sequences failed", kind, len(batch))
            for item in batch:
                if not item.future.done():
                    # A backend that explains itself (e.g. a remote server's refusal) keeps
                    # its status; anything else is an internal failure of this batch.
                    item.future.set_exception(
                        exc
                        if isinstance(exc, TeacherError)
                        else Internal(
                            f"the teacher's {kind} forward failed on a batch of {len(batch)} "
                            f"sequences ({padded} padded tokens): {type(exc).__name__}: {exc}",
                            reason="backend_error",
                        )
                    )
            return
        finally:
            self._in_flight = []
        seconds = time.perf_counter() - started
        self._hooks.on_forward(kind, seconds, ok=True)
        self._admission.observe_throughput(padded, seconds)
        for item, output in zip(batch, outputs, strict=True):
            if item.future.done():
                continue
            # A backend may refuse one sequence (e.g. a remote server tokenised it differently)
            # without failing the others that shared its batch.
            if isinstance(output, TeacherError):
                item.future.set_exception(output)
            else:
                item.future.set_result(_Done(output, now - item.enqueued_at, batch_no, seconds))

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new work, finish queued and in-flight work, within `timeout_s` seconds.

        Args:
            timeout_s: grace period (real seconds).
        Returns:
            True when everything finished; False when the grace period ran out (work still
            queued is then failed with UNAVAILABLE).
        """
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                while not self.idle:
                    await asyncio.sleep(0.01)
            return True
        except TimeoutError:
            for item in self._planner.remove_all():
                if not item.future.done():
                    item.future.set_exception(
                        Unavailable("the teacher shut down before this work could run")
                    )
            self._report_depth()
            return False

    async def close(self) -> None:
        """Stop the loop, fail anything still pending, and release the worker thread."""
        self._closing = True
        in_flight = list(self._in_flight)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._planner.remove_all() + in_flight:
            if not item.future.done():
                item.future.set_exception(Unavailable("the teacher is shutting down"))
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
