"""Rollout engines and overlap over the real teacher service on loopback (built-in world).

Rows sent to the teacher while the paged engine still samples get the scores the one-shot
grading gives them, in the step's row order, each from its own teacher when routed; a rollout
that ends in one group sends nothing early; the trainer runs end to end with
`rollout.engine=paged` and logs the step's timeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tropd.teacher.client import TeacherClient
from tropd.teacher.server import ServerHandle, start_server
from tropd.trainer.batch import TrainSequence
from tropd.trainer.config import RolloutConfig, load_config
from tropd.trainer.loop import train
from tropd.trainer.losses import LossConfig
from tropd.trainer.rollout import roll_out
from tropd.trainer.rollout_engines import make_engine
from tropd.trainer.routing import grade_routed
from tropd.trainer.run_log import read_metrics
from tropd.trainer.score_stream import ScoreStream
from tropd.trainer.tasks.base import Example
from tropd.trainer.teacher_link import Teacher
from tropd.trainer.world import builtin_world_dir

REPO = Path(__file__).resolve().parents[3]
LOSS = LossConfig(method="tropd", outlier="topk_fkl", topk=8)


@pytest.fixture(scope="module")
def servers(make_config) -> Iterator[list[ServerHandle]]:
    torch.set_num_threads(1)
    folder = builtin_world_dir() / "teacher"
    handles = [start_server(make_config(folder)) for _ in range(2)]
    yield handles
    for handle in handles:
        handle.stop(grace_s=2.0)


def _teacher(handle: ServerHandle, in_flight: int) -> Teacher:
    client = TeacherClient(handle.target)
    return Teacher(client, client.info(), in_flight)


def _examples(prompts: int) -> list[Example]:
    """Addition prompts, alternately routed to the `math` and the `code` teacher."""
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 10_000, size=(prompts, 2))
    return [Example(f"{a:04d}+{b:04d}=", "", fields={"domain": ["math", "code"][i % 2]})
            for i, (a, b) in enumerate(pairs)]  # fmt: skip


def _rollouts(engine: str, examples: list[Example], on_finished=None) -> list[TrainSequence]:  # type: ignore[no-untyped-def]
    folder = builtin_world_dir() / "student"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer(e.prompt)["input_ids"] for e in examples]
    cfg = RolloutConfig(engine=engine, samples_per_prompt=2)  # type: ignore[arg-type]
    torch.manual_seed(0)
    empty = [np.zeros(0, np.int64)] * len(ids)
    return roll_out(make_engine(cfg), model, ids, empty, cfg, 40, [tokenizer.eos_token_id],
                    tokenizer.pad_token_id, on_finished=on_finished)  # fmt: skip


def _assert_same_scores(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)


def test_rows_scored_during_the_rollout_get_the_one_shot_scores(
    servers: list[ServerHandle],
) -> None:
    teacher = _teacher(servers[0], in_flight=2)
    try:
        stream = ScoreStream(teacher, [], LOSS, None, chunk_rows=8)
        sequences = _rollouts("paged", _examples(24), on_finished=stream.add)
        assert any(stream.sent.values())  # requests went out before the rollout ended
        grades, per_teacher = stream.finish(sequences)
        expected, _ = grade_routed(teacher, [], sequences, LOSS)
        _assert_same_scores(grades.scores, expected.scores)
        assert per_teacher == {}
        assert [s.logprobs.size for s in grades.scores] == [q.response_len for q in sequences]
    finally:
        teacher.close()


def test_one_group_sends_nothing_early_and_routing_keeps_each_teacher_to_its_rows(
    servers: list[ServerHandle],
) -> None:
    routes = {"math": _teacher(servers[0], 1), "code": _teacher(servers[1], 2)}
    default = routes["math"]
    teacher = Teacher(default.client, default.info, 1, routes, "domain")
    try:
        examples = _examples(12)
        one_shot = ScoreStream(teacher, examples, LOSS, None, chunk_rows=4)
        _rollouts("generate", examples, on_finished=one_shot.add)
        assert not any(one_shot.sent.values())  # `generate`: one call, one group, held back
        stream = ScoreStream(teacher, examples, LOSS, None, chunk_rows=4)
        sequences = _rollouts("paged", examples, on_finished=stream.add)
        assert all(stream.sent.values())  # both teachers got work during the rollout
        grades, metrics = stream.finish(sequences)
        expected, expected_metrics = grade_routed(teacher, examples, sequences, LOSS)
        _assert_same_scores(grades.scores, expected.scores)
        for name in routes:
            assert metrics[f"teacher/{name}/sequences"] == 12.0  # 6 prompts x 2 samples each
            assert (
                metrics[f"teacher/{name}/scored_tokens"]
                == expected_metrics[f"teacher/{name}/scored_tokens"]
            )
    finally:
        teacher.close()


def test_trainer_runs_with_the_paged_engine_and_logs_the_timeline(
    servers: list[ServerHandle], tmp_path: Path
) -> None:
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"teacher.target={servers[0].target}", "rollout.engine=paged",
            "rollout.prompts_per_step=8", "rollout.samples_per_prompt=2",
            "rollout.overlap_chunk_rows=4", "teacher.max_in_flight=2", "task.eval_size=16",
            "train.steps=2", "train.eval_every=2", "train.threads=1", "train.progress=false",
            "train.tensorboard=false", "train.status_port=null", f"train.run_dir={tmp_path}",
        ],
    )  # fmt: skip
    result = train(cfg)
    assert result.steps_done == 2 and 0.0 <= result.accuracy_after <= 1.0
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss/total" in r]
    assert len(steps) == 2
    for row in steps:
        assert np.isfinite(row["loss/total"]) and row["train/skipped"] == 0.0
        assert row["perf/rollout_s"] > 0 and row["perf/update_s"] > 0
        assert 0 <= row["perf/teacher_wait_s"] <= row["perf/step_s"]
