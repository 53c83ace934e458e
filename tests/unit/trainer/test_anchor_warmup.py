"""The KL anchor to the starting student (`loss.anchor_kl`: its term against a loop written from
losses/anchor.py's formula, its schedule, its config refusals) and the learning-rate warm-up."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

from tropd.trainer.config import OptimConfig
from tropd.trainer.losses import LOSSES, LossConfig, LossInputError, LossInputs
from tropd.trainer.start_anchor import StartAnchor
from tropd.trainer.update import set_learning_rate


def _inputs(anchor_coef: float) -> LossInputs:
    """B=3, T=4, ragged masks, a guidance prefix on row 0, nan outside the masks."""
    gen = torch.Generator().manual_seed(0)
    B, T = 3, 4
    mask = torch.arange(T)[None, :] < torch.tensor([4, 2, 1])[:, None]
    prefix = torch.zeros(B, T, dtype=torch.bool)
    prefix[0, 0] = True
    mask &= ~prefix
    student = -torch.rand(B, T, generator=gen) * 3
    teacher = -torch.rand(B, T, generator=gen) * 5
    start = -torch.rand(B, T, generator=gen) * 4
    garbage = mask | prefix
    return LossInputs(
        student_logprobs_B_T=torch.where(garbage, student, torch.nan).requires_grad_(True),
        behavior_logprobs_B_T=torch.where(mask, student, torch.nan),
        teacher_logprobs_B_T=torch.where(garbage, teacher, torch.nan),
        start_logprobs_B_T=torch.where(mask, start, torch.nan),
        anchor_coef=anchor_coef,
        trust_uniform_B_T=torch.rand(B, T, generator=gen),
        response_mask_B_T=mask,
        prefix_mask_B_T=prefix,
    )


def _naive_anchor(inputs: LossInputs, normalizer: float) -> torch.Tensor:
    """One response token at a time: -beta * (lp_start - lp_behavior) * lp_S, summed, / N."""
    assert inputs.start_logprobs_B_T is not None and inputs.behavior_logprobs_B_T is not None
    total = torch.zeros(())
    B, T = inputs.response_mask_B_T.shape
    for b in range(B):
        for t in range(T):
            if inputs.response_mask_B_T[b, t]:
                reward = inputs.start_logprobs_B_T[b, t] - inputs.behavior_logprobs_B_T[b, t]
                total = total - inputs.anchor_coef * reward * inputs.student_logprobs_B_T[b, t]
    return total / normalizer


@pytest.mark.parametrize("method", ["opd", "tropd", "mask"])
def test_anchor_term_matches_a_loop_in_value_and_gradient(method: str) -> None:
    normalizer = 9.0
    anchored = _inputs(0.7)
    cfg = LossConfig(method=method, outlier="mask", outlier_weighting="none")
    loss, metrics = LOSSES[method](anchored, cfg, normalizer)
    plain = dataclasses.replace(anchored, start_logprobs_B_T=None)  # the same leaf tensors
    loss_plain, metrics_plain = LOSSES[method](plain, cfg, normalizer)
    want = _naive_anchor(anchored, normalizer)
    assert metrics["loss_anchor"] == pytest.approx(want.item(), rel=1e-6)
    assert (loss - loss_plain).item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    assert "loss_anchor" not in metrics_plain
    (grad,) = torch.autograd.grad(loss - loss_plain, anchored.student_logprobs_B_T)
    (grad_want,) = torch.autograd.grad(want, anchored.student_logprobs_B_T)
    assert torch.allclose(grad, grad_want, atol=1e-7)
    assert not grad[anchored.prefix_B_T].any()  # teacher-written prefix tokens: no anchor
    # The logged K1 distance to the start: mean of lp_S - lp_start over response tokens.
    assert anchored.start_logprobs_B_T is not None and anchored.behavior_logprobs_B_T is not None
    m = anchored.response_mask_B_T
    distance = (anchored.behavior_logprobs_B_T[m] - anchored.start_logprobs_B_T[m]).mean()
    assert metrics["anchor_kl_sum"] / metrics["anchor_kl_count"] == pytest.approx(distance.item())


def test_anchor_term_is_zero_at_the_start() -> None:
    """While the student is its start, lp_S == lp_start: no pull, only the logged distance 0."""
    base = _inputs(1.0)
    at_start = dataclasses.replace(base, start_logprobs_B_T=base.behavior_logprobs_B_T)
    _, metrics = LOSSES["opd"](at_start, LossConfig(method="opd"), 9.0)
    assert metrics["loss_anchor"] == 0.0 and metrics["anchor_kl_sum"] == 0.0


def test_anchor_needs_behavior_logprobs() -> None:
    base = _inputs(1.0)
    missing = dataclasses.replace(base, behavior_logprobs_B_T=None, teacher_logprobs_B_T=None)
    with pytest.raises(LossInputError, match="'anchor_kl' needs behavior_logprobs_B_T"):
        LOSSES["sft"](missing, LossConfig(method="sft"), 9.0)


def test_anchor_schedule_decays_linearly_then_stays_off() -> None:
    model = torch.nn.Linear(1, 1)
    decaying = StartAnchor(model, 2.0, decay_steps=4)  # type: ignore[arg-type]
    assert [decaying.at(s).coef for s in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    constant = StartAnchor(model, 0.5, decay_steps=None)  # type: ignore[arg-type]
    assert {constant.at(s).coef for s in (0, 10, 10_000)} == {0.5}


def test_anchor_config_refusals() -> None:
    with pytest.raises(ValidationError, match="anchor_kl needs the student's own samples"):
        LossConfig(method="sft", anchor_kl=0.5)
    with pytest.raises(ValidationError, match="anchor_kl"):
        LossConfig(anchor_kl=-1.0)
    with pytest.raises(ValidationError, match="anchor_decay_steps"):
        LossConfig(anchor_kl=1.0, anchor_decay_steps=0)
    assert LossConfig(method="sft").anchor_kl == 0.0  # off by default, so sft stays valid


def test_warmup_rises_linearly_to_lr_and_depends_on_the_step_alone() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=123.0)
    optim = OptimConfig(lr=1e-3, warmup_steps=4)
    rates = [set_learning_rate(optimizer, optim, s) for s in range(6)]
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    # A resumed run (a fresh optimizer at step 2) sets the same rate as the uninterrupted one.
    fresh = torch.optim.AdamW([param], lr=1e-3)
    assert set_learning_rate(fresh, optim, 2) == pytest.approx(rates[2])
    assert set_learning_rate(fresh, OptimConfig(lr=1e-3), 0) == pytest.approx(1e-3)
    with pytest.raises(ValidationError, match="warmup_steps"):
        OptimConfig(warmup_steps=-1)
