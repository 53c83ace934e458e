"""The dip of a run: how far eval accuracy fell below the start, how long it took to come back,
and the area under the accuracy curve; and the trainer's warning when a run falls well below
its start, naming the training metrics that moved most since the first step.

Boundary: numbers in, numbers (and one log line) out. Reads `(step, accuracy)` series and the
run log's metrics ("train/trust_fraction", ...); knows nothing about models or losses.
Definitions are the pre-registered ones of docs/results.md ("Beat the dip").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tropd.trainer.run_log import read_metrics

log = logging.getLogger(__name__)

# Training metrics the warning compares with their first-step values, when the run logs them:
# what a format switch, a collapsing trust region or a run-away length looks like in the log.
WATCHED = (
    "train/trust_fraction",
    "train/student_entropy",
    "train/reverse_kl",
    "train/accuracy",
    "train/response_tokens",
    "train/outlier_weight",
    "train/grad_norm",
)


@dataclass(frozen=True)
class Dip:
    """Dip statistics of one eval series (accuracies as fractions, steps as optimizer steps)."""

    start: float  # accuracy at the first eval (step 0)
    final: float  # accuracy at the last eval
    lowest: float  # the lowest accuracy over all evals (the start included)
    lowest_step: int
    recovery_steps: int | None  # steps from the lowest point to the first eval >= start after
    # it; 0 when the run never went below its start; None: never recovered
    auc: float  # trapezoid area under accuracy-vs-step over the steps covered (a mean accuracy)

    @property
    def drawdown(self) -> float:
        """`lowest - start`: <= 0, 0 when the run never fell below its start."""
        return self.lowest - self.start


def dip_of(series: Sequence[tuple[float, float]]) -> Dip:
    """Dip statistics of an eval series.

    Args:
        series: `(step, accuracy)` pairs in step order; the first is the start (step 0).
    Returns:
        The Dip; a one-point series has no dip and an AUC equal to its accuracy.
    Raises:
        ValueError: an empty series or steps out of order.
    """
    if not series:
        raise ValueError("dip_of needs at least one (step, accuracy) point")
    steps = [float(s) for s, _ in series]
    accs = [float(a) for _, a in series]
    if any(b < a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"eval steps must be in order, got {steps}")
    start = accs[0]
    low_i = min(range(len(accs)), key=lambda i: (accs[i], i))  # first lowest point
    recovery: int | None = 0
    if accs[low_i] < start:
        back = [i for i in range(low_i + 1, len(accs)) if accs[i] >= start]
        recovery = int(steps[back[0]] - steps[low_i]) if back else None
    span = steps[-1] - steps[0]
    if span > 0:
        area = sum((b - a) * (x + y) / 2 for a, b, x, y in
                   zip(steps, steps[1:], accs, accs[1:], strict=False))  # fmt: skip
        auc = area / span
    else:
        auc = accs[0]
    return Dip(start, accs[-1], accs[low_i], int(steps[low_i]), recovery, auc)


def moved_metrics(
    first: Mapping[str, float], now: Mapping[str, float], top: int = 3
) -> list[tuple[str, float, float]]:
    """The watched metrics that moved most since the first step, by relative change.

    Args:
        first, now: metric name -> value (the run log's keys); unknown or non-finite values are
            skipped.
        top: how many to return.
    Returns:
        `(name, first value, value now)`, largest relative change first.
    """
    moved = []
    for name in WATCHED:
        a, b = first.get(name), now.get(name)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        if b != a:
            moved.append((abs(b - a) / max(abs(a), 1e-6), name, a, b))
    moved.sort(key=lambda m: -m[0])
    return [(name, a, b) for _, name, a, b in moved[:top]]


def warn_if_dipped(
    step: int, accuracy: float, start: float | None, threshold_points: float, run_log: Path
) -> bool:
    """Log a warning when `accuracy` is more than `threshold_points` points below `start`.

    Args:
        step, accuracy: the eval just done.
        start: the step-0 accuracy (None when unknown: no warning).
        threshold_points: how far below the start warns, in accuracy points (10 = 0.10).
        run_log: the run's metrics.jsonl, read (only when warning) for the metrics that moved.
    Returns:
        Whether it warned.
    """
    if start is None or accuracy >= start - threshold_points / 100:
        return False
    moved = moved_metrics(*first_and_latest(read_metrics(run_log)))
    what = ", ".join(f"{name} {a:.3g} -> {b:.3g}" for name, a, b in moved) or "nothing logged yet"
    log.warning(
        "step %d: eval accuracy %.3f is %.1f points below the start %.3f (train.dip_warn_points "
        "%g); moved most since the first step: %s. A dip while the student switches to the "
        "teacher's format is common early on; train.keep_best keeps the best student, and "
        "loss.anchor_kl=1.0 holds a student that keeps falling near its start",
        step, accuracy, 100 * (start - accuracy), start, threshold_points, what,
    )  # fmt: skip
    return True


def first_and_latest(
    rows: Sequence[Mapping[str, object]],
) -> tuple[dict[str, float], dict[str, float]]:
    """The watched training metrics of the first and of the latest step that logged them.

    Args:
        rows: the run log's lines (`run_log.read_metrics`), in step order.
    """
    trained = [r for r in rows if any(k in r for k in WATCHED)]
    if not trained:
        return {}, {}

    def pick(row: Mapping[str, object]) -> dict[str, float]:
        return {k: float(v) for k, v in row.items() if k in WATCHED and isinstance(v, int | float)}

    return pick(trained[0]), pick(trained[-1])
