"""Per-token weights `w_t` on TrOPD's outlier term: how far to trust the teacher's correction.

TrOPD sends the tokens where teacher and student disagree most to a bounded teacher-side term. When
the student's own earlier tokens have pushed the teacher out of its depth, a near-one-hot teacher
is confidently wrong and that term becomes supervised training on wrong targets (plain TrOPD's
collapse at lr 3e-5 in docs/results.md). These rules scale it per token,
`loss_t = M_t*OPD_t + (1 - M_t)*w_t*outlier_t`:

* `surprise`: `S_t = sum_{j<t} max(0, -lp_T(x_j) - c)`, `w_t = exp(-S_t / s0)`;
* `support`: `w_t = min(1, pi_S(y*) / pi_T(y*))`, `y*` the teacher's top-1 at t;
* `prefix_gate`: `w_t = 0` once some `j < t` had `lp_T(x_j) < threshold`, else 1.

"Earlier tokens" are the row's response and guidance-prefix tokens before t: the context the
teacher was asked to judge, which the prefix is part of. Padding never counts, and neither does t
itself, whose own disagreement the trust test already measured.

Weights are constants (built from detached inputs), float32, in [0, 1] on response tokens and 0
elsewhere. Unread slots are replaced by 0 before any arithmetic, so garbage there (nan, inf)
reaches neither the weight nor, through the running sums, later positions. A nan at a read slot
is not hidden: it makes the weight nan (for the running rules, for the rest of the row), so the
loss turns non-finite and the loop skips the step. `lp_T = -inf` (zero teacher mass) is infinite
surprise: the weight is 0 after it. Knows nothing about the loss terms: tensors in, weights out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import LossConfig
from .inputs import LossInputs, require
from .terms import masked


def outlier_rule_weights(inputs: LossInputs, cfg: LossConfig) -> Tensor | None:
    """The weight `cfg.outlier_weighting` asks for, or None for `none` (plain TrOPD, w_t = 1).

    Args:
        inputs: one micro-batch; `surprise` and `prefix_gate` read `teacher_logprobs_B_T` on
            response and prefix tokens, `support` the two top-k log-prob fields' column 0.
        cfg: supplies `outlier_weighting` and the rule's constants.
    Returns:
        float32 `[B, T]` constant, in [0, 1] on response tokens, 0 elsewhere; or None.
    """
    if cfg.outlier_weighting == "surprise":
        return surprise_weights(inputs, cfg.surprise_c, cfg.surprise_s0)
    if cfg.outlier_weighting == "support":
        return support_weights(inputs)
    if cfg.outlier_weighting == "prefix_gate":
        return prefix_gate_weights(inputs, cfg.prefix_gate_threshold)
    return None


def accumulated_surprise(inputs: LossInputs, c: float) -> Tensor:
    """`S_t = sum_{j<t} max(0, -lp_T(x_j) - c)` over the row's earlier response and prefix tokens.

    Args:
        inputs: needs `teacher_logprobs_B_T`.
        c: nats of surprise per token that count as ordinary (>= 0).
    Returns:
        float32 `[B, T]`, >= 0 (inf after a token the teacher gave zero mass), no grad; defined at
        every position, padding included (it is what the earlier read tokens sum to).
    """
    read_B_T = _read_mask(inputs)
    teacher_B_T = masked(_teacher_logprobs(inputs, "surprise"), read_B_T)
    excess_B_T = torch.where(read_B_T, (-teacher_B_T - c).clamp(min=0.0), 0.0)
    return earlier_sum(excess_B_T)


def surprise_weights(inputs: LossInputs, c: float, s0: float) -> Tensor:
    """`w_t = exp(-S_t / s0)`: the teacher's accumulated surprise discounts its later corrections.

    Args:
        inputs: needs `teacher_logprobs_B_T`.
        c: see `accumulated_surprise`.
        s0: scale in nats of accumulated excess surprise (> 0).
    Returns:
        float32 `[B, T]` in (0, 1] on response tokens (0 after infinite surprise), 0 elsewhere.
    """
    weight_B_T = torch.exp(-accumulated_surprise(inputs, c) / s0)
    return torch.where(inputs.response_mask_B_T, weight_B_T, 0.0)


def prefix_gate_weights(inputs: LossInputs, threshold: float) -> Tensor:
    """`w_t = 0` once an earlier response or prefix token had `lp_T < threshold`, else 1.

    Args:
        inputs: needs `teacher_logprobs_B_T`.
        threshold: log-prob in nats (< 0).
    Returns:
        float32 `[B, T]`, 0 or 1 on response tokens (nan after a nan `lp_T`), 0 elsewhere.
    """
    read_B_T = _read_mask(inputs)
    teacher_B_T = masked(_teacher_logprobs(inputs, "prefix_gate"), read_B_T)
    gated_B_T = earlier_sum((read_B_T & (teacher_B_T < threshold)).float()) > 0
    poisoned_B_T = earlier_sum(teacher_B_T.isnan().float()) > 0
    weight_B_T = torch.where(poisoned_B_T, torch.nan, torch.where(gated_B_T, 0.0, 1.0))
    return torch.where(inputs.response_mask_B_T, weight_B_T, 0.0)


def support_weights(inputs: LossInputs) -> Tensor:
    """`w_t = min(1, pi_S(y*) / pi_T(y*))`, `y*` the teacher's argmax at t, in log space.

    The teacher's correction is trusted only as far as the student already finds its target
    plausible. `y*` is column 0 of the teacher's top-k, which is sorted by teacher log-prob.

    Args:
        inputs: needs `teacher_topk_logprobs_B_T_K` and `student_topk_logprobs_B_T_K` (the latter
            is read detached: no gradient flows through the weight).
    Returns:
        float32 `[B, T]` in [0, 1] on response tokens, 0 elsewhere.
    """
    loss = "tropd (outlier_weighting=support)"
    response_B_T = inputs.response_mask_B_T
    teacher_K = require(inputs, "teacher_topk_logprobs_B_T_K", loss)
    student_K = require(inputs, "student_topk_logprobs_B_T_K", loss)
    teacher_B_T = masked(teacher_K[..., 0].detach(), response_B_T)
    student_B_T = masked(student_K[..., 0].detach(), response_B_T)
    weight_B_T = torch.exp((student_B_T - teacher_B_T).clamp(max=0.0))
    return torch.where(response_B_T, weight_B_T, 0.0)


def earlier_sum(values_B_T: Tensor) -> Tensor:
    """`out[b, t] = sum_{j<t} values[b, j]`: an exclusive running sum along positions.

    Shifts right before summing rather than subtracting `values` from an inclusive sum: an inf at
    j then gives inf after j, not `inf - inf = nan` at j itself.
    """
    shifted_B_T = torch.nn.functional.pad(values_B_T, (1, 0))[:, :-1]
    return shifted_B_T.cumsum(dim=1)


def _read_mask(inputs: LossInputs) -> Tensor:
    return inputs.response_mask_B_T | inputs.prefix_B_T


def _teacher_logprobs(inputs: LossInputs, rule: str) -> Tensor:
    loss = f"tropd (outlier_weighting={rule})"
    return require(inputs, "teacher_logprobs_B_T", loss).detach()
