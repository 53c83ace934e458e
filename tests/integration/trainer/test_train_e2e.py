"""End to end: the real teacher service on loopback serving the built-in teacher, the real trainer.

Short runs (a few steps, small batches) on the built-in world; one thread for bit-reproducibility.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tropd.teacher.config import ServerConfig
from tropd.teacher.server import ServerHandle, start_server
from tropd.trainer.config import load_config
from tropd.trainer.loop import train
from tropd.trainer.run_log import read_metrics
from tropd.trainer.world import builtin_world_dir

REPO = Path(__file__).resolve().parents[3]
SMALL = [
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=2",
    "task.eval_size=16",
    "train.eval_every=2",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.status_port=null",
    "teacher.max_retries=1",
    "teacher.timeout_s=10",
]


def _serve(model: Path) -> ServerHandle:
    config = ServerConfig(model=str(model), host="127.0.0.1", port=0, http_port=0, max_delay_ms=2.0)
    return start_server(config)


def _cli(args: list[str], **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tropd.trainer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        **kwargs,
    )


def _run_args(target: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--config",
        "configs/demo.yaml",
        *SMALL,
        f"teacher.target={target}",
        f"train.run_dir={run_dir}",
        *extra,
    ]


@pytest.mark.slow
def test_cli_run_trains_logs_checkpoints_and_plots(teacher: ServerHandle, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _cli(
        _run_args(
            teacher.target, run_dir, "train.steps=3", "loss.method=tropd", "guidance.fraction=0.5"
        )
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "it/s]" not in err  # train.progress=false: no bars, the libraries' own included
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps_done"] == 3
    rows = read_metrics(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if "train/grad_norm" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in (
        "train/trust_fraction",
        "train/p_trust",
        "loss/total",
        "train/student_entropy",
        "perf/teacher_s",
        "perf/teacher_queue_s",
        "perf/teacher_compute_s",
    ):
        assert key in train_rows[0], key
    assert 0 < train_rows[0]["perf/teacher_compute_s"] <= train_rows[0]["perf/teacher_s"]
    assert 0.0 <= train_rows[0]["train/trust_fraction"] <= 1.0
    assert train_rows[0]["train/guidance_prefix_len"] > 0
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 3]
    latest = run_dir / "checkpoints" / "step-000003"
    AutoModelForCausalLM.from_pretrained(latest)  # HF format, loads like any model
    assert (run_dir / "plots" / "eval_accuracy.png").stat().st_size > 0
    assert (run_dir / "config.yaml").exists()


@pytest.mark.slow
def test_resume_equals_straight_run(teacher: ServerHandle, tmp_path: Path) -> None:
    """4 straight steps == 2 steps, a fresh process state, resume, 2 more (losses and weights),
    with a learning-rate warm-up and a decaying KL anchor to the start running across the resume
    (both follow the step; the anchor is the student as loaded from student.path)."""
    common = [
        *SMALL,
        f"teacher.target={teacher.target}",
        "train.checkpoint_every=2",
        "loss.method=tropd",
        "optim.warmup_steps=3",
        "loss.anchor_kl=0.5",
        "loss.anchor_decay_steps=3",
    ]
    straight = tmp_path / "straight"
    split = tmp_path / "split"
    train(
        load_config(
            REPO / "configs/demo.yaml", [*common, "train.steps=4", f"train.run_dir={straight}"]
        )
    )
    train(
        load_config(
            REPO / "configs/demo.yaml", [*common, "train.steps=2", f"train.run_dir={split}"]
        )
    )
    torch.manual_seed(12345)  # a resumed run must not depend on the RNG state it starts with
    train(
        load_config(
            REPO / "configs/demo.yaml", [*common, "train.steps=4", f"train.run_dir={split}"]
        )
    )

    def losses(run: Path) -> list[tuple[int, float, float]]:
        return [
            (r["step"], r["loss/total"], r["train/grad_norm"])
            for r in read_metrics(run / "metrics.jsonl")
            if "loss/total" in r
        ]

    assert losses(split) == losses(straight)
    rows = [r for r in read_metrics(split / "metrics.jsonl") if "loss/total" in r]
    lr = load_config(REPO / "configs/demo.yaml", []).optim.lr
    assert [r["train/lr"] for r in rows] == pytest.approx([lr / 3, 2 * lr / 3, lr, lr])
    assert [r["train/anchor_coef"] for r in rows] == pytest.approx([0.5, 1 / 3, 1 / 6, 0.0])
    assert [("loss/anchor" in r) for r in rows] == [True, True, True, False]
    # At step 1 the student is its start: the K1 distance is rounding only, then it walks away.
    assert abs(rows[0]["train/anchor_kl"]) < 1e-4 < abs(rows[2]["train/anchor_kl"])
    a = load_file(straight / "checkpoints/step-000004/model.safetensors")
    b = load_file(split / "checkpoints/step-000004/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_float16_resume_goes_on_with_the_saved_loss_scale(
    teacher: ServerHandle, tmp_path: Path
) -> None:
    """A resumed float16 run takes its loss scale from the checkpoint: one whose scale had backed
    off to 2**10 goes on at 2**10, not at the initial 2**16."""
    run_dir = tmp_path / "run"
    common = [*SMALL, f"teacher.target={teacher.target}", f"train.run_dir={run_dir}",
              "student.compute_dtype=float16", "train.eval_every=100"]  # fmt: skip
    train(load_config(REPO / "configs/demo.yaml", [*common, "train.steps=1"]))
    first = run_dir / "checkpoints/step-000001"
    scale = torch.load(first / "scaler.pt", weights_only=True)
    assert scale["scale"] == 2.0**16
    torch.save({**scale, "scale": 2.0**10}, first / "scaler.pt")  # as if it had overflowed
    meta = json.loads((first / "meta.json").read_text())
    meta["files"]["scaler.pt"] = (first / "scaler.pt").stat().st_size
    (first / "meta.json").write_text(json.dumps(meta))
    train(load_config(REPO / "configs/demo.yaml", [*common, "train.steps=2"]))
    resumed = torch.load(run_dir / "checkpoints/step-000002/scaler.pt", weights_only=True)
    assert resumed["scale"] == 2.0**10
    assert resumed["_growth_tracker"] == scale["_growth_tracker"] + 1  # one more finite step

def test_unknown_config_key_exits_2() -> None:
    proc = _cli(["print-config", "--config", "configs/demo.yaml", "optim.lrr=1"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "optim.lrr: unknown key" in err


def test_tokenizer_mismatch_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    with _serve(tiny_llama_dir) as other:
        proc = _cli(_run_args(other.target, tmp_path / "run", "train.steps=1"))
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "tokenizer mismatch" in err
    assert "student" in err and "teacher" in err


def test_missing_student_refused(teacher: ServerHandle, tmp_path: Path) -> None:
    proc = _cli(_run_args(teacher.target, tmp_path / "run", "student.path=builtin:nope"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "builtin:nope" in err


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(
            r.get("step", 0) >= step and "loss/total" in r for r in read_metrics(path)
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within the deadline")


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_0(teacher: ServerHandle, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _cli(_run_args(teacher.target, run_dir, "train.steps=500"))
    _wait_for_step(run_dir, proc, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    saved = sorted((run_dir / "checkpoints").glob("step-*"))
    assert saved, "no checkpoint written on SIGTERM"


@pytest.mark.slow
def test_teacher_outage_checkpoints_and_exits_1(tmp_path: Path) -> None:
    own = _serve(builtin_world_dir() / "teacher")
    run_dir = tmp_path / "run"
    proc = _cli(_run_args(own.target, run_dir, "train.steps=500", "teacher.outage_s=3"))
    try:
        _wait_for_step(run_dir, proc, 1)
    finally:
        own.stop(grace_s=1.0)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]
    assert "UNAVAILABLE" in err and "teacher.outage_s = 3" in err and "resume" in err
    assert "waiting for the teacher" in err
    assert sorted((run_dir / "checkpoints").glob("step-*"))


def test_a_teacher_refusal_stops_the_run_at_once_with_its_message(tmp_path: Path) -> None:
    """INVALID_ARGUMENT is the teacher's answer, not an outage: no retries, exit 2, its text."""
    config = ServerConfig(
        model=str(builtin_world_dir() / "teacher"), host="127.0.0.1", port=0, http_port=0,
        max_new_tokens=2,  # below the drafts the guidance asks for
    )  # fmt: skip
    with start_server(config) as own:
        run_dir = tmp_path / "run"
        proc = _cli(_run_args(own.target, run_dir, "train.steps=3", "guidance.fraction=0.5"))
        _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err[-3000:]
    assert "max_new_tokens" in err
    assert "waiting for the teacher" not in err and "after 8 retries" not in err
