"""The teacher is killed (kill -9) mid-run and restarted on the same port, with real processes.

* Within `teacher.outage_s` the trainer waits (its log, /v1/status and /metrics say so), then
  carries on, and the run ends with the very weights of a run the outage never touched.
* Past `teacher.outage_s` it checkpoints and exits 1; rerunning the same command once the
  teacher is back resumes to those same weights (the abort checkpoint holds the RNGs from before
  the interrupted step, as a SIGTERM checkpoint does).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from processes import TeacherProcess, start_trainer, steps_logged, wait_for
from safetensors.torch import load_file

from tropd.trainer.local_teacher import free_port

pytestmark = pytest.mark.reliability

STEPS = 4
RUN = [
    "run", "--config", "configs/demo.yaml",
    "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "task.eval_size=8",
    "train.eval_every=100", "train.checkpoint_every=100", "train.threads=1",
    "train.progress=false", "train.tensorboard=false", "loss.method=tropd",
    "teacher.timeout_s=10", f"train.steps={STEPS}",
]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeacherProcess]:
    t = TeacherProcess(tmp_path_factory.mktemp("teacher"))
    t.start()
    yield t
    t.stop()


@pytest.fixture(scope="module")
def straight(teacher: TeacherProcess, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of the same run without an outage."""
    run_dir = tmp_path_factory.mktemp("straight")
    proc = trainer(teacher, run_dir, "train.status_port=null")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return final_weights(run_dir)


def trainer(teacher: TeacherProcess, run_dir: Path, *extra: str) -> subprocess.Popen:
    return start_trainer(
        [*RUN, f"teacher.target={teacher.address}", f"train.run_dir={run_dir}", *extra]
    )


def steps_done(run_dir: Path) -> int:
    return max(steps_logged(run_dir), default=0)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_trainer_rides_a_teacher_restart_and_ends_bit_identical(
    teacher: TeacherProcess, straight: dict, tmp_path: Path
) -> None:
    run_dir, status_port = tmp_path / "restarted", free_port()
    proc = trainer(teacher, run_dir, f"train.status_port={status_port}", "teacher.outage_s=300")
    status = f"http://127.0.0.1:{status_port}"
    wait_for("step 1", lambda: steps_done(run_dir) >= 1, proc)
    teacher.kill()

    def waiting() -> bool:
        body = httpx.get(f"{status}/v1/status", timeout=5).json()
        metrics = httpx.get(f"{status}/metrics", timeout=5).text
        return (
            body["state"] == "waiting_for_teacher"
            and body["teacher"]["code"] == "UNAVAILABLE"
            and "trainer_teacher_waiting 1.0" in metrics
        )

    wait_for("waiting_for_teacher", waiting, proc)
    teacher.start()  # same port: the trainer's next attempt gets through
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "waiting for the teacher" in err and "teacher back after" in err
    assert_same_weights(final_weights(run_dir), straight)


def test_outage_past_the_limit_checkpoints_exits_1_and_resumes_bit_identical(
    teacher: TeacherProcess, straight: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "aborted"
    short = ("train.status_port=null", "teacher.outage_s=2")
    proc = trainer(teacher, run_dir, *short)
    wait_for("step 1", lambda: steps_done(run_dir) >= 1, proc)
    teacher.kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "UNAVAILABLE" in err and "teacher.outage_s = 2" in err and "resume" in err
    saved = sorted((run_dir / "checkpoints").glob("step-*"))
    assert saved and int(saved[-1].name.removeprefix("step-")) < STEPS
    meta = json.loads((saved[-1] / "meta.json").read_text())
    print(f"\naborted at step {meta.get('step')}; resuming")

    teacher.start()
    resumed = trainer(teacher, run_dir, *short)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert_same_weights(final_weights(run_dir), straight)
