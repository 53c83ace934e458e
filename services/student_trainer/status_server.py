"""The trainer's HTTP side port: /livez, Prometheus /metrics and a JSON /v1/status.

The training thread writes into a `TrainerStatus` (cheap, lock-protected); a uvicorn server on
a background thread reads snapshots of it. Nothing here touches the model or the loop, and a
slow scrape never blocks a training step for longer than a dict copy.

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
import numbers
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
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

logger = logging.getLogger(__name__)

LOSS_PREFIX = "loss/"
SKIPPED_KEY = "train/skipped"
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


class RunState(StrEnum):
    STARTING = "starting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    CHECKPOINTING = "checkpointing"
    WAITING = "waiting_for_teacher"  # riding out a teacher outage (teacher.outage_s)
    DONE = "done"
    STOPPED = "stopped"  # stopped early on a signal; resumable
    FAILED = "failed"


@dataclass(frozen=True)
class StatusSnapshot:
    """A consistent copy of the trainer's status at one instant."""

    run_name: str
    run_dir: str
    state: RunState
    detail: str | None
    step: int
    total_steps: int
    eta_seconds: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    eval_step: int | None = None
    eval_accuracy: float | None = None
    checkpoint_step: int | None = None
    checkpoint_age_seconds: float | None = None
    skipped_steps: int = 0
    teacher: TeacherWait | None = None  # set while waiting for the teacher
    teacher_retries: int = 0  # attempts that failed transiently, since start
    teacher_outages: int = 0  # waits begun, since start


@dataclass(frozen=True)
class TeacherWait:
    """An outage being waited out: what the last attempt said and how long it has lasted."""

    method: str
    code: str
    details: str
    attempts: int
    waited_s: float
    limit_s: float


class TrainerStatus:
    """Thread-safe progress record that the training loop updates and the server reads.

    Args:
        run_name: shown in /v1/status and `trainer_run_info`.
        run_dir: the run folder, shown in /v1/status.
        total_steps: the planned number of optimizer steps (for the ETA).
        clock: seconds, monotonic; injectable for tests.
    """

    def __init__(
        self,
        run_name: str,
        run_dir: str,
        total_steps: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._run_name, self._run_dir, self._total_steps = run_name, str(run_dir), total_steps
        self._state: RunState = RunState.STARTING
        self._detail: str | None = None
        self._step = 0
        self._metrics: dict[str, float] = {}
        self._skipped = 0
        self._eval: tuple[int, float] | None = None
        self._checkpoint: tuple[int, float] | None = None
        # ETA reference: the first step seen by this process, so a resumed run is not credited
        # with the steps it loaded.
        self._first: tuple[int, float] | None = None
        self._last_time = 0.0
        self._wait: tuple[TeacherWait, float] | None = None  # and the clock when it was seen
        self._resume_state: RunState | None = None
        self._retries = 0
        self._outages = 0

    def teacher_waiting(self, wait: TeacherWait) -> None:
        """Record a failed attempt of an outage being waited out; the state says so."""
        now = self._clock()
        with self._lock:
            if self._wait is None:
                self._outages += 1
                self._resume_state = self._state
            self._retries += 1
            self._wait = (wait, now)
            self._state = RunState.WAITING
            self._detail = (
                f"teacher {wait.code} for {wait.waited_s:.0f} s ({wait.attempts} attempts, "
                f"gives up after {wait.limit_s:.0f} s): {wait.details}"
            )

    def teacher_back(self) -> None:
        """The teacher answered again: back to the state before the wait."""
        with self._lock:
            if self._wait is None:
                return
            self._wait = None
            if self._state == RunState.WAITING:
                self._state, self._detail = self._resume_state or RunState.TRAINING, None

    def update_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record a finished optimizer step and its metrics (non-numeric values are ignored)."""
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}
        now = self._clock()
        with self._lock:
            self._step, self._metrics, self._last_time = step, numeric, now
            if self._first is None:
                self._first = (step, now)
            if numeric.get(SKIPPED_KEY):
                self._skipped += 1

    def update_eval(self, step: int, accuracy: float) -> None:
        """Record the task accuracy measured at `step`."""
        with self._lock:
            self._eval = (step, float(accuracy))

    def set_state(self, state: RunState | str, detail: str | None = None) -> None:
        """Set the run state; `detail` is a short human note (e.g. why it failed).

        Raises:
            ValueError: an unknown state; the message lists the known ones.
        """
        try:
            parsed = RunState(state)
        except ValueError:
            known = ", ".join(s.value for s in RunState)
            raise ValueError(f"unknown trainer state {state!r}; known: {known}") from None
        with self._lock:
            self._state, self._detail = parsed, detail
            if parsed != RunState.WAITING:
                self._wait = None

    def mark_checkpoint(self, step: int) -> None:
        """Record that a checkpoint of `step` was just written (or resumed from)."""
        now = self._clock()
        with self._lock:
            self._checkpoint = (step, now)

    def snapshot(self) -> StatusSnapshot:
        """A consistent copy of everything above, with ETA and checkpoint age computed now."""
        now = self._clock()
        with self._lock:
            eta = None
            if self._first is not None and self._step > self._first[0]:
                first_step, first_time = self._first
                seconds_per_step = (self._last_time - first_time) / (self._step - first_step)
                eta = max(self._total_steps - self._step, 0) * seconds_per_step
            return StatusSnapshot(
                run_name=self._run_name,
                run_dir=self._run_dir,
                state=self._state,
                detail=self._detail,
                step=self._step,
                total_steps=self._total_steps,
                eta_seconds=eta,
                metrics=dict(self._metrics),
                eval_step=self._eval[0] if self._eval else None,
                eval_accuracy=self._eval[1] if self._eval else None,
                checkpoint_step=self._checkpoint[0] if self._checkpoint else None,
                checkpoint_age_seconds=now - self._checkpoint[1] if self._checkpoint else None,
                skipped_steps=self._skipped,
                teacher=self._current_wait(now),
                teacher_retries=self._retries,
                teacher_outages=self._outages,
            )

    def _current_wait(self, now: float) -> TeacherWait | None:
        """The outage being waited out, its duration brought up to `now` (lock held)."""
        if self._wait is None:
            return None
        wait, seen = self._wait
        return TeacherWait(
            wait.method, wait.code, wait.details, wait.attempts, wait.waited_s + now - seen,
            wait.limit_s,
        )  # fmt: skip


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
