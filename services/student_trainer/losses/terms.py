"""Per-token building blocks shared by the losses: masking, rewards, the PG surrogate, top-k KL.

Every function returns float32 `[B, T]` tensors that are exactly 0 outside the mask it is given.
Inputs are read through `masked`, a `torch.where` that replaces unread slots by 0 *before* any
arithmetic, so garbage there (nan, -inf) reaches neither the values nor the gradients; a product
`x * mask` would not do: nan * 0 is nan, and so is the gradient of inf * 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import LossInputs, require


def masked(x: Tensor, mask: Tensor) -> Tensor:
    """`x` upcast to float32 where `mask`, exactly 0 elsewhere (gradient 0 there too).

    Args:
        x: any float tensor.
        mask: bool, broadcastable to `x`.
    Returns:
        float32 tensor of `x`'s shape.
    """
    return torch.where(mask, x.float(), 0.0)


def reward(inputs: LossInputs, mask_B_T: Tensor, loss: str) -> Tensor:
    """OPD's per-token reward `r_t = lp_T - lp_S_behavior` (the K1 reverse-KL estimate, negated).

    Args:
        inputs: needs `teacher_logprobs_B_T` and `behavior_logprobs_B_T`.
        mask_B_T: where to compute it.
        loss: name of the calling loss, for error messages.
    Returns:
        float32 `[B, T]`, no grad.
    """
    teacher_B_T = masked(require(inputs, "teacher_logprobs_B_T", loss), mask_B_T)
    behavior_B_T = masked(require(inputs, "behavior_logprobs_B_T", loss), mask_B_T)
    return (teacher_B_T - behavior_B_T).detach()


def trust_probability(reward_B_T: Tensor) -> Tensor:
    """Speculative-decoding acceptance probability `min(1, exp(r_t))` = min(1, pi_T / pi_S_old)."""
    return torch.exp(torch.clamp(reward_B_T, max=0.0))


def pg_token_loss(advantage_B_T: Tensor, inputs: LossInputs, mask_B_T: Tensor) -> Tensor:
    """Policy-gradient surrogate `-sg(A_t) * log pi_S(x_t)` on `mask_B_T`.

    Args:
        advantage_B_T: per-token advantage (treated as a constant).
        inputs: supplies `student_logprobs_B_T` (with grad).
        mask_B_T: tokens that get the term.
    Returns:
        float32 `[B, T]`, differentiable through the student log-probs.
    """
    student_B_T = masked(inputs.student_logprobs_B_T, mask_B_T)
    return torch.where(mask_B_T, -advantage_B_T.detach().float() * student_B_T, 0.0)


def topk_distributions(
    inputs: LossInputs, mask_B_T: Tensor, loss: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Teacher top-k distribution renormalised over its candidates, and the student's log-probs.

    A candidate is valid at a masked position unless the teacher gives it -inf (zero mass, e.g. a
    teacher that pads K beyond its vocabulary). A nan or +inf at a valid slot is *not* hidden: it
    makes the result non-finite, so the loop's finiteness check skips the step.

    Args:
        inputs: needs `teacher_topk_logprobs_B_T_K` and `student_topk_logprobs_B_T_K`.
        mask_B_T: positions to compute at.
        loss: name of the calling loss, for error messages.
    Returns:
        `(valid_B_T_K, log_p_hat_B_T_K, p_hat_B_T_K, student_B_T_K)`: float32, 0 at invalid slots;
        only `student_B_T_K` carries grad.
    """
    teacher_K = require(inputs, "teacher_topk_logprobs_B_T_K", loss).float().detach()
    student_K = require(inputs, "student_topk_logprobs_B_T_K", loss)
    valid_B_T_K = mask_B_T.unsqueeze(-1) & (teacher_K != float("-inf"))
    lse_B_T = torch.logsumexp(torch.where(valid_B_T_K, teacher_K, float("-inf")), dim=-1)
    lse_B_T = torch.where(valid_B_T_K.any(dim=-1), lse_B_T, 0.0)
    log_p_hat = torch.where(valid_B_T_K, teacher_K - lse_B_T.unsqueeze(-1), 0.0)
    p_hat = torch.where(valid_B_T_K, log_p_hat.exp(), 0.0)
    return valid_B_T_K, log_p_hat, p_hat, masked(student_K, valid_B_T_K)


def topk_forward_kl(inputs: LossInputs, mask_B_T: Tensor, loss: str) -> Tensor:
    """Top-k forward KL `sum_{v in TopK} p_hat_T(v) (log p_hat_T(v) - log pi_S(v))` per position.

    `p_hat_T` is the teacher renormalised over its top-k; `log pi_S(v)` comes from the student's
    full softmax, so this is a teacher-weighted soft cross-entropy (plus a constant) whose gradient
    flows into the student's top-k log-probs.

    Args:
        inputs: needs the two top-k log-prob fields.
        mask_B_T: positions to compute at.
        loss: name of the calling loss, for error messages.
    Returns:
        float32 `[B, T]`, 0 outside the mask, differentiable through `student_topk_logprobs_B_T_K`.
    """
    _, log_p_hat, p_hat, student_K = topk_distributions(inputs, mask_B_T, loss)
    return (p_hat * (log_p_hat - student_K)).sum(dim=-1)


def teacher_top1_prob(inputs: LossInputs, mask_B_T: Tensor) -> Tensor:
    """Teacher probability of its own top-1 candidate (full softmax), 0 outside the mask."""
    teacher_K = require(inputs, "teacher_topk_logprobs_B_T_K", "metrics")
    return torch.where(mask_B_T, masked(teacher_K[..., 0], mask_B_T).exp(), 0.0).detach()


def mean_stat(name: str, values_B_T: Tensor, mask_B_T: Tensor) -> dict[str, Tensor]:
    """A mergeable mean: `{name}_sum` over the mask and `{name}_count` of the mask (detached)."""
    return {
        f"{name}_sum": masked(values_B_T.detach(), mask_B_T).sum(),
        f"{name}_count": mask_B_T.sum().float(),
    }
