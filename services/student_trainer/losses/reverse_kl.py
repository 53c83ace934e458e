"""Reverse KL over the student's own top-C tokens, the tail as one bucket: `rkl_topk`.

At each position the student's C most likely ids (recorded at rollout time, from the same
weights the update differentiates: one optimizer step per rollout batch) are sent to the teacher
as `candidates`, which scores them from its full softmax. With `p = pi_S`, `q = pi_T`:

    RKL_t = sum_{v in TopC_S} p(v) (log p(v) - log q(v)) + p_tail (log p_tail - log q_tail),
    p_tail = 1 - sum_{v in TopC_S} p(v),   q_tail = 1 - sum_{v in TopC_S} q(v).

Why a tail bucket rather than renormalising over the top-C: it is the exact KL between the two
distributions coarsened to C + 1 outcomes, so it is >= 0, 0 only where they agree on that
partition, never above the full reverse KL (data processing) and equal to it as C grows. A
renormalised top-C KL is blind to mass moving out of the top-C: the student could lower it by
shifting probability onto tokens the teacher rejects, as long as they leave its top-C, and it
ignores a teacher that puts its mass outside the student's top-C; the tail term charges both.
Unlike OPD's K1 reward (one sampled token), this is the exact sum, differentiated through the
student's log-probs at the C ids (the tail through `p_tail`).

`floor` (`LossConfig.rkl_floor`) bounds each log-ratio `log q(v) - log p(v)` below at `floor`
(the tail's too) with the student side detached: a token the teacher finds near-impossible then
costs at most `-floor` nats per unit of student mass, not ~13-30.

Numerics: tails are clamped at 0 below (float round-off), and inside the logs at 1e-12 (-27.6
nats), so a top-C that covers all the mass gives a finite term and gradient. A teacher log-prob
of -inf at a candidate (zero mass) makes the term inf without a floor: the loop skips the step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputs, require
from .reduce import finish
from .sequence_trust import sequence_weights
from .terms import masked, mean_stat

_TINY = 1e-12  # tails inside the logs: -27.6 nats, far below any real tail


def topk_reverse_kl(
    inputs: LossInputs, mask_B_T: Tensor, loss: str, floor: float | None = None
) -> Tensor:
    """`RKL_t` over the student's own top-C plus the tail bucket, per position.

    Args:
        inputs: needs `student_cand_logprobs_B_T_C` (with grad) and `teacher_cand_logprobs_B_T_C`.
        mask_B_T: positions to compute at.
        loss: name of the calling loss, for error messages.
        floor: lower bound (nats, < 0) on each log-ratio `log q - log p`; None: exact.
    Returns:
        float32 `[B, T]`, 0 outside the mask, differentiable through the student's log-probs.
    """
    mask_B_T_C = mask_B_T.unsqueeze(-1)
    student_C = masked(require(inputs, "student_cand_logprobs_B_T_C", loss), mask_B_T_C)
    teacher_C = masked(require(inputs, "teacher_cand_logprobs_B_T_C", loss).detach(), mask_B_T_C)
    p_C = torch.where(mask_B_T_C, student_C.exp(), 0.0)
    q_C = torch.where(mask_B_T_C, teacher_C.exp(), 0.0)
    p_tail = torch.where(mask_B_T, (1.0 - p_C.sum(-1)).clamp(min=0.0), 0.0)
    q_tail = torch.where(mask_B_T, (1.0 - q_C.sum(-1)).clamp(min=0.0), 0.0)
    log_p_tail = p_tail.clamp(min=_TINY).log()
    log_q_tail = q_tail.clamp(min=_TINY).log()
    if floor is not None:
        teacher_C = torch.maximum(teacher_C, student_C.detach() + floor)
        log_q_tail = torch.maximum(log_q_tail, log_p_tail.detach() + floor)
    head_B_T = (p_C * (student_C - teacher_C)).sum(-1)
    tail_B_T = p_tail * (log_p_tail - log_q_tail)
    return torch.where(mask_B_T, head_B_T + tail_B_T, 0.0)


def rkl_topk_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """`rkl_topk`: the top-C reverse KL on every response token, no sampled-token term.

    Args:
        inputs: the two `_cand_` log-prob fields; teacher log-probs of the sampled tokens too
            when `cfg.sequence_trust` is on.
        cfg: `rkl_floor`, `sequence_trust` and its scale, the guidance weight.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `rkl`; `rkl` mean (and `sequence_weight` mean when on).
    """
    response_B_T = inputs.response_mask_B_T
    rkl_B_T = topk_reverse_kl(inputs, response_B_T, "rkl_topk", cfg.rkl_floor)
    stats = mean_stat("rkl", rkl_B_T, response_B_T)
    if cfg.sequence_trust:
        weight_B = sequence_weights(inputs, cfg)
        rkl_B_T = rkl_B_T * weight_B[:, None]
        stats |= mean_stat("sequence_weight", weight_B[:, None].expand_as(rkl_B_T), response_B_T)
    return finish({"rkl": rkl_B_T}, stats, inputs, cfg, normalizer)
