"""TrOPD: the trust test's statistics, each outlier mode's gradient path, the outlier weight,
and the outlier metrics, on hand-built tensors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from tropd.trainer.losses import LossConfig, LossInputError, LossInputs, trust_region_mask
from tropd.trainer.losses.tropd import tropd_loss

LOG = math.log


def _token_inputs(uniform: float, weight: float | None = None) -> tuple[LossInputs, Tensor, Tensor]:
    """One response token: pi_T(x) = 0.2, pi_S(x) = 0.4, so r = log 0.5 and p_trust = 0.5.

    Teacher top-2: probabilities 0.6 and 0.2 (renormalised 0.75, 0.25); student 0.5 and 0.25.
    """
    student = torch.tensor([[LOG(0.4)]], requires_grad=True)
    student_topk = torch.tensor([[[LOG(0.5), LOG(0.25)]]], requires_grad=True)
    inputs = LossInputs(
        student_logprobs_B_T=student,
        behavior_logprobs_B_T=torch.tensor([[LOG(0.4)]]),
        teacher_logprobs_B_T=torch.tensor([[LOG(0.2)]]),
        teacher_topk_ids_B_T_K=torch.tensor([[[3, 7]]]),
        teacher_topk_logprobs_B_T_K=torch.tensor([[[LOG(0.6), LOG(0.2)]]]),
        student_topk_logprobs_B_T_K=student_topk,
        teacher_entropy_B_T=torch.tensor([[1.25]]),
        trust_uniform_B_T=torch.tensor([[uniform]]),
        response_mask_B_T=torch.tensor([[True]]),
        outlier_weight_B_T=None if weight is None else torch.tensor([[weight]]),
    )
    return inputs, student, student_topk


FKL = 0.75 * LOG(0.75 / 0.5) + 0.25 * LOG(0.25 / 0.25)


def _grads(loss: Tensor, *leaves: Tensor) -> list[Tensor | None]:
    return list(torch.autograd.grad(loss, leaves, allow_unused=True))


def test_trust_token_gets_plain_opd() -> None:
    inputs, student, topk = _token_inputs(uniform=0.3)
    loss, metrics = tropd_loss(inputs, LossConfig(), normalizer=2.0)
    assert loss.item() == pytest.approx(-LOG(0.5) * LOG(0.4) / 2)
    g_student, g_topk = _grads(loss, student, topk)
    assert g_student.item() == pytest.approx(-LOG(0.5) / 2)
    assert g_topk is None or not g_topk.any()
    assert metrics["trust_frac_sum"] == 1 and metrics["trust_frac_count"] == 1
    assert metrics["reverse_kl_trust_sum"] == pytest.approx(LOG(2))
    assert metrics["p_trust_sum"] == pytest.approx(0.5)
    assert metrics["outlier_fkl_count"] == 0


def test_outlier_topk_fkl_differentiates_through_the_student_topk() -> None:
    inputs, student, topk = _token_inputs(uniform=0.7, weight=0.5)
    loss, metrics = tropd_loss(inputs, LossConfig(outlier="topk_fkl"), normalizer=2.0)
    assert loss.item() == pytest.approx(0.5 * FKL / 2)
    g_student, g_topk = _grads(loss, student, topk)
    assert g_student is None or not g_student.any()
    torch.testing.assert_close(g_topk, torch.tensor([[[-0.75, -0.25]]]) * 0.5 / 2)
    assert metrics["trust_frac_sum"] == 0
    assert metrics["outlier_fkl_sum"] == pytest.approx(FKL)
    assert metrics["outlier_teacher_top1_prob_sum"] == pytest.approx(0.6)
    assert metrics["outlier_teacher_entropy_sum"] == pytest.approx(1.25)
    assert metrics["outlier_weight_sum"] == pytest.approx(0.5)
    assert metrics["loss_outlier"] == pytest.approx(0.5 * FKL / 2)


def test_outlier_topk_fkl_reward_has_no_gradient_path_through_the_topk() -> None:
    inputs, student, topk = _token_inputs(uniform=0.7)
    loss, _ = tropd_loss(inputs, LossConfig(outlier="topk_fkl_reward"), normalizer=1.0)
    assert loss.item() == pytest.approx(FKL * LOG(0.4))  # -A * lp_S with A = -FKL
    g_student, g_topk = _grads(loss, student, topk)
    assert g_topk is None
    assert g_student.item() == pytest.approx(FKL)


def test_outlier_mask_contributes_nothing_and_clip_floors_the_reward() -> None:
    inputs, student, _ = _token_inputs(uniform=0.7)
    loss, _ = tropd_loss(inputs, LossConfig(outlier="mask"), normalizer=1.0)
    assert loss.item() == 0.0
    (g_student,) = _grads(loss, student)
    assert g_student is None or not g_student.any()
    # r = log 0.5 = -0.69: above tau = -5 it passes unchanged; tau = -0.1 floors it.
    for tau, advantage in ((-5.0, LOG(0.5)), (-0.1, -0.1)):
        loss, _ = tropd_loss(inputs, LossConfig(outlier="clip", tau=tau), normalizer=1.0)
        assert loss.item() == pytest.approx(-advantage * LOG(0.4))


def test_trust_acceptance_frequency_matches_min_one_ratio() -> None:
    """M_t ~ Bernoulli(min(1, pi_T/pi_S)) over many seeded uniform draws."""
    ratios = [2.0, 1.0, 0.8, 0.3, 0.05, math.exp(-13.0)]
    n = 20_000
    gen = torch.Generator().manual_seed(1234)
    log_ratio = torch.tensor([LOG(r) for r in ratios]).repeat_interleave(n)[None]
    behavior = torch.full_like(log_ratio, -1.0)
    inputs = LossInputs(
        student_logprobs_B_T=behavior.clone(),
        behavior_logprobs_B_T=behavior,
        teacher_logprobs_B_T=behavior + log_ratio,
        trust_uniform_B_T=torch.rand(log_ratio.shape, generator=gen),
        response_mask_B_T=torch.ones_like(log_ratio, dtype=torch.bool),
    )
    trusted = trust_region_mask(inputs).reshape(len(ratios), n).float().mean(dim=1)
    for ratio, freq in zip(ratios, trusted.tolist(), strict=True):
        p = min(1.0, ratio)
        assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (ratio, freq)
    _, metrics = tropd_loss(inputs, LossConfig(outlier="mask"), normalizer=n * len(ratios))
    assert metrics["trust_frac_sum"] / metrics["trust_frac_count"] == pytest.approx(
        trusted.mean().item()
    )
    expected_p = sum(min(1.0, r) for r in ratios) / len(ratios)
    assert metrics["p_trust_sum"] / metrics["p_trust_count"] == pytest.approx(expected_p, rel=1e-5)


def test_same_draws_same_loss_and_draws_are_required() -> None:
    inputs, _, _ = _token_inputs(uniform=0.7)
    first, _ = tropd_loss(inputs, LossConfig(), normalizer=1.0)
    second, _ = tropd_loss(inputs, LossConfig(), normalizer=1.0)
    assert torch.equal(first, second)
    without = dataclasses.replace(inputs, trust_uniform_B_T=None)
    with pytest.raises(LossInputError, match="'tropd' needs trust_uniform_B_T"):
        tropd_loss(without, LossConfig(), normalizer=1.0)


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan])
def test_outlier_weight_outside_unit_interval_is_refused(weight: float) -> None:
    inputs, _, _ = _token_inputs(uniform=0.7, weight=weight)
    with pytest.raises(LossInputError, match=r"outlier_weight_B_T must lie in \[0, 1\]"):
        tropd_loss(inputs, LossConfig(), normalizer=1.0)


def test_zero_weight_silences_even_an_infinite_outlier_term() -> None:
    inputs, _, topk = _token_inputs(uniform=0.7, weight=0.0)
    inf_topk = torch.tensor([[[-math.inf, LOG(0.25)]]], requires_grad=True)
    inputs = dataclasses.replace(inputs, student_topk_logprobs_B_T_K=inf_topk)
    loss, _ = tropd_loss(inputs, LossConfig(), normalizer=1.0)
    assert loss.item() == 0.0
    (grad,) = _grads(loss, inf_topk)
    assert torch.isfinite(grad).all() and not grad.any()


def test_topk_mode_without_topk_names_the_field() -> None:
    inputs, _, _ = _token_inputs(uniform=0.7)
    bare = dataclasses.replace(
        inputs, teacher_topk_logprobs_B_T_K=None, student_topk_logprobs_B_T_K=None
    )
    with pytest.raises(LossInputError, match="needs teacher_topk_logprobs_B_T_K"):
        tropd_loss(bare, LossConfig(outlier="topk_fkl"), normalizer=1.0)
    loss, metrics = tropd_loss(bare, LossConfig(outlier="mask"), normalizer=1.0)
    assert loss.item() == 0.0 and "outlier_fkl_sum" not in metrics
