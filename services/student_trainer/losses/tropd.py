"""TrOPD: plain OPD inside a per-token trust region, a bounded signal for outliers.

See docs/architecture.md#the-algorithm.

Trust test, no threshold hyperparameter: `p_trust = min(1, exp(lp_T - lp_S_old))` is the
speculative-decoding acceptance probability, and `M_t = u_t < p_trust` with `u_t` the loop's seeded
uniform draw, so the loss stays a pure, reproducible function. Trusted tokens get the OPD term with
weight 1 and no clipping; outliers get what `cfg.outlier` says, times a constant weight `w_t` in
[0, 1]: the rule `cfg.outlier_weighting` picks (`outlier_weights`), times the caller's
`outlier_weight_B_T` when one is given; 1 when neither is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputError, LossInputs, require
from .outlier_weights import outlier_rule_weights
from .reduce import finish
from .reverse_kl import topk_reverse_kl
from .sequence_trust import sequence_weights
from .terms import (
    masked,
    mean_stat,
    pg_token_loss,
    reward,
    teacher_top1_prob,
    topk_forward_kl,
    trust_probability,
)

_TOPK_MODES = ("topk_fkl", "topk_fkl_reward")


def trust_region_mask(inputs: LossInputs) -> Tensor:
    """`M_t`: response tokens that pass the trust test `u_t < min(1, pi_T(x_t) / pi_S_old(x_t))`.

    Args:
        inputs: needs teacher and behavior log-probs and `trust_uniform_B_T`.
    Returns:
        bool `[B, T]`, False outside the response mask.
    """
    response_B_T = inputs.response_mask_B_T
    p_trust_B_T = trust_probability(reward(inputs, response_B_T, "tropd"))
    uniform_B_T = masked(require(inputs, "trust_uniform_B_T", "tropd"), response_B_T)
    return response_B_T & (uniform_B_T < p_trust_B_T)


def tropd_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """TrOPD: OPD on trust-region tokens plus the configured outlier term on the others.

    Outlier term by `cfg.outlier`, with `w_t` = the `cfg.outlier_weighting` rule's weight times
    `outlier_weight_B_T` (each 1 when absent; both are constants):
      * `topk_fkl`: `w_t * sum_{v in TopK} p_hat_T(v) (log p_hat_T(v) - log pi_S(v))`, gradient
        through the student's top-k log-probs;
      * `topk_fkl_reward`: the same FKL_t without gradient, as advantage `A_t = -FKL_t` in the
        surrogate: `w_t * FKL_t * log pi_S(x_t)`;
      * `mask`: 0;
      * `clip`: `w_t * -max(r_t, tau) * log pi_S(x_t)`;
      * `rkl_topk`: `w_t * RKL_t`, the reverse KL over the student's own top-C (`reverse_kl`).
    Trusted tokens get `-r_t * log pi_S(x_t)` (`trust_signal=k1`) or `RKL_t` (`rkl_topk`).
    With `cfg.sequence_trust`, every term of row b is multiplied by its `sequence_weights` w_b.

    Args:
        inputs: teacher and behavior log-probs, `trust_uniform_B_T`; the top-k fields for the
            top-k modes and the `support` rule (also used, without gradient, for outlier metrics
            whenever present).
        cfg: supplies `outlier`, `outlier_weighting` and its constants, `tau`, `beta_guidance`.
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; terms `pg` (or `rkl`: trust region) and `outlier`;
        `outlier_weight_sum/_count` (mean w_t over outlier tokens) whenever a rule is on or a
        weight is given; `sequence_weight` with `sequence_trust`.
    """
    response_B_T = inputs.response_mask_B_T
    reward_B_T = reward(inputs, response_B_T, "tropd")
    trust_B_T = trust_region_mask(inputs)
    outlier_B_T = response_B_T & ~trust_B_T
    fkl_B_T = None  # outlier FKL: the top-k modes' term, and a metric whenever top-k is given
    if cfg.outlier in _TOPK_MODES or inputs.teacher_topk_logprobs_B_T_K is not None:
        fkl_B_T = topk_forward_kl(inputs, outlier_B_T, "tropd")
    outlier_loss_B_T = _outlier_token_loss(inputs, cfg, reward_B_T, outlier_B_T, fkl_B_T)
    weight_B_T = _outlier_weight(inputs, cfg, outlier_B_T)
    if cfg.trust_signal == "rkl_topk":  # the exact top-C reverse KL instead of the K1 sample
        terms = {"rkl": topk_reverse_kl(inputs, trust_B_T, "tropd", cfg.rkl_floor)}
    else:
        terms = {"pg": pg_token_loss(reward_B_T, inputs, trust_B_T)}
    terms["outlier"] = _weighted(weight_B_T, outlier_loss_B_T)
    stats = _tropd_stats(inputs, reward_B_T, trust_B_T, outlier_B_T, fkl_B_T)
    if cfg.outlier_weighting != "none" or inputs.outlier_weight_B_T is not None:
        # Near 0: the run has quietly become TrOPD with outlier=mask; near 1: plain TrOPD.
        stats |= mean_stat("outlier_weight", weight_B_T, outlier_B_T)
    if cfg.sequence_trust:
        row_B = sequence_weights(inputs, cfg)
        terms = {name: term_B_T * row_B[:, None] for name, term_B_T in terms.items()}
        stats |= mean_stat("sequence_weight", row_B[:, None].expand_as(reward_B_T), response_B_T)
    return finish(terms, stats, inputs, cfg, normalizer)


def _outlier_token_loss(
    inputs: LossInputs,
    cfg: LossConfig,
    reward_B_T: Tensor,
    outlier_B_T: Tensor,
    fkl_B_T: Tensor | None,
) -> Tensor:
    if cfg.outlier == "topk_fkl" and fkl_B_T is not None:
        return fkl_B_T
    if cfg.outlier == "topk_fkl_reward" and fkl_B_T is not None:
        return pg_token_loss(-fkl_B_T.detach(), inputs, outlier_B_T)
    if cfg.outlier == "rkl_topk":
        return topk_reverse_kl(inputs, outlier_B_T, "tropd", cfg.rkl_floor)
    if cfg.outlier == "clip":
        return pg_token_loss(reward_B_T.clamp(min=cfg.tau), inputs, outlier_B_T)
    return torch.zeros_like(reward_B_T)


def _weighted(weight_B_T: Tensor, term_B_T: Tensor) -> Tensor:
    """`weight * term`, exactly 0 where the weight is 0 (even if the term is inf there); a nan
    weight (a rule fed a nan teacher log-prob) stays nan, so the loop skips the step."""
    return torch.where(weight_B_T == 0.0, 0.0, weight_B_T * term_B_T)


def _outlier_weight(inputs: LossInputs, cfg: LossConfig, outlier_B_T: Tensor) -> Tensor:
    """w_t as a constant, 0 off outliers: the rule's weight times the caller's, each 1 when
    absent. The caller's weight is checked; a rule's is in [0, 1] by construction."""
    rule_B_T = outlier_rule_weights(inputs, cfg)
    weight_B_T = outlier_B_T.float() if rule_B_T is None else masked(rule_B_T, outlier_B_T)
    if inputs.outlier_weight_B_T is None:
        return weight_B_T
    given_B_T = masked(inputs.outlier_weight_B_T.detach(), outlier_B_T)
    in_range_B_T = (given_B_T >= 0.0) & (given_B_T <= 1.0)
    if not bool(in_range_B_T.all()):
        bad = given_B_T[~in_range_B_T][0].item()
        raise LossInputError(f"outlier_weight_B_T must lie in [0, 1] at outlier tokens; got {bad}")
    return weight_B_T * given_B_T


def _tropd_stats(
    inputs: LossInputs,
    reward_B_T: Tensor,
    trust_B_T: Tensor,
    outlier_B_T: Tensor,
    fkl_B_T: Tensor | None,
) -> dict[str, Tensor]:
    """Trust fraction, reverse KL on trusted tokens, and what the outliers look like."""
    stats = mean_stat("trust_frac", trust_B_T.float(), inputs.response_mask_B_T)
    stats |= mean_stat("reverse_kl_trust", -reward_B_T, trust_B_T)
    if fkl_B_T is not None:
        stats |= mean_stat("outlier_fkl", fkl_B_T, outlier_B_T)
        top1_B_T = teacher_top1_prob(inputs, outlier_B_T)
        stats |= mean_stat("outlier_teacher_top1_prob", top1_B_T, outlier_B_T)
    if inputs.teacher_entropy_B_T is not None:
        stats |= mean_stat("outlier_teacher_entropy", inputs.teacher_entropy_B_T, outlier_B_T)
    return stats
