"""Prometheus metrics of one teacher server, in a registry of its own.

Names carry the `teacher_` prefix and base units (seconds, tokens). Each server gets a fresh
`CollectorRegistry`, so several servers in one process (tests, benchmarks) do not collide.
`TeacherMetrics` also implements the scheduler's hooks (`teacher.scheduler.SchedulerHooks`).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKENS = tuple(float(2**i) for i in range(4, 21))  # 16 .. 1M
_RATIO = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


class TeacherMetrics:
    """Every metric the teacher exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Args:
        registry: where to register; default a new private registry.
        """
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self.ready = Gauge(
            "teacher_ready", "1 when the model is loaded, warmed and not draining", registry=r
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def on_queue_depth(self, tokens: int, items: int) -> None:
        self.queue_tokens.set(tokens)
        self.queue_sequences.set(items)

    def on_batch(
        self, kind: str, waits_s: Sequence[float], real_tokens: int, padded_tokens: int
    ) -> None:
        for wait in waits_s:
            self.queue_wait.labels(kind).observe(max(0.0, wait))
        self.batch_tokens.labels(kind).observe(padded_tokens)
        if padded_tokens:
            self.batch_padding.labels(kind).observe(1.0 - real_tokens / padded_tokens)

    def on_forward(self, kind: str, seconds: float, ok: bool) -> None:
        self.forward_seconds.labels(kind, "ok" if ok else "error").observe(seconds)

    def on_rejection(self, reason: str) -> None:
        self.rejections.labels(reason).inc()
