"""The explicit method registry, and what each method needs from the teacher and the loop.

The trainer picks `LOSSES[cfg.method]` and asks the teacher only for what `needs_*` says, so
a teacher backend without top-k (the `tgi` backend) can be refused up front with a message that
names the loss (`unmet_teacher_needs`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import Tensor

from .config import LossConfig
from .divergence import eopd_loss, fkl_topk_loss, jsd_loss
from .inputs import LossInputs
from .opd import clip_loss, entropy_top20_loss, mask_loss, opd_loss
from .reverse_kl import rkl_topk_loss
from .sft import sft_loss
from .tropd import tropd_loss

LossFn = Callable[[LossInputs, LossConfig, float], tuple[Tensor, dict[str, float]]]

LOSSES: Mapping[str, LossFn] = MappingProxyType(
    {
        "opd": opd_loss,
        "tropd": tropd_loss,
        "clip": clip_loss,
        "mask": mask_loss,
        "fkl_topk": fkl_topk_loss,
        "jsd": jsd_loss,
        "eopd": eopd_loss,
        "entropy_top20": entropy_top20_loss,
        "sft": sft_loss,
        "rkl_topk": rkl_topk_loss,
    }
)


def compute_loss(
    inputs: LossInputs, cfg: LossConfig, normalizer: float
) -> tuple[Tensor, dict[str, float]]:
    """`LOSSES[cfg.method](inputs, cfg, normalizer)`; see each loss for its terms and metrics."""
    return LOSSES[cfg.method](inputs, cfg, normalizer)


def needs_topk(cfg: LossConfig) -> bool:
    """Whether the loss reads the teacher's top-k (ids and log-probs) and the student's at them."""
    if cfg.method == "tropd":
        # `support` reads the teacher's top-1 and the student's log-prob of it, whatever the mode.
        return cfg.outlier in ("topk_fkl", "topk_fkl_reward") or cfg.outlier_weighting == "support"
    return cfg.method in ("fkl_topk", "jsd", "eopd")


def needs_student_topk(cfg: LossConfig) -> bool:
    """Whether the loss reads the teacher's log-probs at the student's own top-k ids
    (`candidates`): the rollout records those ids, the teacher scores them."""
    if cfg.method == "tropd":
        return cfg.trust_signal == "rkl_topk" or cfg.outlier == "rkl_topk"
    return cfg.method == "rkl_topk"


def needs_teacher_entropy(cfg: LossConfig) -> bool:
    """Whether the loss reads `teacher_entropy_B_T` (TrOPD also logs it at outliers if given)."""
    return cfg.method == "eopd"


def needs_student_entropy(cfg: LossConfig) -> bool:
    """Whether the loss reads `student_entropy_B_T` (every method logs its mean if given)."""
    return cfg.method == "entropy_top20"


def needs_teacher_scores(cfg: LossConfig) -> bool:
    """Whether the loss reads the teacher's grades (sampled-token log-probs and what `needs_*`
    ask for; all but sft)."""
    return cfg.method != "sft"


def needs_trust_uniform(cfg: LossConfig) -> bool:
    """Whether the loop must draw `trust_uniform_B_T` (TrOPD's trust test)."""
    return cfg.method == "tropd"


def unmet_teacher_needs(
    cfg: LossConfig, *, has_topk: bool, has_entropy: bool, has_candidates: bool = True
) -> str | None:
    """Why a teacher with these capabilities cannot serve this loss, or None if it can.

    Args:
        cfg: the loss config.
        has_topk: the teacher returns top-k ids and log-probs at scored positions.
        has_entropy: the teacher returns per-position entropy.
        has_candidates: the teacher returns log-probs at caller-chosen ids (`candidates`).
    Returns:
        A message naming the loss and the missing capability, or None.
    """
    missing = []
    if needs_topk(cfg) and not has_topk:
        missing.append(f"top-k log-probs (k={cfg.topk})")
    if needs_teacher_entropy(cfg) and not has_entropy:
        missing.append("per-position entropy")
    if needs_student_topk(cfg) and not has_candidates:
        missing.append(f"log-probs at given candidate ids (student_topk={cfg.student_topk})")
    if not missing:
        return None
    loss = cfg.method if cfg.method != "tropd" else f"tropd with outlier={cfg.outlier!r}"
    if cfg.method == "tropd" and cfg.outlier_weighting != "none":
        loss += f" and outlier_weighting={cfg.outlier_weighting!r}"
    return (
        f"loss {loss} needs the teacher's {' and '.join(missing)}, which this teacher backend "
        "does not provide; use a backend that does (e.g. hf), or a loss that needs only "
        "sampled-token log-probs (opd, clip, mask, tropd with outlier='mask' or 'clip' and "
        "outlier_weighting other than 'support')"
    )
