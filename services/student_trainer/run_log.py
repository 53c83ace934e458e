"""Per-step metrics of a run: `<run_dir>/metrics.jsonl` (one JSON object per line) and TensorBoard.

Each line is `{"step": int, "wall_time": unix seconds, <metric>: value, ...}`, flushed as it is
written so `tail -f` works. Metric names are the loop's keys ("loss/total", "eval/accuracy", ...);
non-finite floats are written as Python's json writes them (NaN, Infinity). Events for
TensorBoard go to `<run_dir>/tensorboard/` under the same names.

Resuming from step k keeps the lines with step <= k and drops the rest (they belong to the
steps about to be redone), and tells TensorBoard to hide its events after k the same way.
Knows nothing about what the metrics mean.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = frozenset({"step", "wall_time"})

Value = bool | int | float | str | None


class RunLogger:
    """Appends step metrics to metrics.jsonl and, optionally, TensorBoard.

    Args:
        run_dir: the run folder (created if missing).
        tensorboard: also write TensorBoard events.
        resume_step: the checkpoint step being resumed from; lines after it are dropped.
            None or 0 starts a fresh log (an existing one is replaced, with a warning).
    """

    def __init__(
        self, run_dir: Path | str, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        resume_step = resume_step or 0
        self._rewind(resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy import: only when used

            # purge_step: TensorBoard hides older events at steps >= this one (0: all of them).
            self._writer = SummaryWriter(
                log_dir=str(run_dir / TENSORBOARD_DIR),
                purge_step=resume_step + 1 if resume_step else 0,
                flush_secs=10,
            )

    def log(self, step: int, metrics: Mapping[str, Any], wall_time: float | None = None) -> None:
        """Write one line for `step` (and the numeric values to TensorBoard).

        Args:
            step: the optimizer step these metrics describe.
            metrics: name -> bool, int, float, str or None; numpy scalars and one-element
                tensors are unwrapped with `.item()`.
            wall_time: unix seconds; now by default.
        Raises:
            ValueError: a metric named "step" or "wall_time".
            TypeError: a value of another type (the message names the key).
        """
        clash = _RESERVED & metrics.keys()
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved in {METRICS_FILE}")
        row = {k: _plain(k, v) for k, v in metrics.items()}
        wall_time = time.time() if wall_time is None else wall_time
        self._file.write(json.dumps({"step": step, "wall_time": wall_time, **row}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(key, value, global_step=step, walltime=wall_time)

    def close(self) -> None:
        """Flush and close both outputs; safe to call twice."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rewind(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        if not resume_step:
            if self.path.stat().st_size:
                logger.warning("%s: fresh run, replacing the earlier log", self.path)
            self.path.write_text("")
            return
        rows = read_metrics(self.path)
        kept = [r for r in rows if r["step"] <= resume_step]
        if len(kept) < len(rows):
            logger.warning(
                "%s: dropping %d lines after step %d (they are redone from there)",
                self.path,
                len(rows) - len(kept),
                resume_step,
            )
        # Rewrite even when nothing was dropped: it removes a line cut short by a crash, which
        # the next append would otherwise run into.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class NoLog:
    """A RunLogger that writes nothing: ranks other than 0 across processes."""

    def log(self, step: int, metrics: Mapping[str, Any], wall_time: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """Parse a metrics.jsonl; a last line cut short (a crash mid-write) is dropped with a warning.

    Args:
        path: the metrics.jsonl file.
    Returns:
        One dict per line, in file order.
    Raises:
        ValueError: a malformed line that is not the last one, or a line without an int "step".
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                logger.warning("%s: ignoring truncated last line %d", path, number)
                break
            raise ValueError(f"{path}:{number}: not JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{number}: expected an object with an int 'step'")
        rows.append(row)
    return rows


def _plain(key: str, value: Any) -> Value:
    """A JSON-ready scalar: unwrap numpy/torch scalars, reject anything else."""
    if hasattr(value, "item") and not isinstance(value, bool | int | float | str):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"metric {key!r} has type {type(value).__name__}; expected a number or str")


def quiet_progress_bars() -> None:
    """Silence the libraries' own progress bars (transformers loading and saving weights,
    `datasets` preparing splits, hub downloads): `train.progress=false` means no bars at all."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when datasets is imported
    for module in ("huggingface_hub.utils", "datasets.utils"):
        if module in sys.modules:  # already imported: the variables came too late
            sys.modules[module].disable_progress_bars()


class Progress:
    """The run's progress bar (tqdm on stderr), showing the step's accuracy, trust, grad norm
    and throughput; prints nothing when disabled (`train.progress=false`)."""

    def __init__(self, name: str, total_steps: int, start_step: int, enabled: bool) -> None:
        self._bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step",
                         disable=not enabled, dynamic_ncols=True)  # fmt: skip

    def advance(self, metrics: Mapping[str, float]) -> None:
        shown = {
            "acc": metrics.get("train/accuracy"),
            "trust": metrics.get("train/trust_fraction"),
            "gnorm": metrics.get("train/grad_norm"),
            "tok/s": metrics.get("perf/tokens_per_s"),
        }
        self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None},
                              refresh=False)  # fmt: skip
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
