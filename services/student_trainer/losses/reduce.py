"""From per-token terms to `(loss, metrics)`: the one place the normalizer is applied.

Every loss builds a dict of float32 `[B, T]` terms and a dict of mergeable statistics, then
calls `finish`, which adds the guidance term (every method gets it when prefix tokens exist)
and the KL anchor to the starting student (when the trainer passes its log-probs),
sums each term, divides by the step-wide normalizer and turns the statistics into floats with
one device sync.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .anchor import anchor_terms
from .config import LossConfig
from .guidance import guidance_stats, guidance_token_loss
from .inputs import LossInputError, LossInputs
from .terms import mean_stat, reward, trust_probability


def finish(
    terms: dict[str, Tensor],
    stats: dict[str, Tensor],
    inputs: LossInputs,
    cfg: LossConfig,
    normalizer: float,
) -> tuple[Tensor, dict[str, float]]:
    """Sum the per-token terms (plus guidance) and divide by the step's trained-token count.

    Args:
        terms: name -> float32 `[B, T]` per-token loss, 0 where the term does not apply.
        stats: method-specific mergeable statistics (scalar tensors).
        inputs: the micro-batch (for guidance and the shared diagnostics).
        cfg: the loss config.
        normalizer: total trained tokens of the whole optimizer step (every response token of
            every micro-batch, prefix included: `batch.trained_tokens`); 0 is allowed (an
            all-masked step) and gives loss 0.
    Returns:
        `(loss, metrics)`: a float32 scalar with grad, and floats that add across micro-batches
        (`loss_<term>` are already divided by the normalizer; `<x>_sum`/`<x>_count` pairs become
        means in `aggregate.summarize_metrics`).
    """
    if not math.isfinite(normalizer) or normalizer < 0:
        raise LossInputError(f"normalizer must be a finite count >= 0, got {normalizer}")
    # An all-masked step has nothing to divide; its sums are exactly 0, so 1 keeps them 0.
    denominator = max(float(normalizer), 1.0)
    terms = {**terms, "guidance": guidance_token_loss(inputs, cfg)}
    if inputs.start_logprobs_B_T is not None:  # the KL anchor: only while its weight is on
        terms["anchor"], anchor_stats = anchor_terms(inputs)
        stats = {**stats, **anchor_stats}
    sums = {name: term_B_T.sum() for name, term_B_T in terms.items()}
    loss = torch.stack(list(sums.values())).sum() / denominator
    metric_tensors = {
        "loss_total": loss.detach(),
        **{f"loss_{name}": value.detach() / denominator for name, value in sums.items()},
        "response_tokens": inputs.response_mask_B_T.sum().float(),
        "prefix_tokens": inputs.prefix_B_T.sum().float(),
        **shared_stats(inputs),
        **guidance_stats(inputs),
        **stats,
    }
    values = torch.stack([value.detach().float() for value in metric_tensors.values()]).tolist()
    metrics = dict(zip(metric_tensors, values, strict=True))
    metrics["trained_tokens"] = metrics["response_tokens"] + metrics["prefix_tokens"]
    if metrics["trained_tokens"] > normalizer:
        raise LossInputError(
            f"normalizer {normalizer} is below this micro-batch's {metrics['trained_tokens']:.0f} "
            "trained tokens; pass the step total over all micro-batches"
        )
    return loss, metrics


def shared_stats(inputs: LossInputs) -> dict[str, Tensor]:
    """Health diagnostics every method logs when the inputs allow (response tokens only).

    Mean p_trust and the K1 reverse-KL estimate `lp_S - lp_T` need behavior and teacher
    log-probs; the entropies need their fields.
    """
    response_B_T = inputs.response_mask_B_T
    stats: dict[str, Tensor] = {}
    if inputs.teacher_logprobs_B_T is not None and inputs.behavior_logprobs_B_T is not None:
        reward_B_T = reward(inputs, response_B_T, "metrics")
        stats |= mean_stat("p_trust", trust_probability(reward_B_T), response_B_T)
        stats |= mean_stat("reverse_kl", -reward_B_T, response_B_T)
    if inputs.student_entropy_B_T is not None:
        stats |= mean_stat("student_entropy", inputs.student_entropy_B_T, response_B_T)
    if inputs.teacher_entropy_B_T is not None:
        stats |= mean_stat("teacher_entropy", inputs.teacher_entropy_B_T, response_B_T)
    return stats
