"""How a run stops or waits: stop signals, teacher outages and refusals, and the RNG snapshot
that makes a step interrupted by the teacher replayable on resume.

The loop (`loop.py`) uses these around its steps; they know nothing of models or losses.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tropd.teacher.client import Outage, TeacherClientError, TeacherRpcError
from tropd.trainer.checkpoint import rng_state, set_rng_state
from tropd.trainer.config import RunConfig
from tropd.trainer.errors import TeacherRefused, TrainingAborted
from tropd.trainer.run_status import TeacherWait, TrainerStatus
from tropd.trainer.sampler import PromptSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RngAtStep:
    """Every RNG a step draws from, as it was before the step (the weights and the optimizer
    only change at the step's end)."""

    global_rngs: dict[str, Any]
    data: Mapping[str, Any]

    @classmethod
    def take(cls, sampler: PromptSampler) -> RngAtStep:
        return cls(rng_state(), sampler.state())

    def restore(self, sampler: PromptSampler) -> None:
        set_rng_state(self.global_rngs)
        sampler.restore(dict(self.data))


def teacher_failure(cfg: RunConfig, exc: TeacherClientError, step: int) -> Exception:
    """Why the run stops: an outage that outlasted teacher.outage_s (exit 1), or the teacher's
    final answer to a request (exit 2), with the teacher's own message."""
    where = f"checkpoint written at step {step}; rerun the same command to resume"
    target = cfg.teacher.target
    if isinstance(exc, TeacherRpcError) and exc.transient:
        return TrainingAborted(
            f"teacher at {target} still {exc.code.name} after {exc.waited_s:.0f} s "
            f"(teacher.outage_s = {cfg.teacher.outage_s:g}, {exc.attempts} attempts of "
            f"{exc.method}): {exc.details}; {where}"
        )
    if isinstance(exc, TeacherRpcError):
        return TeacherRefused(
            f"the teacher at {target} refused {exc.method} with {exc.code.name}: {exc.details}"
            f" (not retried: the same request gets the same answer); {where} once it is fixed"
        )
    return TeacherRefused(f"teacher at {target}: {exc}; {where} once it is fixed")


class OutageLog:
    """Tells the log and the status server that a teacher call is waiting out an outage.

    One WARNING when the wait begins and then at most one per `every_s`, one INFO on recovery.
    """

    def __init__(self, status: TrainerStatus, every_s: float = 30.0) -> None:
        self._status, self._every_s = status, every_s
        self._logged_at: float | None = None

    def __call__(self, event: Outage) -> None:
        if event.recovered:
            self._status.teacher_back()
            log.info("teacher back after %.1f s (%d attempts of %s)", event.waited_s,
                     event.attempts, event.method)  # fmt: skip
            self._logged_at = None
            return
        self._status.teacher_waiting(
            TeacherWait(event.method, event.code.name, event.details, event.attempts,
                        event.waited_s, event.limit_s)  # fmt: skip
        )
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self._every_s:
            self._logged_at = now
            log.warning(
                "waiting for the teacher: %s %s for %.0f s (%d attempts; giving up after "
                "teacher.outage_s = %.0f s): %s", event.method, event.code.name, event.waited_s,
                event.attempts, event.limit_s, event.details,
            )  # fmt: skip


class StopFlag:
    """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Only the main thread may install handlers (tests may run the loop elsewhere).
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        log.warning(
            "received %s: finishing this step, then checkpointing", signal.Signals(signum).name
        )
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
