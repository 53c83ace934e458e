"""plots: PNGs drawn from a synthetic metrics.jsonl (written through RunLogger)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tropd.trainer.plots import plot_comparison, plot_run
from tropd.trainer.run_log import METRICS_FILE, RunLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(
    run_dir: Path, steps: int = 120, seed: int = 0, entropy: bool = True, spike: bool = False
) -> Path:
    rng = np.random.default_rng(seed)
    with RunLogger(run_dir, tensorboard=False) as log:
        for step in range(steps + 1):
            if step % 20 == 0:
                log.log(step, {"eval/accuracy": min(1.0, 0.2 + step / 200 + 0.05 * seed)})
            if step == 0:
                continue
            metrics = {
                "loss/total": 2.0 * math.exp(-step / 50) + 0.1 * rng.random(),
                "loss/opd": 1.5 * math.exp(-step / 40) + 0.1 * rng.random(),
                "loss/outlier_fkl": 0.5 + 0.05 * rng.standard_normal(),
                "train/trust_fraction": 0.7 + 0.2 * step / steps + 0.02 * rng.random(),
                "train/grad_norm": 1.0 + rng.random() + (500.0 if spike and step % 37 == 0 else 0),
                "perf/tokens_per_second": 1000.0,
            }
            if entropy:
                metrics["train/student_entropy"] = 1.2 - step / (2 * steps)
            log.log(step, metrics)
    return run_dir


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    height, width = imread(path).shape[:2]
    assert height > 200 and width > 300


def test_plot_run_writes_every_curve(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", spike=True)
    paths = plot_run(run)
    assert [p.name for p in paths] == [
        "eval_accuracy.png",
        "train_trust_fraction.png",
        "train_grad_norm.png",
        "train_student_entropy.png",
        "loss.png",
    ]
    for path in paths:
        assert path.parent == run / "plots"
        _assert_png(path)


def test_absent_curves_are_skipped(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", entropy=False)
    curves = ("train/student_entropy", "perf/tokens_per_second")
    names = [p.name for p in plot_run(run, curves=curves, loss_prefix=None)]
    assert names == ["perf_tokens_per_second.png"]


def test_nan_values_and_truncated_tail_are_tolerated(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLogger(run, tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"train/grad_norm": float("nan") if step == 3 else float(step)})
    with (run / METRICS_FILE).open("a") as f:
        f.write('{"step": 6, "train/grad')
    (path,) = plot_run(run, curves=("train/grad_norm",))
    _assert_png(path)


def test_empty_log_writes_nothing(tmp_path: Path) -> None:
    RunLogger(tmp_path, tensorboard=False).close()
    assert plot_run(tmp_path) == []


def test_plot_comparison(tmp_path: Path) -> None:
    opd = _write_run(tmp_path / "opd", seed=0, spike=True)
    tropd = _write_run(tmp_path / "tropd", seed=1, entropy=False)
    out = plot_comparison(
        {"OPD": opd, "TrOPD": tropd / METRICS_FILE},
        tmp_path / "cmp" / "a.png",
        metrics=("eval/accuracy", "train/grad_norm", "train/student_entropy", "not/logged"),
    )
    assert out == tmp_path / "cmp" / "a.png"
    _assert_png(out)


def test_plot_comparison_needs_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs runs and metrics"):
        plot_comparison({}, tmp_path / "x.png")
