"""`sft`: teacher-forced likelihood on teacher drafts, the supervised baseline
(docs/architecture.md#baselines).

The loop feeds the teacher's draft tokens as the "response" for this method, so the loss is the
mean negative log-likelihood `-log pi_S(x_t)` over `response_mask_B_T`; no teacher scores needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputs
from .reduce import finish
from .terms import masked


def sft_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """Negative log-likelihood of the (teacher-written) response tokens.

    Args:
        inputs: `student_logprobs_B_T` (with grad) and `response_mask_B_T`.
        cfg: the loss config (guidance weight, should prefix tokens also be given).
        normalizer: trained tokens of the whole optimizer step.
    Returns:
        `(loss, metrics)`; term `sft` (its `loss_sft` is the mean NLL when the normalizer counts
        exactly these tokens).
    """
    response_B_T = inputs.response_mask_B_T
    nll_B_T = torch.where(response_B_T, -masked(inputs.student_logprobs_B_T, response_B_T), 0.0)
    return finish({"sft": nll_B_T}, {}, inputs, cfg, normalizer)
