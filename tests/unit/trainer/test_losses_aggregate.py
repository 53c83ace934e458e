"""Metric merging and summarising, and the finiteness helpers the loop uses to skip a step."""

from __future__ import annotations

import math

import pytest
import torch

from tropd.trainer.losses import (
    LossConfig,
    LossInputs,
    compute_loss,
    count_nonfinite,
    grads_finite,
    loss_finite,
    merge_metrics,
    summarize_metrics,
)


def test_merge_adds_keywise_and_summarize_turns_pairs_into_means() -> None:
    parts = [
        {"loss_pg": 0.5, "p_trust_sum": 1.5, "p_trust_count": 2.0, "response_tokens": 2.0},
        {"loss_pg": 0.25, "p_trust_sum": 0.5, "p_trust_count": 2.0, "fkl_sum": 0.0,
         "fkl_count": 0.0},
    ]  # fmt: skip
    totals = merge_metrics(parts)
    assert totals == {
        "loss_pg": 0.75, "p_trust_sum": 2.0, "p_trust_count": 4.0, "response_tokens": 2.0,
        "fkl_sum": 0.0, "fkl_count": 0.0,
    }  # fmt: skip
    summary = summarize_metrics(totals)
    assert summary["p_trust"] == 0.5 and summary["loss_pg"] == 0.75
    assert math.isnan(summary["fkl"])  # no such tokens this step
    assert not any(k.endswith(("_sum", "_count")) for k in summary)
    assert merge_metrics([]) == {}


def _inputs() -> LossInputs:
    nan, inf = math.nan, math.inf
    return LossInputs(
        student_logprobs_B_T=torch.tensor([[-1.0, -2.0, nan], [inf, -1.0, nan]]),
        behavior_logprobs_B_T=torch.tensor([[-1.0, nan, nan], [-1.0, -1.0, -inf]]),
        teacher_logprobs_B_T=torch.tensor([[-1.0, -inf, nan], [-1.0, -1.0, nan]]),
        teacher_topk_logprobs_B_T_K=torch.tensor(
            [[[-0.1, -inf], [-0.1, nan], [nan, nan]], [[-0.1, -2.0], [-0.1, -inf], [nan, nan]]]
        ),
        student_topk_logprobs_B_T_K=torch.tensor(
            [[[-0.1, nan], [-0.1, -0.2], [nan, nan]], [[nan, -2.0], [nan, nan], [nan, nan]]]
        ),
        response_mask_B_T=torch.tensor([[True, True, False], [False, True, False]]),
        prefix_mask_B_T=torch.tensor([[False, False, False], [True, False, False]]),
    )


def test_count_nonfinite_counts_only_what_the_losses_read() -> None:
    counts = count_nonfinite(_inputs())
    assert counts == {
        "student_logprobs_B_T": 1,  # the prefix slot (1, 0) is read; (0, 2), (1, 2) are padding
        "behavior_logprobs_B_T": 1,  # (0, 1); behavior is read on response tokens only
        "teacher_logprobs_B_T": 1,
        "teacher_topk_logprobs_B_T_K": 1,  # the nan at (0, 1, 1); -inf is a zero-mass candidate
        "student_topk_logprobs_B_T_K": 1,  # (1, 1, 0); (1, 1, 1) and (0, 0, 1) face a -inf teacher
    }
    inputs = _inputs()
    assert int(inputs.response_mask_B_T.sum() + inputs.prefix_B_T.sum()) == 4
    loss, _ = compute_loss(inputs, LossConfig(method="opd"), 4.0)
    assert not loss_finite(loss)  # the loop skips such a step


def test_grads_finite() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    unused = torch.nn.Parameter(torch.ones(2))
    assert grads_finite([weight, unused])  # no grads yet
    (weight * torch.tensor([1.0, 2.0])).sum().backward()
    assert grads_finite([weight, unused])
    (weight * torch.tensor([math.inf, 0.0])).sum().backward()
    assert not grads_finite([weight, unused])
    assert loss_finite(torch.tensor(1.0)) and not loss_finite(torch.tensor(math.nan))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_count_nonfinite_checks_optional_fields(value: float) -> None:
    inputs = LossInputs(
        student_logprobs_B_T=torch.zeros(1, 2),
        trust_uniform_B_T=torch.tensor([[value, value]]),
        outlier_weight_B_T=torch.tensor([[0.5, value]]),
        response_mask_B_T=torch.tensor([[True, False]]),
    )
    assert count_nonfinite(inputs) == {
        "student_logprobs_B_T": 0, "trust_uniform_B_T": 1, "outlier_weight_B_T": 0
    }  # fmt: skip
