"""The trainer's refusals before step 0: tokenizer, vocabulary, teacher capabilities, and
recipe lengths the teacher's limits would reject after step 0."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from tropd.teacher.client import Capabilities, Limits, TeacherInfo
from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.config import load_config
from tropd.trainer.errors import SetupError
from tropd.trainer.setup import load_data
from tropd.trainer.teacher_link import check_lengths, check_teacher
from tropd.trainer.world import builtin_world_dir

VOCAB_ROWS = 19


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(builtin_world_dir() / "student")


def _info(tokenizer, backend: str = "hf", **capabilities: bool) -> TeacherInfo:
    # Capabilities default to all on; the test switches some off.
    limits = Limits(VOCAB_ROWS, 64, 128, 16, 65536, 64, Capabilities(**capabilities))
    return TeacherInfo(
        model_id="t", revision="", backend=backend, dtype="float32", device="cpu",
        fingerprint=fingerprint_of(tokenizer), limits=limits, server_version="test",
    )  # fmt: skip


def test_a_fitting_teacher_passes(tokenizer) -> None:
    check_teacher(load_config(None), _info(tokenizer), tokenizer, VOCAB_ROWS)


def test_topk_loss_refused_on_a_backend_without_topk(tokenizer) -> None:
    info = _info(tokenizer, backend="tgi", top_k=False, candidates=False, generate=False)
    with pytest.raises(SetupError, match="'tgi' teacher backend.*tropd.*top-k"):
        check_teacher(load_config(None, ["loss.outlier=topk_fkl"]), info, tokenizer, VOCAB_ROWS)
    check_teacher(load_config(None, ["loss.outlier=mask"]), info, tokenizer, VOCAB_ROWS)


def test_guidance_refused_when_the_teacher_cannot_generate(tokenizer) -> None:
    info = _info(tokenizer, backend="tgi", generate=False)
    with pytest.raises(SetupError, match="cannot generate"):
        check_teacher(load_config(None, ["guidance.fraction=0.5"]), info, tokenizer, VOCAB_ROWS)


def test_vocab_and_fingerprint_mismatch_refused(tokenizer) -> None:
    cfg = load_config(None)
    with pytest.raises(SetupError, match="vocabulary size mismatch"):
        check_teacher(cfg, _info(tokenizer), tokenizer, VOCAB_ROWS + 1)
    other = dataclasses.replace(
        _info(tokenizer),
        fingerprint=dataclasses.replace(fingerprint_of(tokenizer), sha256="0" * 64),
    )
    with pytest.raises(SetupError, match="tokenizer mismatch.*student.*teacher"):
        check_teacher(cfg, other, tokenizer, VOCAB_ROWS)


def test_lengths_the_teacher_would_reject_are_refused_naming_its_flag(tokenizer) -> None:
    info = _info(tokenizer)  # max_sequence_length 64, Generate cap 64 new tokens
    pool = "task.options={train_size: 64, eval_size: 16}"
    cfg = load_config(None, [pool])
    data = load_data(cfg, tokenizer)  # addition: 11-id prompts (bos + 10), 42 new tokens
    check_lengths(cfg, info, data)

    long = load_config(None, [pool, "rollout.max_new_tokens=60"])
    with pytest.raises(SetupError, match=r"reach 71 tokens .*max_sequence_length 64.*"
                                         r"--max-sequence-length.*rollout.max_new_tokens"):
        check_lengths(long, info, load_data(long, tokenizer))
    small = dataclasses.replace(info, limits=dataclasses.replace(info.limits,
                                                                 max_request_tokens=40))
    with pytest.raises(SetupError, match=r"max_request_tokens 40; .*--max-request-tokens 53"):
        check_lengths(cfg, small, data)
    capped = dataclasses.replace(info, limits=dataclasses.replace(info.limits, max_new_tokens=32))
    check_lengths(cfg, capped, data)  # no drafts asked for: the Generate cap does not matter
    guided = load_config(None, [pool, "guidance.fraction=0.25"])
    with pytest.raises(SetupError, match=r"drafts ask the teacher for up to 42 new tokens.*"
                                         r"max_new_tokens 32.*--max-new-tokens 42"):
        check_lengths(guided, capped, load_data(guided, tokenizer))


def test_student_topk_above_the_teachers_candidate_cap_is_refused(tokenizer) -> None:
    info = _info(tokenizer)
    capped = dataclasses.replace(info, limits=dataclasses.replace(info.limits, max_candidates=8))
    cfg = load_config(None, ["loss.method=rkl_topk", "loss.student_topk=16"])
    with pytest.raises(SetupError, match="loss.student_topk=16 is above the teacher's max cand"):
        check_teacher(cfg, capped, tokenizer, VOCAB_ROWS)
    check_teacher(load_config(None, ["loss.method=rkl_topk", "loss.student_topk=8"]), capped,
                  tokenizer, VOCAB_ROWS)  # fmt: skip
