"""LossConfig defaults and validation messages, the registry and its needs_*, LossInputs checks."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from pydantic import ValidationError

from tropd.trainer.losses import (
    LOSSES,
    LossConfig,
    LossInputError,
    LossInputs,
    Method,
    compute_loss,
    needs_student_entropy,
    needs_student_topk,
    needs_teacher_entropy,
    needs_teacher_scores,
    needs_topk,
    needs_trust_uniform,
    unmet_teacher_needs,
)


def test_defaults_follow_the_design() -> None:
    cfg = LossConfig()
    assert (cfg.method, cfg.outlier, cfg.topk) == ("tropd", "topk_fkl", 64)
    assert (cfg.beta_guidance, cfg.jsd_beta, cfg.entropy_top_fraction) == (0.001, 0.5, 0.2)
    assert (cfg.tau, cfg.eopd_entropy_threshold) == (-5.0, 0.5)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("method", "ppo"),
        ("outlier", "drop"),
        ("topk", 0),
        ("tau", math.nan),
        ("tau", math.inf),
        ("beta_guidance", -0.001),
        ("jsd_beta", 0.0),
        ("jsd_beta", 1.0),
        ("eopd_entropy_threshold", -0.1),
        ("entropy_top_fraction", 0.0),
        ("entropy_top_fraction", 1.5),
        ("taus", -1.0),
    ],
)
def test_bad_values_are_refused_with_the_key_named(key: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        LossConfig(**{key: value})
    assert key in str(info.value)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        LossConfig().tau = 0.0  # type: ignore[misc]


def test_registry_covers_every_method() -> None:
    assert list(LOSSES) == list(typing.get_args(Method))
    assert set(LOSSES) == {
        "opd", "tropd", "clip", "mask", "fkl_topk", "jsd", "eopd", "entropy_top20", "sft",
        "rkl_topk",
    }  # fmt: skip
    with pytest.raises(TypeError):
        LOSSES["new"] = LOSSES["opd"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("method", "outlier", "topk", "teacher_entropy", "student_entropy", "scores", "uniform"),
    [
        ("opd", "topk_fkl", False, False, False, True, False),
        ("clip", "topk_fkl", False, False, False, True, False),
        ("mask", "topk_fkl", False, False, False, True, False),
        ("tropd", "topk_fkl", True, False, False, True, True),
        ("tropd", "topk_fkl_reward", True, False, False, True, True),
        ("tropd", "mask", False, False, False, True, True),
        ("tropd", "clip", False, False, False, True, True),
        ("fkl_topk", "topk_fkl", True, False, False, True, False),
        ("jsd", "topk_fkl", True, False, False, True, False),
        ("eopd", "topk_fkl", True, True, False, True, False),
        ("entropy_top20", "topk_fkl", False, False, True, True, False),
        ("sft", "topk_fkl", False, False, False, False, False),
    ],
)
def test_needs(
    method: str,
    outlier: str,
    topk: bool,
    teacher_entropy: bool,
    student_entropy: bool,
    scores: bool,
    uniform: bool,
) -> None:
    cfg = LossConfig(method=method, outlier=outlier)
    assert needs_topk(cfg) is topk
    assert needs_teacher_entropy(cfg) is teacher_entropy
    assert needs_student_entropy(cfg) is student_entropy
    assert needs_teacher_scores(cfg) is scores
    assert needs_trust_uniform(cfg) is uniform
    assert (unmet_teacher_needs(cfg, has_topk=False, has_entropy=False) is None) is not (
        topk or teacher_entropy
    )
    assert unmet_teacher_needs(cfg, has_topk=True, has_entropy=True) is None


@pytest.mark.parametrize(
    ("overrides", "wanted"),
    [
        ({"method": "rkl_topk"}, True),
        ({"method": "tropd", "trust_signal": "rkl_topk"}, True),
        ({"method": "tropd", "outlier": "rkl_topk"}, True),
        ({"method": "tropd"}, False),
        ({"method": "opd"}, False),
    ],
)
def test_student_topk_needs_teacher_candidates(overrides: dict, wanted: bool) -> None:
    cfg = LossConfig(**overrides)
    assert needs_student_topk(cfg) is wanted
    unmet = unmet_teacher_needs(cfg, has_topk=True, has_entropy=True, has_candidates=False)
    assert (unmet is not None) is wanted
    if wanted:
        assert "candidate ids (student_topk=16)" in unmet


def test_unmet_teacher_needs_names_the_loss() -> None:
    message = unmet_teacher_needs(LossConfig(), has_topk=False, has_entropy=True)
    assert message is not None
    assert "tropd with outlier='topk_fkl'" in message and "top-k log-probs (k=64)" in message
    message = unmet_teacher_needs(LossConfig(method="eopd"), has_topk=False, has_entropy=False)
    assert message is not None and "loss eopd" in message and "entropy" in message


def _lp(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape)


def _mask(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"student_logprobs_B_T": _lp(3)}, "student_logprobs_B_T must be a 2-D float"),
        ({"response_mask_B_T": _mask(2, 4)}, r"response_mask_B_T has shape \(2, 4\)"),
        ({"response_mask_B_T": _lp(2, 3)}, "response_mask_B_T must be bool"),
        ({"teacher_logprobs_B_T": _lp(3, 3)}, "teacher_logprobs_B_T has shape"),
        ({"trust_uniform_B_T": _mask(2, 3)}, "trust_uniform_B_T must be floating"),
        ({"prefix_mask_B_T": _mask(2, 3)}, "overlap"),
        (
            {"teacher_topk_logprobs_B_T_K": _lp(2, 3, 4), "student_topk_logprobs_B_T_K": None},
            "both be given",
        ),
        (
            {
                "teacher_topk_logprobs_B_T_K": _lp(2, 3, 4),
                "student_topk_logprobs_B_T_K": _lp(2, 3, 5),
            },
            "K=5",
        ),
        ({"teacher_topk_ids_B_T_K": _lp(2, 3, 4)}, "teacher_topk_ids_B_T_K must be an integer"),
        ({"teacher_topk_ids_B_T_K": torch.zeros(2, 4, 1, dtype=torch.long)}, "want"),
    ],
)
def test_inputs_are_checked_on_construction(fields: dict, message: str) -> None:
    base = {"student_logprobs_B_T": _lp(2, 3), "response_mask_B_T": _mask(2, 3)}
    with pytest.raises(LossInputError, match=message):
        LossInputs(**{**base, **fields})


def test_missing_field_and_bad_normalizer_are_named() -> None:
    inputs = LossInputs(student_logprobs_B_T=_lp(1, 2), response_mask_B_T=_mask(1, 2))
    with pytest.raises(LossInputError, match="loss 'opd' needs teacher_logprobs_B_T"):
        compute_loss(inputs, LossConfig(method="opd"), 2.0)
    with pytest.raises(LossInputError, match="loss 'entropy_top20' needs student_entropy_B_T"):
        compute_loss(inputs, LossConfig(method="entropy_top20"), 2.0)
    for normalizer in (-1.0, math.nan, math.inf, 1.0):  # 1 < the batch's 2 trained tokens
        with pytest.raises(LossInputError, match="normalizer"):
            compute_loss(inputs, LossConfig(method="sft"), normalizer)
