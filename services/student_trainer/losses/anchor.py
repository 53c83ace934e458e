"""The KL anchor to the starting student: `beta_t * KL(pi_S || pi_start)` on response tokens.

The rollout samples from the student, so the K1 estimate of that reverse KL's gradient is the
policy-gradient surrogate with reward `lp_start(x_t) - lp_S_behavior(x_t)`, the same estimator
OPD uses towards the teacher: `loss_t = -beta_t * sg(lp_start - lp_S_behavior) * log pi_S(x_t)`.
With OPD the two rewards add up, so the student is pulled towards the normalised geometric mix
`pi_T^(1/(1+beta)) * pi_start^(beta/(1+beta))` instead of the teacher alone: a slower walk from
its own format to the teacher's. `beta_t` (`LossInputs.anchor_coef`) is set per step by the
trainer (`LossConfig.anchor_kl`, decayed over `anchor_decay_steps`); guidance-prefix tokens are
the teacher's, not the student's samples, and get no anchor.
"""

from __future__ import annotations

from torch import Tensor

from .inputs import LossInputs, require
from .terms import masked, mean_stat, pg_token_loss


def anchor_terms(inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
    """The anchor's per-token term and its statistic, from one reading of the start's log-probs.

    Args:
        inputs: needs `start_logprobs_B_T` and `behavior_logprobs_B_T`; `anchor_coef` = beta_t.
    Returns:
        `-beta_t * sg(lp_start - lp_S_behavior) * log pi_S(x_t)` on response tokens (float32
        `[B, T]`, 0 elsewhere, differentiable through the student log-probs), and `anchor_kl`:
        the mean K1 estimate `lp_S - lp_start` of the KL to the start (how far the student has
        walked from it), whatever beta_t.
    """
    response_B_T = inputs.response_mask_B_T
    start_B_T = masked(require(inputs, "start_logprobs_B_T", "anchor_kl"), response_B_T)
    behavior_B_T = masked(require(inputs, "behavior_logprobs_B_T", "anchor_kl"), response_B_T)
    reward_B_T = (start_B_T - behavior_B_T).detach()
    term_B_T = pg_token_loss(inputs.anchor_coef * reward_B_T, inputs, response_B_T)
    return term_B_T, mean_stat("anchor_kl", -reward_B_T, response_B_T)
