"""Off-policy guidance: the prefix term and its cosine schedule.

See docs/architecture.md#guidance-prefixes.

The student continues on-policy from `prompt + draft[:l]`, where the draft was written by the
teacher. With x ~ pi_T the forward KL on those prefix tokens reduces (up to a constant) to
`-beta * log pi_S(x)`: a beta-weighted likelihood of the teacher's tokens. The schedule shrinks
the prefix from the full draft to nothing, so training ends fully on-policy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputs
from .terms import masked, mean_stat

# Guards floor() against cos() rounding: alpha * len landing at 4.9999999999 instead of 5.
_FLOOR_SLACK = 1e-9


def guidance_token_loss(inputs: LossInputs, cfg: LossConfig) -> Tensor:
    """`-beta * log pi_S(x_t)` on guidance-prefix tokens, 0 elsewhere.

    Args:
        inputs: `student_logprobs_B_T` (with grad) and `prefix_mask_B_T` (may be None).
        cfg: supplies `beta_guidance`.
    Returns:
        float32 `[B, T]`.
    """
    prefix_B_T = inputs.prefix_B_T
    student_B_T = masked(inputs.student_logprobs_B_T, prefix_B_T)
    return torch.where(prefix_B_T, -cfg.beta_guidance * student_B_T, 0.0)


def guidance_stats(inputs: LossInputs) -> dict[str, Tensor]:
    """Mean student NLL of the teacher's prefix tokens (how foreign the guidance still is)."""
    prefix_B_T = inputs.prefix_B_T
    return mean_stat("guidance_nll", -masked(inputs.student_logprobs_B_T, prefix_B_T), prefix_B_T)


def guidance_alpha(step: int, total_steps: int) -> float:
    """Cosine annealing factor `alpha = (1 + cos(pi * step / total_steps)) / 2`.

    Args:
        step: optimizer step, >= 0; steps past `total_steps` count as `total_steps` (alpha 0),
            so a run that trains longer than its schedule stays on-policy.
        total_steps: schedule length, >= 1.
    Returns:
        alpha in [0, 1]: 1 at step 0, 0 at `total_steps`, non-increasing in between.
    Raises:
        ValueError: step < 0 or total_steps < 1.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    progress = min(step, total_steps) / total_steps
    return (1.0 + math.cos(math.pi * progress)) / 2.0


def guidance_prefix_len(step: int, total_steps: int, draft_len: int) -> int:
    """Maximum guidance-prefix length `floor(alpha(step) * draft_len)`, in [0, draft_len].

    Args:
        step: optimizer step, >= 0.
        total_steps: schedule length, >= 1.
        draft_len: tokens in the teacher's draft, >= 0.
    Returns:
        Number of draft tokens to put before the student's continuation.
    Raises:
        ValueError: a negative `draft_len`, or a bad step/total (see `guidance_alpha`).
    """
    if draft_len < 0:
        raise ValueError(f"draft_len must be >= 0, got {draft_len}")
    length = math.floor(guidance_alpha(step, total_steps) * draft_len + _FLOOR_SLACK)
    return max(0, min(draft_len, length))
