"""Prometheus metrics of one teacher server, in a registry of its own.

Names carry the `teacher_` prefix and base units (seconds, tokens). Each server gets a fresh
`CollectorRegistry`, so several servers in one process (tests, benchmarks) do not collide.
`TeacherMetrics` also implements the scheduler's hooks (`tropd.teacher.scheduler.SchedulerHooks`).
Per-job series (`teacher_job_*`) carry a `job` label whose values are the bounded set of job
names from the tokens file (plus "anonymous"), or a short hash of each name, or "-" for all
(`job_label`, the server's `metrics_job_label`), so an open /metrics need not list who uses the
teacher; calls refused before a job is known count only in the server-wide
`teacher_rejections`. Every series is one replica's own count: Prometheus tells replicas apart by
the `instance` it scraped, and `teacher_info{replica}` names that instance by its host name (the
pod name in Kubernetes, the service's `hostname` in compose) for dashboards to join on.
`RefusalLog` rate-limits the WARNING lines of refused calls.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

if TYPE_CHECKING:
    from tropd.teacher.scheduler import Served

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKENS = tuple(float(2**i) for i in range(4, 21))  # 16 .. 1M
_RATIO = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
_BATCHES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


JobLabel = Literal["name", "hash", "none"]


def job_label_of(name: str, mode: JobLabel) -> str:
    """The `job` label value of a job: its name, "h-" + 8 hex digits of its hash, or "-"."""
    if mode == "name":
        return name
    if mode == "hash":
        return "h-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return "-"


class TeacherMetrics:
    """Every metric the teacher exports, bound to one registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        job_label: JobLabel = "name",
        replica: str | None = None,
    ) -> None:
        """Args:
        registry: where to register; default a new private registry.
        job_label: how per-job series name their job (see `job_label_of`).
        replica: the `replica` label of `teacher_info`; default this host's name.
        """
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.job_label_mode: JobLabel = job_label
        r = self.registry
        self.info = Info("teacher", "Which replica this server is (always 1)", registry=r)
        self.info.info({"replica": replica or socket.gethostname()})
        self.requests = Counter(
            "teacher_requests",
            "Finished RPCs by method and gRPC status",
            ["method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "teacher_request_duration_seconds",
            "RPC latency",
            ["method"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "teacher_queue_wait_seconds",
            "Time a sequence waited before its batch ran",
            ["kind"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "teacher_batch_tokens",
            "Padded tokens per forward batch",
            ["kind"],
            buckets=_TOKENS,
            registry=r,
        )
        self.batch_padding = Histogram(
            "teacher_batch_padding_ratio",
            "Share of a batch's padded tokens that are padding",
            ["kind"],
            buckets=_RATIO,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "teacher_forward_seconds",
            "Backend time per batch",
            ["kind", "outcome"],
            buckets=_SECONDS,
            registry=r,
        )
        self.scored_tokens = Counter(
            "teacher_scored_tokens", "Positions scored (rows returned)", registry=r
        )
        self.generated_tokens = Counter("teacher_generated_tokens", "Tokens generated", registry=r)
        self.rejections = Counter(
            "teacher_rejections",
            "Requests or sequences refused, by reason",
            ["reason"],
            registry=r,
        )
        self.queue_tokens = Gauge("teacher_queue_tokens", "Tokens waiting for a batch", registry=r)
        self.queue_sequences = Gauge(
            "teacher_queue_sequences", "Sequences waiting for a batch", registry=r
        )
        self.in_flight = Gauge(
            "teacher_requests_in_flight", "RPCs being handled (queued or computing)", registry=r
        )
        self.job_requests = Counter(
            "teacher_job_requests",
            "Finished RPCs per job, by method and gRPC status",
            ["job", "method", "status"],
            registry=r,
        )
        self.job_scored_tokens = Counter(
            "teacher_job_scored_tokens", "Positions scored per job", ["job"], registry=r
        )
        self.job_generated_tokens = Counter(
            "teacher_job_generated_tokens", "Tokens generated per job", ["job"], registry=r
        )
        self.job_served_tokens = Counter(
            "teacher_job_served_tokens",
            "Sequence tokens of a job sent to forward passes (what fair sharing divides)",
            ["job"],
            registry=r,
        )
        self.job_queue_wait = Histogram(
            "teacher_job_queue_wait_seconds",
            "Time a job's sequence waited before its batch ran",
            ["job"],
            buckets=_SECONDS,
            registry=r,
        )
        self.job_queue_wait_batches = Histogram(
            "teacher_job_queue_wait_batches",
            "Batches dispatched while a job's sequence waited (0: it rode the first one after "
            "it arrived)",
            ["job"],
            buckets=_BATCHES,
            registry=r,
        )
        self.job_queue_tokens = Gauge(
            "teacher_job_queue_tokens", "Tokens of a job waiting for a batch", ["job"], registry=r
        )
        self.job_rejections = Counter(
            "teacher_job_rejections",
            "A job's requests or sequences refused, by reason",
            ["job", "reason"],
            registry=r,
        )
        self.refusal_logs_suppressed = Counter(
            "teacher_refusal_logs_suppressed",
            "Refused calls not logged (at most one WARNING per reason per interval)",
            ["reason"],
            registry=r,
        )
        self._queued_jobs: set[str] = set()
        self.ready = Gauge(
            "teacher_ready", "1 when the model is loaded, warmed and not draining", registry=r
        )

    def job(self, name: str) -> str:
        """The `job` label value of job `name`."""
        return job_label_of(name, self.job_label_mode)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def on_queue_depth(self, tokens: int, items: int, job_tokens: dict[str, int]) -> None:
        self.queue_tokens.set(tokens)
        self.queue_sequences.set(items)
        self._queued_jobs |= set(job_tokens)  # emptied queues must read 0, not their last value
        per_label: dict[str, int] = {}
        for job in self._queued_jobs:
            label = self.job(job)
            per_label[label] = per_label.get(label, 0) + job_tokens.get(job, 0)
        for label, queued in per_label.items():
            self.job_queue_tokens.labels(label).set(queued)

    def on_batch(self, kind: str, served: Sequence[Served], padded_tokens: int) -> None:
        real_tokens = 0
        for item in served:
            wait = max(0.0, item.wait_s)
            self.queue_wait.labels(kind).observe(wait)
            self.job_queue_wait.labels(self.job(item.job)).observe(wait)
            self.job_queue_wait_batches.labels(self.job(item.job)).observe(item.batches_ahead)
            self.job_served_tokens.labels(self.job(item.job)).inc(item.tokens)
            real_tokens += item.tokens
        self.batch_tokens.labels(kind).observe(padded_tokens)
        if padded_tokens:
            self.batch_padding.labels(kind).observe(1.0 - real_tokens / padded_tokens)

    def on_forward(self, kind: str, seconds: float, ok: bool) -> None:
        self.forward_seconds.labels(kind, "ok" if ok else "error").observe(seconds)

    def on_rejection(self, reason: str, job: str | None = None) -> None:
        self.rejections.labels(reason).inc()
        if job is not None:
            self.job_rejections.labels(self.job(job), reason).inc()


class RefusalLog:
    """WARNING lines for refused calls, at most one per reason per `interval_s`.

    A flood of bad calls must not flood the log: the first refusal of a reason in an interval is
    logged (with how many were held back since the last line), the rest only counted in
    `teacher_refusal_logs_suppressed_total{reason}`.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        metrics: TeacherMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._interval, self._metrics, self._clock = logger, interval_s, metrics, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: Any) -> bool:
        """Log `message % args` unless `reason` was logged within the interval.

        Returns:
            True when the line was written.
        """
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._held[reason] = self._held.get(reason, 0) + 1
            self._metrics.refusal_logs_suppressed.labels(reason).inc()
            return False
        self._last[reason] = now
        held = self._held.pop(reason, 0)
        suffix = f" ({held} more refused for {reason} since the last line)" if held else ""
        self._log.warning(message + suffix, *args)
        return True
