"""Two teacher processes behind one target, one trainer: gRPC's round robin spreads a step's
Score requests over both, the run trains as it does on one replica, and a replica killed with
SIGKILL and restarted mid-run costs no step and gets work again. Real processes on loopback.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from processes import TeacherProcess, start_trainer, steps_logged, wait_for
from safetensors.torch import load_file

from tropd.trainer.run_log import read_metrics

RUN = [
    "run", "--config", "configs/demo.yaml",
    "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "task.eval_size=8",
    "train.eval_every=1000", "train.checkpoint_every=1000", "train.threads=1",
    "train.progress=false", "train.tensorboard=false", "loss.method=tropd",
    "teacher.timeout_s=10", "train.status_port=null",
]  # fmt: skip


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TeacherProcess]]:
    folder = tmp_path_factory.mktemp("replicas")
    pair = [TeacherProcess(folder, "a"), TeacherProcess(folder, "b")]
    try:
        for replica in pair:
            replica.start()
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def balanced(replicas: list[TeacherProcess]) -> str:
    return "ipv4:" + ",".join(r.address for r in replicas)


def trainer(target: str, run_dir: Path, *extra: str) -> subprocess.Popen:
    return start_trainer([*RUN, f"teacher.target={target}", f"train.run_dir={run_dir}", *extra])


def finish(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors")


def test_both_replicas_work_and_the_run_equals_a_one_replica_run(
    replicas: list[TeacherProcess], tmp_path: Path
) -> None:
    steps = 3
    before = [r.scores_served() for r in replicas]
    # max_in_flight: null = one request per resolved replica, here 2.
    err = finish(trainer(balanced(replicas), tmp_path / "two", f"train.steps={steps}"))
    assert "2 replica(s)" in err and "2 Score request(s) in flight" in err
    assert "teacher replicas agree: 2 replicas" in err  # the start-up consistency check
    print("\n" + next(line for line in err.splitlines() if "replicas agree" in line))
    served = [r.scores_served() - b for r, b in zip(replicas, before, strict=True)]
    shares = [s / sum(served) for s in served]
    print(f"\nScore calls per replica: {served} (shares {shares})")
    assert all(share >= 0.3 for share in shares), served

    # The same run on one replica, split the same way: the teacher batches differently, and
    # float32 scores agree across batchings to ~2e-6, so the weights agree to that order.
    one = tmp_path / "one"
    finish(trainer(replicas[0].address, one, f"train.steps={steps}", "teacher.max_in_flight=2"))
    a, b = weights(tmp_path / "two", steps), weights(one, steps)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"largest weight difference two replicas vs one: {worst:.2e}")
    assert worst < 1e-5
    losses = [[r["loss/total"] for r in read_metrics(d / "metrics.jsonl") if "loss/total" in r]
              for d in (tmp_path / "two", one)]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)


def test_a_replica_killed_and_restarted_costs_no_step_and_gets_work_again(
    replicas: list[TeacherProcess], tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed"
    victim, survivor = replicas
    # Many steps on purpose: the test stops the run with SIGTERM once it has seen what it needs.
    proc = trainer(balanced(replicas), run_dir, "train.steps=500", "teacher.outage_s=120")
    try:
        wait_for("step 2", lambda: len(steps_logged(run_dir)) >= 2, proc)
        victim.kill()
        at_kill = len(steps_logged(run_dir))
        wait_for("steps on one replica", lambda: len(steps_logged(run_dir)) >= at_kill + 2, proc)
        victim.start()  # a fresh process: its metrics count from 0
        wait_for("work for the restarted replica", lambda: victim.scores_served() >= 2, proc)
        at_restart_seen = len(steps_logged(run_dir))
        wait_for("a step after", lambda: len(steps_logged(run_dir)) > at_restart_seen, proc)
    finally:
        proc.send_signal(signal.SIGTERM)  # finish the step, checkpoint, exit 0
    finish(proc)
    logged = steps_logged(run_dir)
    print(f"\nkilled after step {at_kill}, {len(logged)} steps logged, restarted replica "
          f"served {victim.scores_served():.0f} Score calls, survivor "
          f"{survivor.scores_served():.0f}")  # fmt: skip
    assert logged == list(range(1, len(logged) + 1))  # no step lost, none repeated
