"""Hand-computable cases for the baselines, and the surrogates' gradients in expectation:
summing a loss over every possible sampled token, weighted by pi_S, must give the exact
divergence gradient."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from tropd.trainer.losses import LOSSES, LossConfig, LossInputs, entropy_top_threshold

LOG = math.log


def _two_tokens(**extra: Tensor) -> tuple[LossInputs, Tensor]:
    """Two response tokens: rewards r = log 2 and -10; student log-probs log 0.25 and log 0.5."""
    student = torch.tensor([[LOG(0.25), LOG(0.5)]], requires_grad=True)
    behavior = student.detach().clone()
    inputs = LossInputs(
        student_logprobs_B_T=student,
        behavior_logprobs_B_T=behavior,
        teacher_logprobs_B_T=behavior + torch.tensor([[LOG(2.0), -10.0]]),
        response_mask_B_T=torch.tensor([[True, True]]),
        **extra,
    )
    return inputs, student


def _grad(loss: Tensor, leaf: Tensor) -> list[float]:
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad.flatten().tolist()


@pytest.mark.parametrize(
    ("method", "tau", "advantages"),
    [
        ("opd", -5.0, [LOG(2.0), -10.0]),
        ("clip", -5.0, [LOG(2.0), -5.0]),
        ("mask", -5.0, [LOG(2.0), 0.0]),
        ("clip", 1.0, [1.0, 1.0]),
    ],
)
def test_opd_family_by_hand(method: str, tau: float, advantages: list[float]) -> None:
    inputs, student = _two_tokens()
    loss, metrics = LOSSES[method](inputs, LossConfig(method=method, tau=tau), 4.0)
    expected = -(advantages[0] * LOG(0.25) + advantages[1] * LOG(0.5)) / 4
    assert loss.item() == pytest.approx(expected)
    assert _grad(loss, student) == pytest.approx([-a / 4 for a in advantages])
    assert metrics["reverse_kl_sum"] == pytest.approx(-LOG(2.0) + 10.0)


def test_sft_is_the_mean_nll() -> None:
    inputs, student = _two_tokens()
    loss, metrics = LOSSES["sft"](inputs, LossConfig(method="sft"), 2.0)
    assert loss.item() == pytest.approx(-(LOG(0.25) + LOG(0.5)) / 2)
    assert _grad(loss, student) == pytest.approx([-0.5, -0.5])
    assert metrics["loss_sft"] == pytest.approx(loss.item())


def _topk(student_K: Tensor) -> dict[str, Tensor]:
    """Teacher top-2 at both positions: 0.6, 0.2 (renormalised 0.75, 0.25)."""
    return {
        "teacher_topk_logprobs_B_T_K": torch.tensor([[[LOG(0.6), LOG(0.2)]] * 2]),
        "student_topk_logprobs_B_T_K": student_K,
    }


def test_eopd_adds_fkl_only_where_the_teacher_is_unsure() -> None:
    student_K = torch.tensor([[[LOG(0.5), LOG(0.25)]] * 2], requires_grad=True)
    inputs, student = _two_tokens(
        teacher_entropy_B_T=torch.tensor([[0.2, 1.0]]), **_topk(student_K)
    )
    loss, metrics = LOSSES["eopd"](inputs, LossConfig(method="eopd"), 2.0)
    fkl = 0.75 * LOG(0.75 / 0.5)
    opd = -(LOG(2.0) * LOG(0.25) - 10.0 * LOG(0.5))
    assert loss.item() == pytest.approx((opd + fkl) / 2)
    (g_topk,) = torch.autograd.grad(loss, student_K)
    torch.testing.assert_close(g_topk, torch.tensor([[[0.0, 0.0], [-0.375, -0.125]]]))
    assert metrics["high_entropy_frac_sum"] == 1 and metrics["fkl_sum"] == pytest.approx(fkl)


def test_fkl_topk_by_hand_and_zero_mass_candidates_skipped() -> None:
    student_K = torch.tensor([[[LOG(0.5), LOG(0.25), LOG(0.1)]] * 2], requires_grad=True)
    teacher_K = torch.tensor([[[LOG(0.6), LOG(0.2), -math.inf]] * 2])
    inputs, _ = _two_tokens(
        teacher_topk_logprobs_B_T_K=teacher_K, student_topk_logprobs_B_T_K=student_K
    )
    loss, _ = LOSSES["fkl_topk"](inputs, LossConfig(method="fkl_topk"), 2.0)
    assert loss.item() == pytest.approx(0.75 * LOG(0.75 / 0.5))
    (g_topk,) = torch.autograd.grad(loss, student_K)
    torch.testing.assert_close(g_topk, torch.tensor([[[-0.375, -0.125, 0.0]] * 2]))


@pytest.mark.parametrize(
    ("fraction", "selected"), [(0.2, [2]), (0.4, [2, 4]), (1.0, [0, 1, 2, 3, 4])]
)
def test_entropy_top20_selects_the_highest_entropy_tokens(
    fraction: float, selected: list[int]
) -> None:
    entropy = torch.tensor([[0.1, 0.5, 0.9, 0.3, 0.7, 5.0]])  # the last slot is padding
    student = torch.full((1, 6), LOG(0.5), requires_grad=True)
    inputs = LossInputs(
        student_logprobs_B_T=student,
        behavior_logprobs_B_T=student.detach(),
        teacher_logprobs_B_T=student.detach() - 1.0,  # r = -1 everywhere
        student_entropy_B_T=entropy,
        response_mask_B_T=torch.tensor([[True] * 5 + [False]]),
    )
    cfg = LossConfig(method="entropy_top20", entropy_top_fraction=fraction)
    loss, metrics = LOSSES["entropy_top20"](inputs, cfg, 5.0)
    grads = _grad(loss, student)
    assert [i for i, g in enumerate(grads) if g != 0] == selected
    assert grads[selected[0]] == pytest.approx(1 / 5)  # d(-A * lp_S / N) with A = r = -1
    assert metrics["selected_frac_sum"] == len(selected)


def test_entropy_threshold_edge_cases() -> None:
    assert entropy_top_threshold([], [], 0.2) == math.inf
    empty = torch.zeros(1, 3, dtype=torch.bool)
    assert entropy_top_threshold([torch.ones(1, 3)], [empty], 0.2) == math.inf
    ties = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    assert entropy_top_threshold([ties], [ties >= 0], 0.2) == 1.0  # all three tied tokens pass
    # 15 tokens * 0.2 is 3.0000000000000004 in binary; the cut must still be the 3rd largest.
    values = torch.arange(15.0)[None]
    assert entropy_top_threshold([values], [values >= 0], 0.2) == 12.0


# ------------------------------------------------------------ gradients in expectation, full vocab


def _every_token(logits: Tensor, teacher_V: Tensor) -> LossInputs:
    """One row per vocabulary token x: the student 'sampled' x; top-k = the whole vocabulary."""
    student_V = torch.log_softmax(logits, dim=-1)
    vocab = logits.shape[0]
    ids = torch.arange(vocab)
    order = teacher_V.argsort(descending=True)
    return LossInputs(
        student_logprobs_B_T=student_V[ids][:, None],
        behavior_logprobs_B_T=student_V.detach()[ids][:, None],
        teacher_logprobs_B_T=teacher_V[ids][:, None],
        teacher_topk_ids_B_T_K=order.expand(vocab, 1, vocab),
        teacher_topk_logprobs_B_T_K=teacher_V[order].expand(vocab, 1, vocab),
        student_topk_logprobs_B_T_K=student_V[order].expand(vocab, 1, vocab),
        teacher_entropy_B_T=torch.full((vocab, 1), 9.0),
        response_mask_B_T=torch.ones(vocab, 1, dtype=torch.bool),
    )


def _expected_gradient(method: str, logits: Tensor, teacher_V: Tensor) -> Tensor:
    """sum_x pi_S(x) * grad(loss on the row that sampled x): the surrogate's expected gradient."""
    inputs = _every_token(logits, teacher_V)
    cfg = LossConfig(method=method, jsd_beta=0.3)
    per_row = [LOSSES[method](_row(inputs, i), cfg, 1.0)[0] for i in range(logits.shape[0])]
    weights = torch.softmax(logits, dim=-1).detach()
    (grad,) = torch.autograd.grad((weights * torch.stack(per_row)).sum(), logits)
    return grad


def _row(inputs: LossInputs, i: int) -> LossInputs:
    values = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    rows = {k: v[i : i + 1] for k, v in values.items() if isinstance(v, Tensor)}
    return dataclasses.replace(inputs, **rows)


def _kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    return (p_log.exp() * (p_log - q_log)).sum()


@pytest.mark.parametrize("method", ["opd", "fkl_topk", "jsd", "eopd"])
def test_surrogate_gradient_in_expectation_is_the_exact_divergence_gradient(method: str) -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()
    teacher_V = torch.log_softmax(2 * torch.randn(6, generator=gen, dtype=torch.float64), dim=-1)
    student_V = torch.log_softmax(logits, dim=-1)
    beta = 0.3
    log_m = torch.logaddexp(LOG(beta) + teacher_V, LOG(1 - beta) + student_V)
    exact = {
        "opd": _kl(student_V, teacher_V),
        "fkl_topk": _kl(teacher_V, student_V),
        "jsd": beta * _kl(teacher_V, log_m) + (1 - beta) * _kl(student_V, log_m),
        "eopd": _kl(student_V, teacher_V) + _kl(teacher_V, student_V),  # entropy 9 > threshold
    }[method]
    (want,) = torch.autograd.grad(exact, logits)
    got = _expected_gradient(method, logits, teacher_V)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
