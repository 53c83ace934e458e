"""run_log: metrics.jsonl lines, resume consistency, truncated tails, TensorBoard events."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer import event_file_writer

from tropd.trainer.run_log import METRICS_FILE, RunLogger, read_metrics


def _log_steps(
    run_dir: Path,
    steps: range,
    resume_step: int | None = None,
    offset: float = 0.0,
    tensorboard: bool = False,
) -> None:
    with RunLogger(run_dir, tensorboard=tensorboard, resume_step=resume_step) as log:
        for step in steps:
            log.log(step, {"loss/total": step + offset}, wall_time=1000.0 + step)


def test_lines_are_written_and_flushed(tmp_path: Path) -> None:
    log = RunLogger(tmp_path, tensorboard=False)
    log.log(
        1,
        {
            "loss/total": 0.5,
            "train/trust_fraction": np.float32(0.75),
            "train/tokens": np.int64(12),
            "train/grad_norm": torch.tensor(2.0),
            "train/skipped": False,
            "outlier": "topk_fkl",
            "eval/accuracy": None,
        },
        wall_time=1234.5,
    )
    # Readable before close: each line is flushed as written.
    rows = read_metrics(tmp_path / METRICS_FILE)
    assert rows == [
        {
            "step": 1,
            "wall_time": 1234.5,
            "loss/total": 0.5,
            "train/trust_fraction": 0.75,
            "train/tokens": 12,
            "train/grad_norm": 2.0,
            "train/skipped": False,
            "outlier": "topk_fkl",
            "eval/accuracy": None,
        }
    ]
    log.log(2, {"loss/total": float("nan")})
    log.close()
    log.close()
    last = read_metrics(tmp_path / METRICS_FILE)[-1]
    assert last["step"] == 2 and math.isnan(last["loss/total"]) and last["wall_time"] > 0


def test_bad_metrics_are_rejected(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=False) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.log(1, {"step": 3})
        with pytest.raises(TypeError, match="'loss/total' has type list"):
            log.log(1, {"loss/total": [1.0]})
    assert (tmp_path / METRICS_FILE).read_text() == ""


def test_truncated_last_line_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    with caplog.at_level(logging.WARNING, logger="tropd.trainer.run_log"):
        rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]
    assert "truncated last line 3" in caplog.text


def test_corrupt_middle_line_raises(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"loss": 2}\n')
    with pytest.raises(ValueError, match=r":2: expected an object with an int 'step'"):
        read_metrics(path)


def test_resume_drops_later_steps_and_appends(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(0, 7))
    with (tmp_path / METRICS_FILE).open("a") as f:
        f.write('{"step": 7, "loss/to')  # the crash hit mid-line
    _log_steps(tmp_path, range(5, 9), resume_step=4, offset=100.0)

    rows = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in rows] == list(range(9))
    assert [r["loss/total"] for r in rows] == [0, 1, 2, 3, 4, 105, 106, 107, 108]


def test_fresh_run_replaces_the_old_log(tmp_path: Path) -> None:
    _log_steps(tmp_path, range(0, 3))
    _log_steps(tmp_path, range(0, 2), resume_step=0, offset=10.0)
    assert [r["loss/total"] for r in read_metrics(tmp_path / METRICS_FILE)] == [10, 11]
    _log_steps(tmp_path, range(0, 1), resume_step=None, offset=20.0)
    assert [r["loss/total"] for r in read_metrics(tmp_path / METRICS_FILE)] == [20]


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {event.step: event.value for event in acc.Scalars(tag)}


def test_tensorboard_events_follow_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Event files are read in name order, and two written in one second by one process differ
    # only by a counter compared as text ("9" > "10"): restart it so this test's files sort.
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(0))
    _log_steps(tmp_path, range(0, 7), tensorboard=True)
    assert _scalars(tmp_path, "loss/total") == {s: float(s) for s in range(7)}
    _log_steps(tmp_path, range(5, 8), resume_step=4, offset=100.0, tensorboard=True)
    # Steps 5 and 6 of the first attempt are purged in favour of the resumed values.
    assert _scalars(tmp_path, "loss/total") == {
        0: 0,
        1: 1,
        2: 2,
        3: 3,
        4: 4,
        5: 105,
        6: 106,
        7: 107,
    }


def test_string_metrics_stay_out_of_tensorboard(tmp_path: Path) -> None:
    with RunLogger(tmp_path, tensorboard=True) as log:
        log.log(1, {"outlier": "mask", "loss/total": 1.0})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["loss/total"]
    assert json.loads((tmp_path / METRICS_FILE).read_text())["outlier"] == "mask"
