"""The trainer through a tgi-backed teacher: TrOPD with masked outliers (sampled-token
log-probs only) trains; a loss that needs the teacher's top-k is refused at start-up.

Chain: trainer (gRPC) -> tgi teacher (.venv-tgi, text-generation client) -> the built-in world
teacher's TGI-compatible routes (hf backend, this process). Guidance stays off: the tgi backend
does not generate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tropd.teacher.server import ServerHandle, start_server
from tropd.trainer.world import builtin_world_dir

REPO = Path(__file__).resolve().parents[3]
SMALL = [
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=2",
    "task.eval_size=8",
    "train.eval_every=2",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.status_port=null",
    "teacher.max_retries=1",
    "teacher.timeout_s=30",
    "guidance.fraction=0",
]


@pytest.fixture(scope="module")
def world_teacher(make_hf_config) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(make_hf_config(builtin_world_dir() / "teacher"))
    yield handle
    handle.stop(grace_s=5.0)


def _train(target: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["run", "--config", "configs/demo.yaml", *SMALL, f"teacher.target={target}",
            f"train.run_dir={run_dir}", *extra]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "tropd.trainer.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_tropd_mask_trains_and_topk_losses_are_refused(
    world_teacher: ServerHandle, tgi_teacher_factory, tmp_path: Path
) -> None:
    tgi = tgi_teacher_factory(world_teacher.http_url, builtin_world_dir() / "teacher")
    done = _train(
        tgi.target, tmp_path / "mask", "train.steps=2", "loss.method=tropd", "loss.outlier=mask"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps_done"] == 2

    refused = _train(
        tgi.target, tmp_path / "fkl", "train.steps=2", "loss.method=tropd", "loss.outlier=topk_fkl"
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "loss tropd with outlier='topk_fkl'" in refused.stderr and "top-k" in refused.stderr
    assert "'tgi' teacher backend" in refused.stderr
