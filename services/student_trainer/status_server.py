"""The trainer's HTTP side port: /livez, Prometheus /metrics and a JSON /v1/status.

The training thread writes into a `TrainerStatus` (`run_status.py`); a uvicorn server on a
background thread reads snapshots of it. Nothing here touches the model or the loop, and a slow
scrape never blocks a training step for longer than a dict copy.

Step metrics arrive as the same dict the loop logs to metrics.jsonl; these keys are exported:
  loss/<term>              -> trainer_loss{term="<term>"}
  GAUGE_METRICS keys       -> their gauge (e.g. train/grad_norm -> trainer_grad_norm)
  train/skipped (0 or 1)   -> trainer_skipped_steps_total (a step dropped for non-finite values)
Other keys are kept for /v1/status only.

While the loop waits out a teacher outage (`teacher_waiting`), the state is
`waiting_for_teacher`, /v1/status carries a `teacher` object (since when, how many attempts,
the last error, the limit `teacher.outage_s`) and /metrics `trainer_teacher_waiting` 1,
`trainer_teacher_outage_seconds`, `trainer_teacher_retries_total` and
`trainer_teacher_outages_total`.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from tropd.trainer.run_status import RunState, StatusSnapshot, TrainerStatus

logger = logging.getLogger(__name__)

LOSS_PREFIX = "loss/"
# metrics.jsonl key -> (Prometheus gauge name, help). Values are those of the latest step.
GAUGE_METRICS: dict[str, tuple[str, str]] = {
    "train/trust_fraction": ("trainer_trust_fraction", "Fraction of sampled tokens trusted"),
    "train/grad_norm": ("trainer_grad_norm", "Gradient norm before clipping"),
    "train/lr": ("trainer_learning_rate", "Learning rate of the step (optim.warmup_steps)"),
    "perf/tokens_per_s": ("trainer_tokens_per_second", "Trained response tokens per second"),
    "perf/step_s": ("trainer_step_duration_seconds", "Wall time of the step"),
    "perf/teacher_s": ("trainer_teacher_latency_seconds", "Wall time of the step's teacher calls"),
    "perf/rollout_s": ("trainer_rollout_seconds", "Wall time of the step's rollout"),
    "perf/teacher_wait_s": (
        "trainer_teacher_wait_seconds",
        "Time the step sat idle waiting for the teacher's scores",
    ),
    "perf/update_s": ("trainer_update_seconds", "Wall time of the step's forward/backward/AdamW"),
    "perf/teacher_queue_s": (
        "trainer_teacher_queue_seconds",
        "Time the step's Score calls queued at the teacher",
    ),
    "perf/teacher_compute_s": (
        "trainer_teacher_compute_seconds",
        "Teacher forward time of the step's Score calls",
    ),
}


class _StatusCollector(Collector):
    """Builds the `trainer_*` families from one snapshot per scrape."""

    def __init__(self, status: TrainerStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        snap = self._status.snapshot()
        yield InfoMetricFamily(
            "trainer_run",
            "The run this trainer executes",
            value={"run_name": snap.run_name, "run_dir": snap.run_dir},
        )
        yield StateSetMetricFamily(
            "trainer_state",
            "Current phase of the trainer",
            value={s.value: s == snap.state for s in RunState},
        )
        yield GaugeMetricFamily("trainer_step", "Optimizer steps completed", value=snap.step)
        yield GaugeMetricFamily(
            "trainer_total_steps", "Planned optimizer steps", value=snap.total_steps
        )
        loss = GaugeMetricFamily("trainer_loss", "Loss per term at the last step", labels=["term"])
        for key, value in sorted(snap.metrics.items()):
            if key.startswith(LOSS_PREFIX):
                loss.add_metric([key.removeprefix(LOSS_PREFIX)], value)
        yield loss
        for key, (name, help_text) in GAUGE_METRICS.items():
            if key in snap.metrics:
                yield GaugeMetricFamily(name, help_text + " (last step)", value=snap.metrics[key])
        yield CounterMetricFamily(
            "trainer_skipped_steps", "Steps skipped for non-finite values", value=snap.skipped_steps
        )
        yield GaugeMetricFamily(
            "trainer_teacher_waiting",
            "1 while the trainer waits out a teacher outage (teacher.outage_s)",
            value=0 if snap.teacher is None else 1,
        )
        yield GaugeMetricFamily(
            "trainer_teacher_outage_seconds",
            "How long the current teacher outage has lasted (0 when none)",
            value=0.0 if snap.teacher is None else snap.teacher.waited_s,
        )
        yield CounterMetricFamily(
            "trainer_teacher_retries",
            "Teacher calls that failed transiently and were retried",
            value=snap.teacher_retries,
        )
        yield CounterMetricFamily(
            "trainer_teacher_outages", "Teacher outages waited out or given up on",
            value=snap.teacher_outages,
        )  # fmt: skip
        optional: dict[str, tuple[str, float | None]] = {
            "trainer_eval_accuracy": ("Task accuracy at the last evaluation", snap.eval_accuracy),
            "trainer_eval_step": ("Step of the last evaluation", snap.eval_step),
            "trainer_checkpoint_age_seconds": (
                "Time since the last checkpoint",
                snap.checkpoint_age_seconds,
            ),
            "trainer_eta_seconds": ("Estimated time to the last step", snap.eta_seconds),
        }
        for name, (help_text, reading) in optional.items():
            if reading is not None:
                yield GaugeMetricFamily(name, help_text, value=reading)


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: report them as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def status_json(snap: StatusSnapshot) -> dict[str, Any]:
    """The /v1/status body for a snapshot."""
    body = asdict(snap)
    body["state"] = snap.state.value
    body["metrics"] = {k: _finite_or_none(v) for k, v in snap.metrics.items()}
    for key in ("eval_step", "eval_accuracy", "checkpoint_step", "checkpoint_age_seconds"):
        del body[key]
    body["last_eval"] = (
        None
        if snap.eval_step is None
        else {"step": snap.eval_step, "accuracy": _finite_or_none(snap.eval_accuracy)}
    )
    body["last_checkpoint"] = (
        None
        if snap.checkpoint_step is None
        else {"step": snap.checkpoint_step, "age_seconds": snap.checkpoint_age_seconds}
    )
    return {k: _finite_or_none(v) for k, v in body.items()}


def build_app(status: TrainerStatus, registry: CollectorRegistry) -> FastAPI:
    """The FastAPI app behind the side port.

    Args:
        status: what /v1/status and /metrics report.
        registry: holds the trainer's collector (one registry per server).
    Returns:
        The app with /livez, /metrics and /v1/status.
    """
    app = FastAPI(title="tropd trainer status", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/status")
    async def v1_status() -> dict[str, Any]:
        return status_json(status.snapshot())

    return app


class StatusServer:
    """Serves `build_app` with uvicorn on a daemon thread.

    Args:
        status: the record the loop updates.
        host: interface to bind ("0.0.0.0" to be scraped from outside a pod).
        port: TCP port; 0 picks a free one (read it back from `.port` after `start`).
    """

    def __init__(self, status: TrainerStatus, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(status))
        self.app = build_app(status, self.registry)
        self._host, self._requested_port = host, port
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (known from `start` on, kept after `stop`)."""
        if self._port is None:
            raise RuntimeError("StatusServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:41234."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind the port and serve on a background thread; returns once requests are accepted.

        Raises:
            OSError: the port cannot be bound.
            RuntimeError: already started, or uvicorn did not come up within `timeout_s`.
        """
        if self._thread is not None:
            raise RuntimeError("StatusServer already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # Binding here (not in uvicorn) makes bind errors synchronous and the port known.
        self._sock = socket.create_server((self._host, self._requested_port), family=family)
        self._port = int(self._sock.getsockname()[1])
        # log_config=None: leave the process's logging set-up alone; uvicorn logs propagate.
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="trainer-status-http",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"status server on {self._host}:{self._requested_port} "
                    f"did not start within {timeout_s} s"
                )
            time.sleep(0.01)
        logger.info("trainer status on %s (/livez /metrics /v1/status)", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for its thread; safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("status server thread did not stop within %.0f s", timeout_s)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = None

    def __enter__(self) -> StatusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
