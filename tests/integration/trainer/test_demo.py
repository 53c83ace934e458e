"""The README's main job, shortened: `tropd-train demo` starts its teacher, trains OPD and TrOPD
side by side, prints the table and one JSON line, and keeps TrOPD's best student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tropd.trainer.keep_best import read_best

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def test_a_short_demo_trains_both_jobs_and_keeps_the_best(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tropd.trainer.cli", "demo", "--steps", "2", "--out", str(out),
         "task.eval_size=16", "rollout.prompts_per_step=4", "train.eval_every=1",
         "train.status_port=null", "train.tensorboard=false"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["teacher_accuracy"] == 1.0
    assert "after TrOPD" in proc.stdout and "best TrOPD student kept" in proc.stdout
    best = read_best(out / "tropd")
    assert best is not None and best.accuracy == summary["student_best_accuracy"]
    # The start counts: the kept student is never worse than the one the run began with.
    assert best.accuracy >= summary["student_accuracy_before"]
    assert best.accuracy >= summary["student_accuracy_after"]
    assert (out / "tropd" / "best" / "model.safetensors").is_file()
    assert (out / "opd_vs_tropd.png").is_file()
