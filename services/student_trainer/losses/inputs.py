"""`LossInputs`: everything a loss reads for one micro-batch, validated once on construction.

Shapes: `B` rows (completions), `T` positions, right-padded; position t of a row holds a token of
the response (or of a teacher-written guidance prefix, see `prefix_mask_B_T`), already aligned by
the caller: every `*_B_T` tensor scores the same token x_t. `K` is the teacher's top-k width, `C`
the student's own top-k width (the candidate ids the teacher scored for `rkl_topk`).
Values at positions outside the masks are never read (they may hold garbage such as nan or -inf).
Knows nothing about models, tokenizers or the teacher service: tensors in, checks out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


class LossInputError(ValueError):
    """Inputs that cannot feed the configured loss: wrong shape, dtype, or a missing field."""


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    """One micro-batch of completions, as the losses see it.

    Required: `student_logprobs_B_T` and `response_mask_B_T`; the rest is optional because each
    loss reads a different subset (`registry.needs_*` says which). A loss raises `LossInputError`
    naming the missing field.
    """

    student_logprobs_B_T: Tensor
    """log pi_S(x_t) from the current student forward, with grad."""
    response_mask_B_T: Tensor
    """bool: on-policy response tokens to train on (no padding, no guidance prefix)."""
    behavior_logprobs_B_T: Tensor | None = None
    """log pi_S(x_t) recorded at rollout time (treated as a constant)."""
    teacher_logprobs_B_T: Tensor | None = None
    """log pi_T(x_t) from the teacher (constant). Read on response tokens, and also on guidance-
    prefix tokens by TrOPD's `surprise` and `prefix_gate` outlier weightings."""
    teacher_topk_ids_B_T_K: Tensor | None = None
    """Integer ids of the teacher's top-k at each position, sorted by log-prob, descending."""
    teacher_topk_logprobs_B_T_K: Tensor | None = None
    """Teacher full-softmax log-probs of those ids (not renormalised); -inf marks a candidate
    with zero teacher mass, which the losses skip."""
    student_topk_logprobs_B_T_K: Tensor | None = None
    """log pi_S(v) for the teacher's top-k ids v, from the student's full softmax, with grad."""
    student_cand_logprobs_B_T_C: Tensor | None = None
    """log pi_S(v) at the student's own top-C ids v at each position (the `candidates` the
    teacher was asked to score; `rkl_topk`), from the student's full softmax, with grad."""
    teacher_cand_logprobs_B_T_C: Tensor | None = None
    """Teacher full-softmax log-probs at those same ids (constant, not renormalised)."""
    teacher_entropy_B_T: Tensor | None = None
    """Teacher entropy in nats at each position (constant)."""
    student_entropy_B_T: Tensor | None = None
    """Student entropy in nats at each position (constant)."""
    trust_uniform_B_T: Tensor | None = None
    """Uniform [0, 1) draws for TrOPD's trust test, made by the loop from a seeded generator."""
    prefix_mask_B_T: Tensor | None = None
    """bool: teacher-written guidance-prefix tokens (off-policy); None means none."""
    outlier_weight_B_T: Tensor | None = None
    """TrOPD: per-token weight in [0, 1] on the outlier term (constant); None means 1. It
    multiplies the weight of `LossConfig.outlier_weighting`'s rule when one is on."""
    start_logprobs_B_T: Tensor | None = None
    """log pi_start(x_t) from the frozen starting student (constant), for the KL anchor."""
    anchor_coef: float = 0.0
    """This step's weight beta_t on the KL anchor to the starting student (`anchor`); 0 = off."""
    student_entropy_threshold: float | None = None
    """`entropy_top20`: the step-wide entropy cut from `entropy_top_threshold` over all
    micro-batches of the step; None means the cut is taken over this micro-batch alone."""

    def __post_init__(self) -> None:
        _check_shapes(self)

    @property
    def prefix_B_T(self) -> Tensor:
        """The guidance-prefix mask, all False when none was given."""
        if self.prefix_mask_B_T is None:
            return torch.zeros_like(self.response_mask_B_T)
        return self.prefix_mask_B_T


def require(inputs: LossInputs, field: str, loss: str) -> Tensor:
    """The named optional tensor, or a `LossInputError` that names the field and the loss.

    Args:
        inputs: one micro-batch.
        field: a `LossInputs` field name.
        loss: the loss that needs it (for the message).
    Returns:
        The tensor.
    """
    value = getattr(inputs, field)
    if value is None:
        raise LossInputError(f"loss {loss!r} needs {field}, which is None")
    return value


def _check_shapes(inputs: LossInputs) -> None:
    lp = inputs.student_logprobs_B_T
    if lp.dim() != 2 or not lp.is_floating_point():
        raise LossInputError(
            f"student_logprobs_B_T must be a 2-D float tensor, got {tuple(lp.shape)} {lp.dtype}"
        )
    shape_B_T = tuple(lp.shape)
    k_width: int | None = None
    c_width: int | None = None  # the student's top-C: its own width, independent of K
    for field in dataclasses.fields(inputs):
        value = getattr(inputs, field.name)
        if not isinstance(value, Tensor):
            continue
        if field.name.endswith("_B_T_K"):
            k_width = _check_topk_field(field.name, value, shape_B_T, k_width)
        elif field.name.endswith("_B_T_C"):
            c_width = _check_topk_field(field.name, value, shape_B_T, c_width)
        elif tuple(value.shape) != shape_B_T:
            raise LossInputError(f"{field.name} has shape {tuple(value.shape)}, want {shape_B_T}")
        elif field.name.endswith("mask_B_T") and value.dtype != torch.bool:
            raise LossInputError(f"{field.name} must be bool, got {value.dtype}")
        elif not field.name.endswith("mask_B_T") and not value.is_floating_point():
            raise LossInputError(f"{field.name} must be floating point, got {value.dtype}")
    if (inputs.teacher_topk_logprobs_B_T_K is None) != (inputs.student_topk_logprobs_B_T_K is None):
        raise LossInputError(
            "teacher_topk_logprobs_B_T_K and student_topk_logprobs_B_T_K must both be given or "
            "both be None"
        )
    if (inputs.teacher_cand_logprobs_B_T_C is None) != (inputs.student_cand_logprobs_B_T_C is None):
        raise LossInputError(
            "teacher_cand_logprobs_B_T_C and student_cand_logprobs_B_T_C must both be given or "
            "both be None"
        )
    prefix = inputs.prefix_mask_B_T
    if prefix is not None and bool((prefix & inputs.response_mask_B_T).any()):
        raise LossInputError(
            "prefix_mask_B_T and response_mask_B_T overlap; a token is one or the other"
        )


def _check_topk_field(
    name: str, value: Tensor, shape_B_T: tuple[int, ...], k_width: int | None
) -> int:
    if value.dim() != 3 or tuple(value.shape[:2]) != shape_B_T or value.shape[2] < 1:
        raise LossInputError(f"{name} has shape {tuple(value.shape)}, want {shape_B_T} + (K>=1,)")
    if k_width is not None and value.shape[2] != k_width:
        w = name[-1]  # K: the teacher's top-k fields, C: the student's own top-C fields
        raise LossInputError(
            f"{name} has {w}={value.shape[2]}, other _{w} fields have {w}={k_width}"
        )
    is_ids = name.endswith("ids_B_T_K")
    if is_ids and (value.is_floating_point() or value.dtype == torch.bool):
        raise LossInputError(f"{name} must be an integer tensor, got {value.dtype}")
    if not is_ids and not value.is_floating_point():
        raise LossInputError(f"{name} must be floating point, got {value.dtype}")
    return value.shape[2]
