"""Admission: may this job queue this much more work now?

A job's own quotas come first (tokens per request, requests in flight, queued tokens), then the
server-wide queue bound, which refuses only a job above its weighted share of it, so one job's
flood never rejects another job's requests. A refusal is RESOURCE_EXHAUSTED with a retry hint
(the job's backlog drained at its weighted share of the measured throughput) unless retrying
cannot help. Sees the queue only through the planner's token counts; the scheduler owns the
queue, the futures and the dispatch loop.
"""

from __future__ import annotations

from collections.abc import Callable

from tropd.teacher.auth import Job
from tropd.teacher.batching import BatchPlanner
from tropd.teacher.errors import ResourceExhausted


class Admission:
    """Quotas and the shared queue bound, per job, with what they need to remember."""

    def __init__(
        self,
        planner: BatchPlanner,
        max_queue_tokens: int,
        max_delay_s: float,
        on_rejection: Callable[[str, str | None], None],
    ) -> None:
        """Args:
        planner: the scheduler's queue (read only: tokens queued, per job).
        max_queue_tokens: the server-wide bound a job over its share may not pass.
        max_delay_s: the retry hint before any throughput was measured.
        on_rejection: told (reason, job name) of every refusal (metrics).
        """
        self._planner = planner
        self._max_queue_tokens = max_queue_tokens
        self._max_delay_s = max_delay_s
        self._on_rejection = on_rejection
        self.weights: dict[str, float] = {}  # latest weight seen per job
        self.requests: dict[str, int] = {}  # admitted, unfinished requests per job
        self._tokens_per_s: float | None = None  # smoothed padded throughput, for retry hints

    def observe_throughput(self, padded_tokens: int, seconds: float) -> None:
        """Fold one forward pass into the smoothed rate the retry hints use."""
        if seconds > 0:
            rate = padded_tokens / seconds
            old = self._tokens_per_s
            self._tokens_per_s = rate if old is None else 0.8 * old + 0.2 * rate

    def admit(self, job: Job, total: int) -> None:
        """Count one request of `total` tokens for `job`, or raise ResourceExhausted.

        The caller must call `finished(job)` once the admitted request ends.
        """
        self.weights[job.name] = job.weight
        quotas, name = job.quotas, job.name
        for limit in (quotas.max_request_tokens, quotas.max_queued_tokens):
            if limit is not None and total > limit:
                self._refuse(
                    job, "job_request_tokens",
                    f"job {name!r}: this request holds {total} tokens, over the job's limit of "
                    f"{limit} (max_request_tokens / max_queued_tokens in the tokens file)",
                    None,
                )  # fmt: skip
        running = self.requests.get(name, 0)
        if quotas.max_in_flight is not None and running >= quotas.max_in_flight:
            self._refuse(
                job, "job_in_flight",
                f"job {name!r} has {running} requests in flight, its max_in_flight quota",
                0,
            )  # fmt: skip
        mine = self._planner.job_tokens.get(name, 0)
        if quotas.max_queued_tokens is not None and mine + total > quotas.max_queued_tokens:
            self._refuse(
                job, "job_queue_full",
                f"job {name!r}: {mine} tokens queued + {total} in this request exceed its "
                f"max_queued_tokens quota of {quotas.max_queued_tokens}",
                total,
            )  # fmt: skip
        queued, bound = self._planner.queued_tokens, self._max_queue_tokens
        share = int(bound * self._share(job))
        if queued + total > bound and mine + total > share:
            self._refuse(
                job, "queue_full",
                f"queue full: {queued} tokens waiting + {total} in this request exceed "
                f"max_queue_tokens = {bound}, and job {name!r} already holds {mine} "
                f"(its weighted share is {share})",
                total,
            )  # fmt: skip
        self.requests[name] = running + 1

    def finished(self, job: Job) -> None:
        """An admitted request of `job` ended (answered, failed or cancelled)."""
        self.requests[job.name] -= 1

    def _share(self, job: Job) -> float:
        """`job`'s weighted share among the jobs with queued work (itself included)."""
        active = set(self._planner.job_tokens) | {job.name}
        return job.weight / sum(self.weights.get(name, 1.0) for name in active)

    def _retry_hint_s(self, job: Job, extra_tokens: int) -> float:
        """Time for the job's backlog to drain at its weighted share of the measured rate."""
        backlog = self._planner.job_tokens.get(job.name, 0) + extra_tokens
        if not self._tokens_per_s:
            return max(0.1, self._max_delay_s)
        return min(30.0, max(0.05, backlog / (self._tokens_per_s * self._share(job))))

    def _refuse(self, job: Job, reason: str, message: str, extra_tokens: int | None) -> None:
        """Raise RESOURCE_EXHAUSTED; `extra_tokens` None = retrying cannot help (no hint)."""
        self._on_rejection(reason, job.name)
        hint = None if extra_tokens is None else self._retry_hint_s(job, extra_tokens)
        if hint is not None:
            message += f"; retry in ~{hint:.2f}s"
        raise ResourceExhausted(message, reason=reason, retry_after_s=hint)
