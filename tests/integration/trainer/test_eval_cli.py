"""`tropd-train eval` scores a checkpoint exactly as the trainer's own evaluation does: same data,
same rendering, same precision (autocast in `student.compute_dtype`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tropd.trainer.config import load_config
from tropd.trainer.evaluate import evaluate_student
from tropd.trainer.setup import load_data, load_student

REPO = Path(__file__).resolve().parents[3]
# 256 problems: enough for bfloat16 autocast to change at least one greedy answer of the
# built-in student, so an evaluation without autocast would not match.
SMALL = ["task.eval_size=256", "train.threads=1"]


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_eval_cli_matches_the_trainers_evaluation(compute_dtype: str) -> None:
    overrides = [*SMALL, f"student.compute_dtype={compute_dtype}"]
    proc = subprocess.run(
        [sys.executable, "-m", "tropd.trainer.cli", "eval", "--config", "configs/demo.yaml",
         "--model", "builtin:student", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reported = json.loads(proc.stdout.strip().splitlines()[-1])

    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs/demo.yaml", overrides)
    student = load_student(cfg)
    data = load_data(cfg, student.tokenizer, student.generation_eos)
    with student.precision.autocast():
        expected = evaluate_student(student.model, data.codec, data.task, data.eval,
                                    data.max_new_tokens)  # fmt: skip
    assert reported["examples"] == expected.num_examples == 256
    assert reported["accuracy"] == expected.accuracy
