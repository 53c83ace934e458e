"""The teacher is killed (kill -9) mid-run and restarted on the same port, with real processes.

* Within `teacher.outage_s` the trainer waits (its log, /v1/status and /metrics say so), then
  carries on, and the run ends with the very weights of a run the outage never touched.
* Past `teacher.outage_s` it checkpoints and exits 1; rerunning the same command once the
  teacher is back resumes to those same weights (the abort checkpoint holds the RNGs from before
  the interrupted step, as a SIGTERM checkpoint does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from tropd.trainer.local_teacher import free_port
from tropd.trainer.run_log import read_metrics
from tropd.trainer.world import builtin_world_dir

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[3]
STEPS = 4
RUN = [
    "run", "--config", "configs/demo.yaml",
    "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "task.eval_size=8",
    "train.eval_every=100", "train.checkpoint_every=100", "train.threads=1",
    "train.progress=false", "train.tensorboard=false", "loss.method=tropd",
    "teacher.timeout_s=10", f"train.steps={STEPS}",
]  # fmt: skip


class Teacher:
    """`tropd-teacher serve` on fixed loopback ports, so that a restart reuses the address."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        cmd = [
            sys.executable, "-m", "tropd.teacher.cli", "serve",
            "--model", str(builtin_world_dir() / "teacher"), "--host", "127.0.0.1",
            "--port", str(self.port), "--http-port", str(self.http_port), "--threads", "1",
        ]  # fmt: skip
        log = (self.folder / f"teacher-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(600):
            assert self.proc.poll() is None, self.log()[-3000:]
            try:
                url = f"http://127.0.0.1:{self.http_port}/readyz"
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the teacher did not get ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log(self) -> str:
        return (self.folder / f"teacher-{self.starts}.log").read_text()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Teacher]:
    t = Teacher(tmp_path_factory.mktemp("teacher"))
    t.start()
    yield t
    if t.proc is not None and t.proc.poll() is None:
        t.proc.terminate()
        t.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def straight(teacher: Teacher, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final weights of the same run without an outage."""
    run_dir = tmp_path_factory.mktemp("straight")
    proc = trainer(teacher, run_dir, "train.status_port=null")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return final_weights(run_dir)


def trainer(teacher: Teacher, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [*RUN, f"teacher.target={teacher.target}", f"train.run_dir={run_dir}", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "tropd.trainer.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def wait_for(what: str, check, proc: subprocess.Popen, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s  # a safety stop, not an assertion on time
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: trainer exited\n" + proc.communicate()[1][-3000:]
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within the limit")


def steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.exists() else []
    return max((r["step"] for r in rows if "loss/total" in r), default=0)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{STEPS:06d}" / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_trainer_rides_a_teacher_restart_and_ends_bit_identical(
    teacher: Teacher, straight: dict, tmp_path: Path
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
    teacher: Teacher, straight: dict, tmp_path: Path
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
