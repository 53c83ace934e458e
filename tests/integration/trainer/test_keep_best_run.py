"""The safety net in real runs: the built-in teacher served on loopback, the real trainer, a
learning rate high enough that eval accuracy falls (so the best is not the last).

keep_best keeps the best-eval student (loadable, scoring what its record says), a resumed run
keeps the record, early stopping ends a run that stopped improving, the dip warning fires, and
`rkl_topk` trains through the teacher's `candidates`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tropd.teacher.server import ServerHandle
from tropd.trainer.config import load_config
from tropd.trainer.evaluate import evaluate_student
from tropd.trainer.keep_best import read_best
from tropd.trainer.loop import train
from tropd.trainer.run_log import read_metrics
from tropd.trainer.setup import load_data, load_student

REPO = Path(__file__).resolve().parents[3]
# OPD at 30x the demo's rate: the student leaves its start within a step or two.
FALLING = [
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=2",
    "task.eval_size=16",
    "train.eval_every=1",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.status_port=null",
    "loss.method=opd",
    "optim.lr=3e-3",
]


def _run(teacher: ServerHandle, run_dir: Path, *extra: str):  # noqa: ANN202
    cfg = load_config(
        "configs/demo.yaml",
        [*FALLING, f"teacher.target={teacher.target}", f"train.run_dir={run_dir}", *extra],
    )
    return cfg, train(cfg)


def _evals(run_dir: Path) -> list[tuple[int, float]]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    return [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]


@pytest.mark.slow
def test_keep_best_keeps_the_best_eval_and_survives_a_resume(
    teacher: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="tropd.trainer.dip"):
        cfg, _ = _run(teacher, run_dir, "train.steps=3", "train.keep_best=true",
                      "train.dip_warn_points=5")  # fmt: skip
    evals = _evals(run_dir)
    accs = [a for _, a in evals]
    assert len(set(accs)) > 1, evals  # eval changed, so "best" means something
    best_step, best_acc = max(evals, key=lambda e: (e[1], -e[0]))
    record = read_best(run_dir)
    assert record is not None and (record.step, record.accuracy) == (best_step, best_acc)
    assert record.step != evals[-1][0], evals  # the best is not the last
    # The kept folder is the student of that eval: it scores the recorded accuracy.
    kept = load_config("configs/demo.yaml", [*FALLING, f"student.path={run_dir / 'best'}"])
    student = load_student(kept)
    data = load_data(kept, student.tokenizer, student.generation_eos)
    result = evaluate_student(student.model, data.codec, data.task, data.eval,
                              data.max_new_tokens)  # fmt: skip
    assert result.accuracy == pytest.approx(record.accuracy)
    # The dip warning fired on the way down, naming what moved.
    dipped = [r for r in caplog.records if "points below the start" in r.message]
    assert len(dipped) == sum(a < accs[0] - 0.05 for a in accs)
    assert dipped and "moved most since the first step" in dipped[-1].message

    # Resume to step 5: the record stays unless a later eval beats it.
    _run(teacher, run_dir, "train.steps=5", "train.keep_best=true")
    evals = _evals(run_dir)
    assert [s for s, _ in evals] == [0, 1, 2, 3, 4, 5]
    again = read_best(run_dir)
    assert again is not None
    assert (again.step, again.accuracy) == max(evals, key=lambda e: (e[1], -e[0]))

    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, "-m", "tropd.trainer.cli", "export-best", "--run-dir", str(run_dir),
         "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["step"] == again.step
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_early_stop_ends_a_run_that_stopped_improving(
    teacher: ServerHandle, tmp_path: Path
) -> None:
    _, result = _run(teacher, tmp_path / "run", "train.steps=20", "train.early_stop_evals=2")
    evals = _evals(tmp_path / "run")
    best = max(a for _, a in evals)
    first_best = next(s for s, a in evals if a == best)
    assert result.stopped_early and result.steps_done < 20
    assert result.steps_done == first_best + 2  # two evals without a new best, then stop
    assert [s for s, _ in evals] == list(range(result.steps_done + 1))


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss", [["loss.method=rkl_topk"], ["loss.method=tropd", "loss.trust_signal=rkl_topk"]]
)
def test_rkl_topk_trains_through_teacher_candidates(
    teacher: ServerHandle, tmp_path: Path, loss: list[str]
) -> None:
    _run(teacher, tmp_path / "run", "train.steps=2", "optim.lr=1e-4", *loss)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/rkl" in r]
    assert len(rows) == 2
    assert all(r["train/skipped"] == 0 and r["loss/rkl"] > 0 for r in rows)
