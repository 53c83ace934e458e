"""The trainer's refusals before step 0: tokenizer, vocabulary and teacher capabilities."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from tropd.teacher.client import Capabilities, Limits, TeacherInfo
from tropd.teacher.fingerprint import fingerprint_of
from tropd.trainer.config import load_config
from tropd.trainer.errors import SetupError
from tropd.trainer.setup import check_teacher
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
