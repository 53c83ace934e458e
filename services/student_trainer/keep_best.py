"""The safety net of a run: keep the best-eval student, and stop after evals that bring nothing.

`train.keep_best: true` keeps `<run_dir>/best/`: the student in HF format (`from_pretrained`,
`tropd-train eval --model`, `tropd-train export-best`) as of the eval with the highest
accuracy so far, the start (step 0) included, so a run that only ever made the student worse
still hands back the student it started from. `best/best.json` says which step and accuracy
it holds. `train.early_stop_evals: N` ends the run after N evals in a row without a new best.

Written atomically: the new copy goes to a temp folder beside `best/`, then replaces it with
two renames, so a crash leaves either the old best or the new one (and at worst a stale temp
folder, removed by the next save). A resumed run keeps the record it finds; the evals it
counts for early stopping come from the run log as rewound to the resume step.

Boundary: a model and a tokenizer with `save_pretrained`, step and accuracy numbers in; knows
nothing about training. The checkpoints that resume a run are `checkpoint.py`'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BEST_DIR = "best"
RECORD = "best.json"


@dataclass(frozen=True)
class BestRecord:
    step: int
    accuracy: float


def read_best(run_dir: Path | str) -> BestRecord | None:
    """The record of `<run_dir>/best/`, or None when the run kept none."""
    path = Path(run_dir) / BEST_DIR / RECORD
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return BestRecord(int(raw["step"]), float(raw["accuracy"]))


class BestKeeper:
    """Tracks evals: saves a new best (when keeping), says when to stop early.

    Args:
        run_dir: the run folder.
        keep: save the best student under `run_dir/best/`.
        early_stop_evals: stop after this many evals in a row without a new best (None: never).
        history: `(step, accuracy)` evals already done by this run (a resumed run's log), in
            step order; they count for early stopping, and set the best when no record exists.
    """

    def __init__(
        self,
        run_dir: Path | str,
        keep: bool,
        early_stop_evals: int | None,
        history: Sequence[tuple[int, float]] = (),
    ) -> None:
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.early_stop_evals = early_stop_evals
        self.best = read_best(self.run_dir) if keep else None
        self.since_best = 0
        for step, accuracy in history:
            self._count(step, accuracy)

    def _count(self, step: int, accuracy: float) -> bool:
        """Record one eval; True when it is a new best (strictly higher, the first wins ties)."""
        if self.best is None or accuracy > self.best.accuracy:
            self.best = BestRecord(step, accuracy)
            self.since_best = 0
            return True
        if step > self.best.step:  # an eval replayed after a resume does not count twice
            self.since_best += 1
        return False

    def observe(
        self,
        step: int,
        accuracy: float,
        model: Any,
        tokenizer: Any,
        weights: Callable[[], dict[str, Any]] | None = None,
        save: bool = True,
    ) -> bool:
        """Record the eval of `step`; save the student if it is the best so far (when keeping).

        Across processes every rank calls this with the same eval (so early stopping agrees):
        `weights` gathers the full weights (a collective, called on every rank for a new best),
        and only the rank with `save` writes them.

        Returns:
            Whether it is a new best.
        """
        new_best = self._count(step, accuracy)
        if new_best and self.keep:
            state_dict = weights() if weights is not None else None
            if save:
                save_best(self.run_dir, step, accuracy, model, tokenizer, state_dict)
        return new_best

    @property
    def should_stop(self) -> bool:
        """Early stopping is on and the last `early_stop_evals` evals brought no new best."""
        return self.early_stop_evals is not None and self.since_best >= self.early_stop_evals


def save_best(
    run_dir: Path,
    step: int,
    accuracy: float,
    model: Any,
    tokenizer: Any,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write the student (or `state_dict` under its class) to `run_dir/best/` atomically
    (temp folder, then renames)."""
    final = run_dir / BEST_DIR
    tmp = run_dir / f".tmp-{BEST_DIR}-{os.getpid()}"
    old = run_dir / f".old-{BEST_DIR}-{os.getpid()}"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({"step": step, "accuracy": accuracy}))
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    log.info("kept the best student so far (step %d, accuracy %.3f) in %s", step, accuracy, final)
    return final


def export_best(run_dir: Path | str, out: Path | str) -> BestRecord:
    """Copy `run_dir/best/` to `out` (a new folder).

    Raises:
        FileNotFoundError: the run kept no best student (train.keep_best was off).
        FileExistsError: `out` exists.
    """
    record = read_best(run_dir)
    if record is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / BEST_DIR} holds no kept student; run with train.keep_best=true"
        )
    shutil.copytree(Path(run_dir) / BEST_DIR, Path(out))
    return record
