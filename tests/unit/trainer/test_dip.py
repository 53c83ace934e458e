"""Dip statistics (drawdown, recovery, AUC) on hand-made eval series, the metrics the warning
names, and the warning itself against a real run log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tropd.trainer.dip import dip_of, moved_metrics, warn_if_dipped
from tropd.trainer.run_log import RunLogger


def test_dip_drawdown_recovery_and_auc() -> None:
    d = dip_of([(0, 0.5), (10, 0.2), (20, 0.4), (30, 0.55), (40, 0.6)])
    assert d.drawdown == pytest.approx(-0.3)
    assert (d.lowest, d.lowest_step) == (0.2, 10)
    assert d.recovery_steps == 20  # back to >= 0.5 at step 30, 20 steps after the low at 10
    # trapezoids: 10*(0.35 + 0.3 + 0.475 + 0.575) / 40
    assert d.auc == pytest.approx(10 * (0.35 + 0.3 + 0.475 + 0.575) / 40)
    assert d.final == 0.6 and d.start == 0.5


def test_dip_never_recovered_and_never_below() -> None:
    assert dip_of([(0, 0.5), (10, 0.1), (20, 0.3)]).recovery_steps is None
    up = dip_of([(0, 0.5), (10, 0.6), (20, 0.5)])
    assert up.drawdown == 0 and up.recovery_steps == 0
    assert dip_of([(0, 0.7)]).auc == 0.7


def test_dip_first_lowest_point_counts() -> None:
    d = dip_of([(0, 0.5), (10, 0.1), (20, 0.6), (30, 0.1), (40, 0.2)])
    assert d.lowest_step == 10 and d.recovery_steps == 10


def test_dip_rejects_bad_series() -> None:
    with pytest.raises(ValueError, match="at least one"):
        dip_of([])
    with pytest.raises(ValueError, match="in order"):
        dip_of([(10, 0.5), (0, 0.5)])


def test_moved_metrics_ranks_by_relative_change_and_skips_unchanged() -> None:
    first = {"train/trust_fraction": 0.8, "train/student_entropy": 0.5, "train/accuracy": 0.1}
    now = {"train/trust_fraction": 0.4, "train/student_entropy": 0.5, "train/accuracy": 0.3}
    assert moved_metrics(first, now) == [
        ("train/accuracy", 0.1, 0.3),
        ("train/trust_fraction", 0.8, 0.4),
    ]


def test_warning_names_what_moved(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = RunLogger(tmp_path, tensorboard=False)
    log.log(0, {"eval/accuracy": 0.6})
    log.log(1, {"train/trust_fraction": 0.85, "train/response_tokens": 300.0})
    log.log(2, {"train/trust_fraction": 0.30, "train/response_tokens": 310.0})
    log.close()
    with caplog.at_level(logging.WARNING, logger="tropd.trainer.dip"):
        assert not warn_if_dipped(2, 0.55, 0.6, 10.0, log.path)  # 5 points: under the threshold
        assert not warn_if_dipped(2, 0.1, None, 10.0, log.path)  # start unknown
        assert warn_if_dipped(2, 0.3, 0.6, 10.0, log.path)
    (record,) = caplog.records
    assert "30.0 points below the start 0.600" in record.message
    assert "train/trust_fraction 0.85 -> 0.3" in record.message
    assert record.message.index("trust_fraction") < record.message.index("response_tokens")
    assert "train.keep_best" in record.message and "loss.anchor_kl=1.0" in record.message
