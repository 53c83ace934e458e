"""The OPD family: plain OPD and the baselines that only reshape its per-token reward or token set.

All are the policy-gradient surrogate `-sg(A_t) * log pi_S(x_t)` with `A_t` built from the reward
`r_t = lp_T - lp_S_behavior` (the K1 reverse-KL estimate, negated). There is no importance
ratio: the rollout is used for exactly one update, so `lp_S_behavior` and the current `lp_S` agree
up to numerics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputError, LossInputs, require
from .reduce import finish
from .terms import mean_stat, pg_token_loss, reward


def opd_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Plain OPD: `loss_t = -sg(r_t) * log pi_S(x_t)` on every response token.

    Args:
        inputs: needs teacher and behavior log-probs.
        cfg: the loss config (guidance weight).
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `pg`.
    """
    response_B_T = inputs.response_mask_B_T
    reward_B_T = reward(inputs, response_B_T, "opd")
    terms = {"pg": pg_token_loss(reward_B_T, inputs, response_B_T)}
    return finish(terms, {}, inputs, cfg, normalizer)


def clip_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Static clip (REOPOLD-style): OPD with the reward floored, `A_t = max(r_t, tau)`.

    Args:
        inputs: needs teacher and behavior log-probs.
        cfg: supplies `tau`.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `pg`; `below_tau_frac` = share of tokens whose reward was floored.
    """
    response_B_T = inputs.response_mask_B_T
    reward_B_T = reward(inputs, response_B_T, "clip")
    terms = {"pg": pg_token_loss(reward_B_T.clamp(min=cfg.tau), inputs, response_B_T)}
    stats = mean_stat("below_tau_frac", (reward_B_T < cfg.tau).float(), response_B_T)
    return finish(terms, stats, inputs, cfg, normalizer)


def mask_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Static mask: OPD where `r_t >= tau`, nothing elsewhere (dropped tokens stay in the mean).

    Args:
        inputs: needs teacher and behavior log-probs.
        cfg: supplies `tau`.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `pg`; `below_tau_frac` = share of tokens dropped.
    """
    response_B_T = inputs.response_mask_B_T
    reward_B_T = reward(inputs, response_B_T, "mask")
    kept_B_T = response_B_T & (reward_B_T >= cfg.tau)
    terms = {"pg": pg_token_loss(reward_B_T, inputs, kept_B_T)}
    stats = mean_stat("below_tau_frac", (~kept_B_T).float(), response_B_T)
    return finish(terms, stats, inputs, cfg, normalizer)


def entropy_top20_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """OPD only on the highest-student-entropy response tokens (top `entropy_top_fraction`).

    The cut is per optimizer step when the loop passes `inputs.student_entropy_threshold` (from
    `entropy_top_threshold` over all micro-batches of the step), else per micro-batch. Unselected
    tokens stay in the normalizer, like `mask`'s dropped tokens.

    Args:
        inputs: needs teacher and behavior log-probs and `student_entropy_B_T`.
        cfg: supplies `entropy_top_fraction`.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `pg`; `selected_frac` = share of response tokens selected.
    """
    response_B_T = inputs.response_mask_B_T
    entropy_B_T = require(inputs, "student_entropy_B_T", "entropy_top20")
    threshold = inputs.student_entropy_threshold
    if threshold is None:
        threshold = entropy_top_threshold([entropy_B_T], [response_B_T], cfg.entropy_top_fraction)
    selected_B_T = response_B_T & (entropy_B_T.float() >= threshold)
    reward_B_T = reward(inputs, response_B_T, "entropy_top20")
    terms = {"pg": pg_token_loss(reward_B_T, inputs, selected_B_T)}
    stats = mean_stat("selected_frac", selected_B_T.float(), response_B_T)
    return finish(terms, stats, inputs, cfg, normalizer)


def entropy_top_threshold(
    entropies: Sequence[Tensor], masks: Sequence[Tensor], top_fraction: float
) -> float:
    """The entropy cut that selects the top `top_fraction` of masked tokens.

    With n masked tokens it returns the ceil(top_fraction * n)-th largest entropy; selecting
    `entropy >= cut` then takes that many tokens, a few more on exact ties.

    Args:
        entropies: `[B, T]` entropy tensors (one per micro-batch of the step).
        masks: matching bool `[B, T]` response masks.
        top_fraction: in (0, 1].
    Returns:
        The cut in nats; +inf when no token is masked (nothing selected).
    """
    if not 0.0 < top_fraction <= 1.0:
        raise LossInputError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    values = [e.detach().float()[m] for e, m in zip(entropies, masks, strict=True)]
    flat = torch.cat(values) if values else torch.empty(0)
    if flat.numel() == 0:
        return math.inf
    # The slack keeps float error from rounding up: 0.2 * 15 is 3.0000000000000004 in binary.
    count = max(1, math.ceil(top_fraction * flat.numel() - 1e-9))
    return float(torch.topk(flat, count).values[-1].item())
