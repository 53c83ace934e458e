"""Real data end to end: a tiny random Qwen3 whose tokenizer has a chat template, a local parquet
GSM8K-style data set, the real teacher service on loopback, the real trainer.

Shown here: the prompt ids the teacher scores are `apply_chat_template`'s; an epoch visits
every prompt once; a resumed run continues the same order; a verifier sees the response's ids
and stop reason; the start-up checks speak (first prompt, fingerprint, start accuracy); a
guidance recipe longer than the teacher's Generate cap is refused before step 0; and
configs/qwen3-gsm8k.yaml passes print-config and the start-up checks on the stand-in.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from tropd.teacher.client import TeacherClient
from tropd.teacher.server import ServerHandle, start_server
from tropd.trainer.config import load_config
from tropd.trainer.errors import SetupError
from tropd.trainer.loop import train
from tropd.trainer.run_log import read_metrics
from tropd.trainer.setup import drafts_source, load_data, load_student
from tropd.trainer.teacher_link import connect_teacher

REPO = Path(__file__).resolve().parents[3]
SYSTEM = "You are a careful math tutor."
PAIRS = [(3, 4), (10, 5), (7, 7), (12, 1), (2, 9), (6, 8), (15, 3), (4, 4)]
QUESTIONS = [f"Tom has {a} apples and buys {b} more. How many apples now?" for a, b in PAIRS]
ANSWERS = [f"{a} + {b} = {a + b}\n#### {a + b}" for a, b in PAIRS]
# A custom verifier, loaded by module path as a user's would be, that keeps what it was given.
VERIFIER = """
SEEN = []

def recording_verifier(example, response):
    SEEN.append((example.fields["question"], response.ids, response.finish_reason))
    return response.text.strip().endswith(example.answer.rsplit(" ", 1)[-1])
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parquet data set, and beside it the verifier module."""
    folder = tmp_path_factory.mktemp("gsm8k_like")
    pq.write_table(pa.table({"question": QUESTIONS, "answer": ANSWERS}), folder / "train.parquet")
    pq.write_table(pa.table({"question": QUESTIONS[:3], "answer": ANSWERS[:3]}),
                   folder / "test.parquet")  # fmt: skip
    (folder / "chat_probe_verifier.py").write_text(VERIFIER)
    return folder


@pytest.fixture
def verifier_seen(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    monkeypatch.syspath_prepend(str(data_dir))
    monkeypatch.delitem(sys.modules, "chat_probe_verifier", raising=False)
    import chat_probe_verifier  # type: ignore[import-not-found]

    yield chat_probe_verifier.SEEN


@pytest.fixture(scope="module")
def teacher(tiny_chat_qwen3_dir: Path, make_config) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(make_config(tiny_chat_qwen3_dir, max_new_tokens=32))
    yield handle
    handle.stop(grace_s=5.0)


def _overrides(student: Path, teacher: ServerHandle, data: Path, run_dir: Path) -> list[str]:
    return [
        f"student.path={student}",
        f"teacher.target={teacher.target}",
        "task.name=dataset",
        f"task.options={{path: parquet, data_files: {{train: {data}/train.parquet, "
        f"test: {data}/test.parquet}}, prompt_field: question, "
        "verifier: 'chat_probe_verifier:recording_verifier'}",
        f"task.system_prompt={SYSTEM}",
        "task.chat_template_kwargs={enable_thinking: false}",
        "task.eval_size=3",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=12",
        "loss.topk=8",
        "optim.micro_batch_size=8",
        "train.steps=2",
        "train.eval_every=100",
        "train.checkpoint_every=1",
        "train.threads=1",
        "train.progress=false",
        "train.tensorboard=false",
        "train.status_port=null",
        "teacher.max_retries=1",
        "teacher.timeout_s=20",
        f"train.run_dir={run_dir}",
    ]


class ScoreRecorder:
    """Wraps the real client's Score: the prompt ids of every scored sequence, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.prompts: list[tuple[int, ...]] = []
        original = TeacherClient.score

        def score(client: TeacherClient, sequences, starts, **kwargs):
            self.prompts += [tuple(int(i) for i in s[:start]) for s, start in
                             zip(sequences, starts, strict=True)]  # fmt: skip
            return original(client, sequences, starts=starts, **kwargs)

        monkeypatch.setattr(TeacherClient, "score", score)

    def per_step(self, samples: int) -> list[tuple[int, ...]]:
        """One entry per drawn prompt (rollouts come grouped by prompt, `samples` each)."""
        return self.prompts[::samples]


def _template_ids(tokenizer, question: str) -> tuple[int, ...]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=True, enable_thinking=False)  # fmt: skip
    return tuple(out["input_ids"])


def test_chat_prompts_epochs_verifier_and_start_checks(
    tiny_chat_qwen3_dir: Path, teacher: ServerHandle, data_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, verifier_seen: list,
) -> None:  # fmt: skip
    recorder = ScoreRecorder(monkeypatch)
    cfg = load_config(None, _overrides(tiny_chat_qwen3_dir, teacher, data_dir, tmp_path / "run"))
    with caplog.at_level(logging.INFO):
        train(cfg)

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_qwen3_dir)
    expected = {_template_ids(tokenizer, q): q for q in QUESTIONS}
    drawn = recorder.per_step(2)
    assert len(drawn) == 8 and set(drawn) <= expected.keys()  # apply_chat_template's ids
    assert sorted(expected[p] for p in drawn) == sorted(QUESTIONS)  # one epoch: each once

    eos_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), 2}
    train_seen = verifier_seen[3:]  # after the step-0 eval's three
    assert train_seen and all(
        (reason == "eos") == (ids[-1] in eos_ids) and (reason == "eos" or len(ids) == 12)
        for _, ids, reason in train_seen
    )
    log = caplog.text
    assert "prompts through the chat template; the first, as the model sees it" in log
    assert f"<|im_start|>system\\n{SYSTEM}<|im_end|>" in log
    assert "tokenizer fingerprint ok (" in log
    assert "start accuracy 0.000 on 3 eval examples; what the verifier read:" in log
    assert log.count("[wrong, stopped by ") >= 3
    assert "START ACCURACY IS 0" in log


def test_resume_continues_the_same_prompt_order(
    tiny_chat_qwen3_dir: Path, teacher: ServerHandle, data_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, verifier_seen: list,
) -> None:  # fmt: skip
    common = _overrides(tiny_chat_qwen3_dir, teacher, data_dir, tmp_path)
    straight = ScoreRecorder(monkeypatch)
    train(load_config(None, [*common, "train.steps=3", f"train.run_dir={tmp_path / 'a'}"]))
    split = ScoreRecorder(monkeypatch)  # wraps the wrapper: records only the split runs
    train(load_config(None, [*common, "train.steps=1", f"train.run_dir={tmp_path / 'b'}"]))
    torch.manual_seed(12345)  # a resumed run must not depend on the RNG state it starts with
    train(load_config(None, [*common, "train.steps=3", f"train.run_dir={tmp_path / 'b'}"]))

    order = straight.per_step(2)[: 3 * 4]
    assert len(order) == 12 and len(set(order[:8])) == 8  # 3 steps cross into epoch 2
    assert split.per_step(2) == order

    def losses(run: Path) -> list[tuple[int, float]]:
        rows = read_metrics(run / "metrics.jsonl")
        return [(r["step"], r["loss/total"]) for r in rows if "loss/total" in r]

    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def test_guidance_longer_than_the_generate_cap_is_refused_before_step_0(
    tiny_chat_qwen3_dir: Path, teacher: ServerHandle, data_dir: Path, tmp_path: Path,
    verifier_seen: list,
) -> None:  # fmt: skip
    overrides = [*_overrides(tiny_chat_qwen3_dir, teacher, data_dir, tmp_path / "run"),
                 "guidance.fraction=0.5", "rollout.max_new_tokens=48"]  # fmt: skip
    with pytest.raises(SetupError, match=r"up to 48 new tokens.*Generate cap max_new_tokens 32"
                                         r".*--max-new-tokens 48"):
        train(load_config(None, overrides))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing ran


def test_the_qwen3_gsm8k_recipe_passes_print_config_and_start_up_checks(
    tiny_chat_qwen3_dir: Path, teacher: ServerHandle, data_dir: Path, tmp_path: Path,
    make_config,
) -> None:  # fmt: skip
    recipe = REPO / "configs" / "qwen3-gsm8k.yaml"
    local = ["task.options.path=parquet", "task.options.subset=null",
             f"task.options.data_files={{train: {data_dir}/train.parquet, "
             f"test: {data_dir}/test.parquet}}"]  # fmt: skip
    stand_in = [f"student.path={tiny_chat_qwen3_dir}", "student.device=cpu",
                "student.compute_dtype=float32", *local]  # fmt: skip

    def print_config(*overrides: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tropd.trainer.cli", "print-config", "--config",
                   str(recipe), *overrides]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)

    printed = print_config(*stand_in)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "chat_template: true" in printed.stdout
    missing = print_config(*stand_in, f"task.options.data_files={{train: {tmp_path}/no.parquet}}")
    assert missing.returncode == 2 and "no.parquet does not exist" in missing.stderr

    # Against a teacher served as the header says (Generate cap 1024) with the server's own
    # defaults for top-k and request size (the test fixture's are smaller).
    with start_server(make_config(tiny_chat_qwen3_dir, max_new_tokens=1024, max_top_k=128,
                                  max_request_tokens=65_536)) as served:  # fmt: skip
        cfg = load_config(recipe, [*stand_in, f"teacher.target={served.target}"])
        student = load_student(cfg)
        data = load_data(cfg, student.tokenizer, student.generation_eos)
        teacher_ = connect_teacher(cfg, student, data)
        drafts_source(cfg, teacher_, data)
        teacher_.client.close()
    assert data.codec.fmt.chat_template and data.max_new_tokens == cfg.rollout.max_new_tokens
