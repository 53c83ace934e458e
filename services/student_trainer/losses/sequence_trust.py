"""Sequence-level trust: one weight per rollout, from how out of distribution the teacher finds it.

`w_b = exp(-E_b / scale)`, `E_b` the mean over the row's response tokens of the excess teacher
surprise `max(0, -lp_T(x_t) - c)` (`c` = `LossConfig.surprise_c`, `scale` =
`sequence_trust_scale`). Where TrOPD's per-token trust test and the `surprise` rule act inside a
row, this one scales the whole row: a rollout full of tokens the teacher would never write (the
student's own format, a derailed answer) moves the student less than one the teacher can judge.
A constant (no gradient); a row without response tokens gets 1 (it has no terms anyway).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputs, require
from .terms import masked


def sequence_weights(inputs: LossInputs, cfg: LossConfig) -> Tensor:
    """float32 `[B]` row weights in (0, 1].

    Args:
        inputs: needs `teacher_logprobs_B_T` (read on response tokens only).
        cfg: `surprise_c` and `sequence_trust_scale`.
    """
    response_B_T = inputs.response_mask_B_T
    teacher_B_T = masked(require(inputs, "teacher_logprobs_B_T", "sequence_trust"), response_B_T)
    excess_B_T = torch.where(response_B_T, (-teacher_B_T - cfg.surprise_c).clamp(min=0.0), 0.0)
    count_B = response_B_T.sum(-1).clamp(min=1).float()
    return torch.exp(-(excess_B_T.sum(-1) / count_B) / cfg.sequence_trust_scale).detach()
