"""`rkl_topk` (reverse KL over the student's own top-C with a tail bucket), its floor, sequence-
level trust, and TrOPD's `trust_signal=rkl_topk` / `outlier=rkl_topk`, each against a naive,
loop-based reference written here from the formulas in docs/architecture.md."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from tropd.trainer.losses import LossConfig, LossInputError, LossInputs, trust_region_mask
from tropd.trainer.losses.reverse_kl import rkl_topk_loss, topk_reverse_kl
from tropd.trainer.losses.sequence_trust import sequence_weights
from tropd.trainer.losses.tropd import tropd_loss


def _random_inputs(seed: int, dtype: torch.dtype = torch.float32) -> tuple[LossInputs, Tensor]:
    """B=3 rows, T=5, V=12, C=4: the student's own top-4 ids from a real softmax, a teacher
    softmax at those ids, ragged response masks, garbage (nan) outside them."""
    gen = torch.Generator().manual_seed(seed)
    B, T, V, C = 3, 5, 12, 4
    student_V = torch.log_softmax(torch.randn(B, T, V, generator=gen) * 2, -1)
    teacher_V = torch.log_softmax(torch.randn(B, T, V, generator=gen) * 3, -1)
    ids = student_V.topk(C, -1).indices
    student_C = student_V.gather(-1, ids).to(dtype).requires_grad_(True)
    teacher_C = teacher_V.gather(-1, ids).to(dtype)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    sampled = student_V[..., 0]
    inputs = LossInputs(
        student_logprobs_B_T=sampled.to(dtype).requires_grad_(True),
        behavior_logprobs_B_T=sampled.to(dtype),
        teacher_logprobs_B_T=torch.where(mask, teacher_V[..., 0], torch.nan).to(dtype),
        student_cand_logprobs_B_T_C=torch.where(mask[..., None], student_C, torch.nan),
        teacher_cand_logprobs_B_T_C=torch.where(mask[..., None], teacher_C, torch.nan),
        trust_uniform_B_T=torch.rand(B, T, generator=gen),
        response_mask_B_T=mask,
    )
    return inputs, student_C


def _naive_rkl(inputs: LossInputs, b: int, t: int, floor: float | None) -> Tensor:
    """One position, one candidate at a time, from the docstring's formula."""
    assert inputs.student_cand_logprobs_B_T_C is not None
    assert inputs.teacher_cand_logprobs_B_T_C is not None
    s = inputs.student_cand_logprobs_B_T_C[b, t].float()
    q = inputs.teacher_cand_logprobs_B_T_C[b, t].float()
    total = torch.zeros(())
    p_sum, q_sum = torch.zeros(()), 0.0
    for c in range(s.shape[0]):
        log_q = q[c].item()
        if floor is not None:
            log_q = max(log_q, s[c].item() + floor)
        total = total + s[c].exp() * (s[c] - log_q)
        p_sum = p_sum + s[c].exp()
        q_sum += math.exp(q[c].item())
    p_tail = torch.clamp(1 - p_sum, min=0.0)
    q_tail = max(1 - q_sum, 0.0)
    log_p_tail = torch.log(torch.clamp(p_tail, min=1e-12))
    log_q_tail = math.log(max(q_tail, 1e-12))
    if floor is not None:
        log_q_tail = max(log_q_tail, log_p_tail.item() + floor)
    return total + p_tail * (log_p_tail - log_q_tail)


@pytest.mark.parametrize("floor", [None, -1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_rkl_matches_the_naive_loop_value_and_gradient(seed: int, floor: float | None) -> None:
    inputs, student_C = _random_inputs(seed)
    mask = inputs.response_mask_B_T
    fast = topk_reverse_kl(inputs, mask, "test", floor)
    naive = torch.zeros_like(fast)
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[b, t]:
                naive[b, t] = _naive_rkl(inputs, b, t, floor)
    torch.testing.assert_close(fast, naive)
    assert not fast[~mask].any()
    (g_fast,) = torch.autograd.grad(fast.sum(), student_C, retain_graph=True)
    (g_naive,) = torch.autograd.grad(naive.sum(), student_C)
    torch.testing.assert_close(g_fast, g_naive)
    assert torch.isfinite(g_fast).all()


def test_rkl_is_the_exact_reverse_kl_when_the_top_c_is_the_whole_vocabulary() -> None:
    gen = torch.Generator().manual_seed(3)
    p = torch.log_softmax(torch.randn(1, 1, 6, generator=gen), -1)
    q = torch.log_softmax(torch.randn(1, 1, 6, generator=gen), -1)
    inputs = LossInputs(
        student_logprobs_B_T=p[..., 0],
        response_mask_B_T=torch.tensor([[True]]),
        student_cand_logprobs_B_T_C=p,
        teacher_cand_logprobs_B_T_C=q,
    )
    exact = (p.exp() * (p - q)).sum()
    assert topk_reverse_kl(inputs, inputs.response_mask_B_T, "test").item() == pytest.approx(
        exact.item(), abs=1e-5
    )


def test_rkl_tail_bucket_charges_mass_the_teacher_puts_elsewhere() -> None:
    """Student top-1 of 0.5 where the teacher has 0.5 too: renormalised over the top-1 both are
    1 and a top-C KL would be 0; the tails (0.5 vs 0.5) agree, so 0. Move the teacher's head
    mass into its tail: the tail term sees it."""
    s = torch.log(torch.tensor([[[0.5]]]))
    same = LossInputs(student_logprobs_B_T=s[..., 0], response_mask_B_T=torch.tensor([[True]]),
                      student_cand_logprobs_B_T_C=s, teacher_cand_logprobs_B_T_C=s)  # fmt: skip
    assert topk_reverse_kl(same, same.response_mask_B_T, "t").item() == pytest.approx(0.0)
    q = torch.log(torch.tensor([[[0.1]]]))
    moved = LossInputs(student_logprobs_B_T=s[..., 0], response_mask_B_T=torch.tensor([[True]]),
                       student_cand_logprobs_B_T_C=s, teacher_cand_logprobs_B_T_C=q)  # fmt: skip
    want = 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9)
    assert topk_reverse_kl(moved, moved.response_mask_B_T, "t").item() == pytest.approx(want)


def test_rkl_all_masked_is_zero_not_nan() -> None:
    inputs, student_C = _random_inputs(0)
    none = torch.zeros_like(inputs.response_mask_B_T)
    out = topk_reverse_kl(inputs, none, "test")
    assert out.abs().sum().item() == 0
    loss, _ = rkl_topk_loss(
        LossInputs(**{**inputs.__dict__, "response_mask_B_T": none}), LossConfig(), 0.0
    )
    assert loss.item() == 0.0


def test_rkl_topk_loss_bfloat16_inputs_match_float32() -> None:
    fp32, _ = _random_inputs(2)
    bf16, _ = _random_inputs(2, torch.bfloat16)
    cfg = LossConfig(method="rkl_topk")
    a, _ = rkl_topk_loss(fp32, cfg, 9.0)
    b, _ = rkl_topk_loss(bf16, cfg, 9.0)
    assert b.dtype == torch.float32
    assert a.item() == pytest.approx(b.item(), rel=0.05)


def test_rkl_topk_needs_both_candidate_fields() -> None:
    inputs, _ = _random_inputs(0)
    with pytest.raises(LossInputError, match="student_cand_logprobs_B_T_C"):
        LossInputs(**{**inputs.__dict__, "student_cand_logprobs_B_T_C": None})
    bare = LossInputs(student_logprobs_B_T=inputs.student_logprobs_B_T,
                      response_mask_B_T=inputs.response_mask_B_T)  # fmt: skip
    with pytest.raises(LossInputError, match="rkl_topk"):
        rkl_topk_loss(bare, LossConfig(method="rkl_topk"), 9.0)


def test_sequence_weights_match_a_loop() -> None:
    inputs, _ = _random_inputs(1)
    cfg = LossConfig(sequence_trust=True, surprise_c=0.5, sequence_trust_scale=0.7)
    fast = sequence_weights(inputs, cfg)
    assert inputs.teacher_logprobs_B_T is not None
    for b in range(fast.shape[0]):
        excess = [max(0.0, -inputs.teacher_logprobs_B_T[b, t].item() - 0.5)
                  for t in range(5) if inputs.response_mask_B_T[b, t]]  # fmt: skip
        assert fast[b].item() == pytest.approx(math.exp(-sum(excess) / len(excess) / 0.7))


def test_rkl_topk_loss_with_sequence_trust_weights_each_row() -> None:
    inputs, _ = _random_inputs(0)
    plain, _ = rkl_topk_loss(inputs, LossConfig(method="rkl_topk"), 9.0)
    cfg = LossConfig(method="rkl_topk", sequence_trust=True)
    weighted, metrics = rkl_topk_loss(inputs, cfg, 9.0)
    rkl = topk_reverse_kl(inputs, inputs.response_mask_B_T, "t")
    want = (rkl * sequence_weights(inputs, cfg)[:, None]).sum() / 9.0
    assert weighted.item() == pytest.approx(want.item())
    assert weighted.item() < plain.item()
    assert 0 < metrics["sequence_weight_sum"] / metrics["sequence_weight_count"] <= 1


def test_tropd_trust_signal_rkl_replaces_k1_on_trusted_tokens_only() -> None:
    inputs, student_C = _random_inputs(4)
    cfg = LossConfig(trust_signal="rkl_topk", outlier="mask", outlier_weighting="none")
    loss, metrics = tropd_loss(inputs, cfg, 9.0)
    trust = trust_region_mask(inputs)
    assert trust.any() and (inputs.response_mask_B_T & ~trust).any()
    want = topk_reverse_kl(inputs, trust, "t").sum() / 9.0
    assert loss.item() == pytest.approx(want.item())
    assert metrics["loss_rkl"] == pytest.approx(want.item()) and "loss_pg" not in metrics
    (g,) = torch.autograd.grad(loss, student_C)
    assert not g[~trust].any() and g[trust].any()


def test_tropd_outlier_rkl_topk_on_outliers_only() -> None:
    inputs, _ = _random_inputs(4)
    cfg = LossConfig(outlier="rkl_topk", outlier_weighting="none")
    _, metrics = tropd_loss(inputs, cfg, 9.0)
    outlier = inputs.response_mask_B_T & ~trust_region_mask(inputs)
    want = topk_reverse_kl(inputs, outlier, "t").sum() / 9.0
    assert metrics["loss_outlier"] == pytest.approx(want.item())
