"""Student-trainer losses: pure tensor functions `(inputs, cfg, normalizer) -> (loss, metrics)`.

Knows nothing about models, rollouts or the teacher service: the loop gathers log-probs into a
`LossInputs` per micro-batch, counts the step's trained tokens (`batch.trained_tokens`: every
response token, guidance prefix included) into the normalizer, calls `LOSSES[cfg.method]` (or
`compute_loss`) on each micro-batch, and merges the metrics with `merge_metrics` /
`summarize_metrics`. docs/architecture.md#the-algorithm describes
every method.
"""

from .aggregate import count_nonfinite, grads_finite, loss_finite, merge_metrics, summarize_metrics
from .config import LossConfig, Method, Outlier, OutlierWeighting, TrustSignal
from .guidance import guidance_alpha, guidance_prefix_len
from .inputs import LossInputError, LossInputs
from .opd import entropy_top_threshold
from .outlier_weights import outlier_rule_weights
from .registry import (
    LOSSES,
    LossFn,
    compute_loss,
    needs_student_entropy,
    needs_student_topk,
    needs_teacher_entropy,
    needs_teacher_scores,
    needs_topk,
    needs_trust_uniform,
    unmet_teacher_needs,
)
from .tropd import trust_region_mask

__all__ = [
    "LOSSES",
    "LossConfig",
    "LossFn",
    "LossInputError",
    "LossInputs",
    "Method",
    "Outlier",
    "OutlierWeighting",
    "TrustSignal",
    "compute_loss",
    "count_nonfinite",
    "entropy_top_threshold",
    "grads_finite",
    "guidance_alpha",
    "guidance_prefix_len",
    "loss_finite",
    "merge_metrics",
    "needs_student_entropy",
    "needs_student_topk",
    "needs_teacher_entropy",
    "needs_teacher_scores",
    "needs_topk",
    "needs_trust_uniform",
    "outlier_rule_weights",
    "summarize_metrics",
    "trust_region_mask",
    "unmet_teacher_needs",
]
