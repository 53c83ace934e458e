"""What the training loop reports about its run, for the status port to read: the run state,
the last step's metrics, the last eval and checkpoint, and a teacher outage being waited out.

The loop writes into a `TrainerStatus` (cheap, lock-protected) and any thread reads consistent
`StatusSnapshot`s of it; `status_server.py` serves them as /metrics and /v1/status. Nothing here
touches the model or does I/O.
"""

from __future__ import annotations

import numbers
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SKIPPED_KEY = "train/skipped"  # 1.0 in a step's metrics when the step was dropped (non-finite)


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
