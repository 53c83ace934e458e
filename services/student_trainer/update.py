"""One optimizer step over a step's rollouts: micro-batched forward, loss, backward, clip, AdamW.

The loss normaliser is the number of trained tokens in the whole step, so the update does not
depend on how the rollouts are split into micro-batches. A step whose loss or gradient is not
finite is counted and skipped, never applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from tropd.teacher.client import ScoredSequence
from tropd.trainer.alignment import gather_positions, response_index
from tropd.trainer.batch import MicroBatch, TrainSequence, collate, trained_tokens
from tropd.trainer.config import OptimConfig
from tropd.trainer.losses import (
    LOSSES,
    LossConfig,
    LossInputs,
    count_nonfinite,
    entropy_top_threshold,
    merge_metrics,
    summarize_metrics,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateResult:
    applied: bool
    grad_norm: float  # total L2 norm before clipping
    metrics: dict[str, float]


def _student_side(
    model: PreTrainedModel, mb: MicroBatch, device: torch.device
) -> dict[str, torch.Tensor]:
    """Student log-probs of the response tokens (with grad), at the teacher's top-k, and entropy."""
    logits_B_L_V = model(
        input_ids=mb.ids_B_L.to(device), attention_mask=mb.attention_B_L.to(device)
    ).logits
    idx_B_T, _ = response_index(
        mb.starts_B.to(device), mb.lengths_B.to(device), mb.response_ids_B_T.shape[1]
    )
    logprobs_B_T_V = torch.log_softmax(gather_positions(logits_B_L_V, idx_B_T).float(), dim=-1)
    out = {
        "student_logprobs_B_T": logprobs_B_T_V.gather(
            -1, mb.response_ids_B_T.to(device).unsqueeze(-1)
        ).squeeze(-1),
        "student_entropy_B_T": -(logprobs_B_T_V.exp() * logprobs_B_T_V).sum(-1).detach(),
    }
    if mb.teacher_topk_ids_B_T_K is not None:
        out["student_topk_logprobs_B_T_K"] = logprobs_B_T_V.gather(
            -1, mb.teacher_topk_ids_B_T_K.to(device)
        )
    return out


def _step_entropy_threshold(
    model: PreTrainedModel,
    batches: Sequence[MicroBatch],
    loss_cfg: LossConfig,
    device: torch.device,
) -> float | None:
    """`entropy_top20`'s cut over the whole step, so the selected tokens do not depend on the
    micro-batch split; it costs one extra no-grad forward, paid only when there are several."""
    if loss_cfg.method != "entropy_top20" or len(batches) < 2:
        return None  # one micro-batch: the loss takes the cut over it, which is the step
    with torch.no_grad():
        entropies = [_student_side(model, mb, device)["student_entropy_B_T"] for mb in batches]
    masks = [mb.response_mask_B_T.to(device) for mb in batches]
    return entropy_top_threshold(entropies, masks, loss_cfg.entropy_top_fraction)


def _loss_inputs(
    mb: MicroBatch,
    student: dict[str, torch.Tensor],
    uniform_B_T: torch.Tensor,
    device: torch.device,
    entropy_threshold: float | None,
) -> LossInputs:
    def dev(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return LossInputs(
        student_logprobs_B_T=student["student_logprobs_B_T"],
        behavior_logprobs_B_T=dev(mb.behavior_logprobs_B_T),
        teacher_logprobs_B_T=dev(mb.teacher_logprobs_B_T),
        teacher_topk_ids_B_T_K=dev(mb.teacher_topk_ids_B_T_K),
        teacher_topk_logprobs_B_T_K=dev(mb.teacher_topk_logprobs_B_T_K),
        student_topk_logprobs_B_T_K=student.get("student_topk_logprobs_B_T_K"),
        teacher_entropy_B_T=dev(mb.teacher_entropy_B_T),
        student_entropy_B_T=student["student_entropy_B_T"],
        trust_uniform_B_T=uniform_B_T.to(device),
        response_mask_B_T=mb.response_mask_B_T.to(device),
        prefix_mask_B_T=dev(mb.prefix_mask_B_T),
        student_entropy_threshold=entropy_threshold,
    )


def apply_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    sequences: Sequence[TrainSequence],
    scores: Sequence[ScoredSequence | None],
    loss_cfg: LossConfig,
    optim: OptimConfig,
    trust_generator: torch.Generator,
    pad_id: int,
) -> UpdateResult:
    """Accumulate gradients over micro-batches, then clip and step (or skip when non-finite).

    Args:
        sequences, scores: the step's rollouts and their teacher results, aligned.
        optim: grad_clip and micro_batch_size are read here; the optimizer already holds lr.
        trust_generator: seeded per step; the uniforms for the trust test are drawn for all rows
            at once, so they do not depend on the micro-batch split.
    Returns:
        Whether the step was applied, the pre-clip gradient norm, and the merged loss metrics.
    """
    device = next(model.parameters()).device
    loss_fn = LOSSES[loss_cfg.method]
    normalizer = float(max(trained_tokens(sequences), 1))
    width_T = max(s.response_len for s in sequences)
    uniform_N_T = torch.rand((len(sequences), width_T), generator=trust_generator)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    parts: list[dict[str, float]] = []
    step = optim.micro_batch_size
    starts = range(0, len(sequences), step)
    batches = [collate(sequences[lo : lo + step], scores[lo : lo + step], pad_id) for lo in starts]
    threshold = _step_entropy_threshold(model, batches, loss_cfg, device)
    for lo, mb in zip(starts, batches, strict=True):
        student = _student_side(model, mb, device)
        inputs = _loss_inputs(
            mb,
            student,
            uniform_N_T[lo : lo + mb.num_sequences, : mb.response_ids_B_T.shape[1]],
            device,
            threshold,
        )
        loss, metrics = loss_fn(inputs, loss_cfg, normalizer)
        loss.backward()
        parts.append({**metrics, "nonfinite_inputs": float(sum(count_nonfinite(inputs).values()))})
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim.grad_clip))
    merged = summarize_metrics(merge_metrics(parts))
    loss_total = merged.get("loss_total", 0.0)
    if not (math.isfinite(grad_norm) and math.isfinite(loss_total)):
        log.warning(
            "skipping step: non-finite loss %.4g or gradient norm %.4g (%d non-finite inputs)",
            loss_total,
            grad_norm,
            merged.get("nonfinite_inputs", 0),
        )
        optimizer.zero_grad(set_to_none=True)
        return UpdateResult(False, grad_norm, merged)
    optimizer.step()
    return UpdateResult(True, grad_norm, merged)
