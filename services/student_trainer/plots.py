"""Training curves as PNGs, drawn from metrics.jsonl with matplotlib's Agg canvas.

`plot_run` draws one run's main curves into `<run_dir>/plots/`; `plot_comparison` draws several
runs on shared axes (e.g. OPD vs TrOPD). Metric names are metrics.jsonl keys; a curve whose key
never appears is skipped. Uses `Figure` + `FigureCanvasAgg` directly (no pyplot), so it needs no
display, keeps no global figure state and is safe to call from any thread.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tropd.trainer.run_log import METRICS_FILE, read_metrics

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
DEFAULT_CURVES: tuple[str, ...] = (
    "eval/accuracy",
    "train/trust_fraction",
    "train/grad_norm",
    "train/student_entropy",
)
LOSS_PREFIX = "loss/"
DEFAULT_COMPARISON: tuple[str, ...] = ("eval/accuracy", "train/grad_norm")
_DPI = 110
# A noisy per-step series is drawn faintly under an EMA spanning ~1/20 of its length once it has
# this many points; fewer points (e.g. evaluations) are drawn as markers instead.
_SMOOTH_FROM = 30


def plot_run(
    run_dir: Path | str,
    curves: Sequence[str] = DEFAULT_CURVES,
    loss_prefix: str | None = LOSS_PREFIX,
) -> list[Path]:
    """Draw a run's curves from `<run_dir>/metrics.jsonl` into `<run_dir>/plots/`.

    Args:
        run_dir: the run folder.
        curves: metric keys, one PNG each (`eval/accuracy` -> `eval_accuracy.png`).
        loss_prefix: every key with this prefix goes into `loss.png`, one panel per term
            (None skips it).
    Returns:
        The PNGs written, in the order above; curves absent from the log are skipped.
    """
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / METRICS_FILE)
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key in curves:
        steps, values = _series(rows, key)
        if not steps:
            logger.info("no %r in %s: skipping its plot", key, run_dir)
            continue
        fig = _figure(1)
        ax = fig.add_subplot()
        _draw(ax, steps, values, key)
        _decorate(ax, key, values)
        written.append(_save(fig, out_dir / f"{_slug(key)}.png"))
    if loss_prefix is not None:
        # The total first, then the terms it sums, alphabetically.
        keys = sorted(
            {k for row in rows for k in row if k.startswith(loss_prefix)},
            key=lambda k: (k != f"{loss_prefix}total", k),
        )
        if keys:
            written.append(_plot_losses(rows, keys, out_dir / "loss.png"))
    return written


def plot_comparison(
    runs: Mapping[str, Path | str],
    out_path: Path | str,
    metrics: Sequence[str] = DEFAULT_COMPARISON,
) -> Path:
    """Draw several runs on shared axes, one panel per metric, side by side.

    Args:
        runs: legend label -> run folder (or its metrics.jsonl).
        out_path: the PNG to write (its folder is created).
        metrics: metric keys, one panel each.
    Returns:
        `out_path`.
    Raises:
        ValueError: no runs or no metrics.
    """
    if not runs or not metrics:
        raise ValueError(
            f"plot_comparison needs runs and metrics, got {list(runs)} and {list(metrics)}"
        )
    logs = {label: read_metrics(_metrics_path(Path(path))) for label, path in runs.items()}
    fig = _figure(len(metrics))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, key in zip(axes, metrics, strict=True):
        all_values: list[float] = []
        for color, (label, rows) in enumerate(logs.items()):
            steps, values = _series(rows, key)
            if not steps:
                logger.info("run %r has no %r", label, key)
                continue
            _draw(ax, steps, values, label, color=f"C{color}")
            all_values += values
        if not all_values:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        _decorate(ax, key, all_values)
        if all_values:
            ax.legend(fontsize="small")
    return _save(fig, Path(out_path))


def _plot_losses(rows: list[dict[str, Any]], keys: list[str], path: Path) -> Path:
    cols = min(len(keys), 3)
    fig = _figure(cols, rows=math.ceil(len(keys) / cols))
    axes = fig.subplots(math.ceil(len(keys) / cols), cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        steps, values = _series(rows, key)
        _draw(ax, steps, values, key)
        _decorate(ax, key, values)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    return _save(fig, path)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` over the rows that carry a number for it (NaN kept)."""
    pairs = [
        (row["step"], float(row[key]))
        for row in rows
        if isinstance(row.get(key), numbers.Real) and not isinstance(row.get(key), bool)
    ]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _draw(ax: Axes, steps: list[int], values: list[float], label: str, color: str = "C0") -> None:
    if len(steps) < _SMOOTH_FROM:
        ax.plot(steps, values, marker="o", markersize=3, color=color, label=label)
        return
    ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
    ax.plot(steps, _smooth(values, max(2, len(values) // 20)), color=color, label=label)


def _smooth(values: list[float], span: int) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard draws it), NaNs skipped."""
    alpha = 2.0 / (span + 1)
    average = weight = 0.0
    out = []
    for value in values:
        if math.isfinite(value):
            average = (1 - alpha) * average + alpha * value
            weight = (1 - alpha) * weight + alpha
        out.append(average / weight if weight else math.nan)
    return out


def _decorate(ax: Axes, key: str, values: list[float]) -> None:
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    finite = [v for v in values if math.isfinite(v)]
    if key.endswith(("accuracy", "fraction")) and finite and 0 <= min(finite) <= max(finite) <= 1:
        ax.set_ylim(-0.02, 1.02)
    elif finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")  # gradient-norm spikes would flatten everything else


def _figure(cols: int, rows: int = 1) -> Figure:
    fig = Figure(figsize=(4.5 * cols + 1, 3.2 * rows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    logger.debug("wrote %s", path)
    return path


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


def _metrics_path(path: Path) -> Path:
    return path / METRICS_FILE if path.is_dir() else path
