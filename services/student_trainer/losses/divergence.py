"""Baselines that pull the student toward the teacher's top-k distribution: fkl_topk, jsd, eopd.

The teacher side always uses `p_hat_T`, the teacher renormalised over its top-k, against the
student's full-softmax log-probs at those ids, differentiated through the student (see
`terms.topk_distributions`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputs, require
from .reduce import finish
from .terms import masked, mean_stat, pg_token_loss, reward, topk_distributions, topk_forward_kl


def fkl_topk_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Top-k forward KL on every response token, no policy-gradient term.

    Args:
        inputs: needs the two top-k log-prob fields.
        cfg: the loss config (guidance weight).
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `fkl`; `fkl` mean.
    """
    response_B_T = inputs.response_mask_B_T
    fkl_B_T = topk_forward_kl(inputs, response_B_T, "fkl_topk")
    return finish(
        {"fkl": fkl_B_T}, mean_stat("fkl", fkl_B_T, response_B_T), inputs, cfg, normalizer
    )


def jsd_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Generalized JSD `beta KL(pi_T||M) + (1-beta) KL(pi_S||M)`, M = beta pi_T + (1-beta) pi_S.

    Teacher side, exact over the top-k, gradient through `log pi_S(v)` (which also enters M):
        `beta * sum_{v in TopK} p_hat_T(v) (log p_hat_T(v) - log m_hat(v))`,
        `m_hat(v) = beta p_hat_T(v) + (1 - beta) pi_S(v)`.
    Student side, one sample x_t ~ pi_S per position. Because M depends on the student,
        `grad KL(pi_S || M)
            = E_{x ~ pi_S}[grad log pi_S(x) * (log(pi_S(x)/m(x)) - (1-beta) pi_S(x)/m(x))]`
    (expand `grad sum_x pi_S log(pi_S/m)`; `sum_x grad pi_S = 0` removes the constant). So the
    surrogate is `(1 - beta) * sg(a_t) * log pi_S(x_t)` with
        `a_t = log(pi_S(x_t)/m(x_t)) - (1 - beta) pi_S(x_t)/m(x_t)`,
        `m(x_t) = beta pi_T(x_t) + (1 - beta) pi_S_old(x_t)`
    from the full-softmax log-probs of the sampled token. The first part of a_t is the K1
    estimate of KL(pi_S || M), bounded above by log(1/(1-beta)); the second, in [0, 1], is the
    exact correction for M's dependence on the student.

    Args:
        inputs: teacher and behavior log-probs and the two top-k log-prob fields.
        cfg: supplies `jsd_beta`.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; terms `jsd_teacher` and `jsd_student` (the surrogate); `jsd` = the
        per-token value estimate (teacher side + (1 - beta) * K1).
    """
    beta = cfg.jsd_beta
    response_B_T = inputs.response_mask_B_T
    teacher_side_B_T = beta * _jsd_teacher_side(inputs, beta, response_B_T)
    behavior_B_T = masked(require(inputs, "behavior_logprobs_B_T", "jsd"), response_B_T)
    teacher_B_T = masked(require(inputs, "teacher_logprobs_B_T", "jsd"), response_B_T)
    log_m_B_T = torch.logaddexp(math.log(beta) + teacher_B_T, math.log1p(-beta) + behavior_B_T)
    k1_B_T = behavior_B_T - log_m_B_T
    advantage_B_T = -(1.0 - beta) * (k1_B_T - (1.0 - beta) * k1_B_T.exp())
    terms = {
        "jsd_teacher": teacher_side_B_T,
        "jsd_student": pg_token_loss(advantage_B_T, inputs, response_B_T),
    }
    stats = mean_stat("jsd", teacher_side_B_T + (1.0 - beta) * k1_B_T, response_B_T)
    return finish(terms, stats, inputs, cfg, normalizer)


def _jsd_teacher_side(inputs: LossInputs, beta: float, mask_B_T: Tensor) -> Tensor:
    """`sum_{v in TopK} p_hat_T(v) (log p_hat_T(v) - log m_hat(v))` per position (without beta)."""
    valid_B_T_K, log_p_hat, p_hat, student_K = topk_distributions(inputs, mask_B_T, "jsd")
    log_m_hat = torch.logaddexp(math.log(beta) + log_p_hat, math.log1p(-beta) + student_K)
    return torch.where(valid_B_T_K, p_hat * (log_p_hat - log_m_hat), 0.0).sum(dim=-1)


def eopd_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Entropy-aware OPD: OPD on every token, plus the top-k forward KL where the teacher is unsure.

    The FKL term applies where the teacher's entropy exceeds `cfg.eopd_entropy_threshold` nats.

    Args:
        inputs: teacher and behavior log-probs, `teacher_entropy_B_T`, the top-k log-prob fields.
        cfg: supplies `eopd_entropy_threshold`.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; terms `pg` and `fkl`; `high_entropy_frac`, and `fkl` mean over the
        high-entropy tokens.
    """
    response_B_T = inputs.response_mask_B_T
    entropy_B_T = masked(require(inputs, "teacher_entropy_B_T", "eopd"), response_B_T)
    high_B_T = response_B_T & (entropy_B_T > cfg.eopd_entropy_threshold)
    fkl_B_T = topk_forward_kl(inputs, high_B_T, "eopd")
    terms = {
        "pg": pg_token_loss(reward(inputs, response_B_T, "eopd"), inputs, response_B_T),
        "fkl": fkl_B_T,
    }
    stats = mean_stat("high_entropy_frac", high_B_T.float(), response_B_T)
    stats |= mean_stat("fkl", fkl_B_T, high_B_T)
    return finish(terms, stats, inputs, cfg, normalizer)
