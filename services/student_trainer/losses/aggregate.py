"""Step bookkeeping around the losses: merging micro-batch metrics and finiteness checks.

Metrics from a loss are additive floats: `loss_*` terms (already divided by the step
normalizer), token counts, and `<name>_sum` / `<name>_count` pairs. Merging adds them;
`summarize_metrics` turns the pairs into means once per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .inputs import LossInputs

_SUM, _COUNT = "_sum", "_count"
# Per-token fields the losses read on response tokens only; student log-probs are also read on
# the guidance prefix.
_RESPONSE_FIELDS = (
    "behavior_logprobs_B_T",
    "teacher_logprobs_B_T",
    "teacher_entropy_B_T",
    "student_entropy_B_T",
    "trust_uniform_B_T",
    "outlier_weight_B_T",
)


def merge_metrics(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise sum of micro-batch metric dicts (a key missing from a part counts as 0).

    Args:
        parts: the metrics returned by each loss call of one optimizer step.
    Returns:
        The step totals.
    """
    totals: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def summarize_metrics(totals: Mapping[str, float]) -> dict[str, float]:
    """Step totals -> loggable values: each `<x>_sum`/`<x>_count` pair becomes the mean `<x>`.

    Args:
        totals: merged metrics of one step.
    Returns:
        Means (nan when the count is 0: nothing of that kind this step) and the other totals
        unchanged.
    """
    out: dict[str, float] = {}
    for key, value in totals.items():
        if key.endswith(_SUM) and key[: -len(_SUM)] + _COUNT in totals:
            count = totals[key[: -len(_SUM)] + _COUNT]
            out[key[: -len(_SUM)]] = value / count if count > 0 else math.nan
        elif not (key.endswith(_COUNT) and key[: -len(_COUNT)] + _SUM in totals):
            out[key] = value
    return out


def count_nonfinite(inputs: LossInputs) -> dict[str, int]:
    """Non-finite values where the losses read them (garbage in unread slots is not counted).

    -inf in `teacher_topk_logprobs_B_T_K` is allowed (a zero-mass candidate, skipped by the
    losses); the student's top-k is checked only where the teacher's candidate is valid.

    Args:
        inputs: one micro-batch.
    Returns:
        Field name -> count, for every float field present.
    """
    response_B_T = inputs.response_mask_B_T
    read_B_T = response_B_T | inputs.prefix_B_T
    counts = {"student_logprobs_B_T": _bad(inputs.student_logprobs_B_T, read_B_T)}
    for name in _RESPONSE_FIELDS:
        value = getattr(inputs, name)
        if value is not None:
            counts[name] = _bad(value, response_B_T)
    teacher_K = inputs.teacher_topk_logprobs_B_T_K
    student_K = inputs.student_topk_logprobs_B_T_K
    if teacher_K is not None and student_K is not None:
        read_K = response_B_T.unsqueeze(-1).expand(teacher_K.shape)
        counts["teacher_topk_logprobs_B_T_K"] = _bad(teacher_K, read_K & (teacher_K != -math.inf))
        counts["student_topk_logprobs_B_T_K"] = _bad(student_K, read_K & (teacher_K != -math.inf))
    return counts


def grads_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every existing gradient is finite (the loop skips the step otherwise)."""
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(flags).all().item()) if flags else True


def loss_finite(loss: Tensor) -> bool:
    """Whether a loss value is finite (the loop skips the step otherwise)."""
    return bool(torch.isfinite(loss.detach()).all().item())


def _bad(value: Tensor, read: Tensor) -> int:
    return int((read & ~torch.isfinite(value.detach())).sum().item())
