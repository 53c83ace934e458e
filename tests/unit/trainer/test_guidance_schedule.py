"""Guidance: the cosine schedule, the prefix-length floor and clamp, and the prefix term that
every method adds (counted in the normalizer)."""

from __future__ import annotations

import math

import pytest
import torch

from tropd.trainer.losses import (
    LOSSES,
    LossConfig,
    LossInputs,
    guidance_alpha,
    guidance_prefix_len,
)


def test_alpha_runs_from_one_to_zero_and_never_rises() -> None:
    assert guidance_alpha(0, 200) == 1.0
    assert guidance_alpha(200, 200) == 0.0
    assert guidance_alpha(100, 200) == pytest.approx(0.5)
    assert guidance_alpha(500, 200) == 0.0  # past the schedule: fully on-policy
    values = [guidance_alpha(s, 37) for s in range(60)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert guidance_alpha(0, 1) == 1.0 and guidance_alpha(1, 1) == 0.0


@pytest.mark.parametrize(("step", "total"), [(-1, 10), (0, 0), (3, -5)])
def test_alpha_rejects_bad_arguments(step: int, total: int) -> None:
    with pytest.raises(ValueError, match="step must be|total_steps must be"):
        guidance_alpha(step, total)


def test_prefix_len_floors_and_clamps() -> None:
    # alpha over 4 steps: 1, 0.854, 0.5, 0.146, 0 -> floor(alpha * 10).
    assert [guidance_prefix_len(s, 4, 10) for s in range(6)] == [10, 8, 5, 1, 0, 0]
    assert guidance_prefix_len(1, 2, 10) == 5  # exactly half: no rounding down to 4
    assert guidance_prefix_len(0, 5, 0) == 0
    for draft in (1, 7, 64):
        lengths = [guidance_prefix_len(s, 9, draft) for s in range(12)]
        assert lengths[0] == draft and lengths[9:] == [0, 0, 0]
        assert all(0 <= n <= draft for n in lengths)
        assert all(a >= b for a, b in zip(lengths, lengths[1:], strict=False))
    with pytest.raises(ValueError, match="draft_len must be >= 0"):
        guidance_prefix_len(0, 5, -1)


def _prefix_only(beta_nll: bool = True) -> tuple[LossInputs, torch.Tensor]:
    """Row: two teacher-prefix tokens, then one response token, then padding (nan)."""
    student = torch.tensor([[math.log(0.5), math.log(0.25), -1.0, math.nan]], requires_grad=True)
    teacher = torch.tensor([[math.nan, math.nan, -1.0, math.nan]])
    topk = torch.tensor([[[-0.1, -3.0]] * 4])
    inputs = LossInputs(
        student_logprobs_B_T=student,
        behavior_logprobs_B_T=teacher.clone(),
        teacher_logprobs_B_T=teacher,  # r = 0 on the response token
        teacher_topk_logprobs_B_T_K=topk,
        student_topk_logprobs_B_T_K=topk.clone(),
        student_cand_logprobs_B_T_C=topk.clone(),  # rkl_topk: the student's own top-C
        teacher_cand_logprobs_B_T_C=topk.clone(),
        teacher_entropy_B_T=torch.zeros(1, 4),
        student_entropy_B_T=torch.zeros(1, 4),
        trust_uniform_B_T=torch.zeros(1, 4),
        response_mask_B_T=torch.tensor([[False, False, True, False]]),
        prefix_mask_B_T=torch.tensor([[True, True, False, False]]),
    )
    return inputs, student


@pytest.mark.parametrize("method", list(LOSSES))
def test_every_method_adds_the_beta_weighted_prefix_likelihood(method: str) -> None:
    inputs, student = _prefix_only()
    cfg = LossConfig(method=method, beta_guidance=0.01)
    loss, metrics = LOSSES[method](inputs, cfg, 3.0)
    guidance = -0.01 * (math.log(0.5) + math.log(0.25)) / 3
    assert metrics["loss_guidance"] == pytest.approx(guidance)
    assert metrics["prefix_tokens"] == 2 and metrics["trained_tokens"] == 3
    assert metrics["guidance_nll_sum"] == pytest.approx(-(math.log(0.5) + math.log(0.25)))
    (grad,) = torch.autograd.grad(loss, student)
    assert grad[0, :2].tolist() == pytest.approx([-0.01 / 3, -0.01 / 3])
    assert grad[0, 3].item() == 0.0


def test_zero_beta_keeps_the_prefix_in_the_count_but_not_in_the_loss() -> None:
    inputs, student = _prefix_only()
    loss, metrics = LOSSES["sft"](inputs, LossConfig(method="sft", beta_guidance=0.0), 3.0)
    assert metrics["loss_guidance"] == 0.0 and metrics["trained_tokens"] == 3
    assert loss.item() == pytest.approx(1.0 / 3)  # -lp of the one response token, over 3
