"""Several teachers per job, routed by a data field: real teacher servers on loopback (in this
process, so their metrics can be read directly) and a real trainer subprocess. Each teacher
scores exactly the response tokens of its own examples; a teacher whose tokenizer differs from
the student's refuses the start, naming which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tropd.teacher.server import ServerHandle, start_server
from tropd.trainer.run_log import read_metrics
from tropd.trainer.world import builtin_world_dir

REPO = Path(__file__).resolve().parents[3]


def scored(handle: ServerHandle) -> float:
    return handle.server.state.metrics.scored_tokens._value.get()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Addition prompts in the built-in format; `domain` is math, code, or absent (default)."""
    folder = tmp_path_factory.mktemp("routed_data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        a, b = rng.integers(0, 10_000, size=2)
        row = {"prompt": f"{a:04d}+{b:04d}=", "answer": str(a + b)}
        if i % 3:
            row["domain"] = "math" if i % 3 == 1 else "code"
        rows.append(row)
    train, evals = folder / "train.jsonl", folder / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    return train, evals


@pytest.fixture(scope="module")
def teachers(make_config) -> Iterator[dict[str, ServerHandle]]:
    folder = builtin_world_dir() / "teacher"
    handles = {name: start_server(make_config(folder)) for name in ("math", "code")}
    yield handles
    for handle in handles.values():
        handle.stop(grace_s=2.0)


def trainer(data: tuple[Path, Path], run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    train, evals = data
    args = [
        "run", "--config", "configs/demo.yaml", "task.name=jsonl",
        f"task.options.train={train}", f"task.options.eval={evals}",
        "task.options.verifier=exact", "task.sampling=epochs", "task.eval_size=4",
        "rollout.prompts_per_step=6", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=42",
        "train.steps=2", "train.eval_every=100", "train.checkpoint_every=100", "train.threads=1",
        "train.progress=false", "train.tensorboard=false", "train.status_port=null",
        f"train.run_dir={run_dir}", "routing.field=domain", "routing.default=math", *extra,
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "tropd.trainer.cli", *args], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip


def test_each_teacher_grades_only_its_own_examples(
    teachers: dict[str, ServerHandle], data: tuple[Path, Path], tmp_path: Path
) -> None:
    before = {name: scored(h) for name, h in teachers.items()}
    targets = [f"teachers.{name}.target={h.target}" for name, h in teachers.items()]
    done = trainer(data, tmp_path / "run", *targets)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/total" in r]
    assert len(rows) == 2
    for name, handle in teachers.items():
        mine = sum(r[f"teacher/{name}/scored_tokens"] for r in rows)
        print(f"\nteacher {name}: {sum(r[f'teacher/{name}/sequences'] for r in rows):.0f} "
              f"rollouts, {mine:.0f} tokens (its metrics: {scored(handle) - before[name]:.0f})")
        assert mine > 0
        assert scored(handle) - before[name] == mine  # exactly its own examples' tokens


def test_a_teacher_with_another_tokenizer_refuses_the_start_naming_it(
    teachers: dict[str, ServerHandle],
    data: tuple[Path, Path],
    tiny_llama_dir: Path,
    make_config,
    tmp_path: Path,
) -> None:
    stranger = start_server(make_config(tiny_llama_dir))
    try:
        done = trainer(data, tmp_path / "run", f"teachers.math.target={teachers['math'].target}",
                       f"teachers.code.target={stranger.target}")  # fmt: skip
    finally:
        stranger.stop(grace_s=2.0)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "teacher 'code'" in done.stderr and "tokenizer mismatch" in done.stderr
