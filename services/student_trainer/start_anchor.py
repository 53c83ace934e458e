"""The frozen starting student behind `loss.anchor_kl`, and its weight at each step.

Loaded from `student.path` (what the run started from, also when it resumes from a later
checkpoint), without grad, in the student's compute dtype (bf16 on GPU: 3.4 GB at 1.7B
parameters), as a plain local module on every rank (no DDP / FSDP wrapper: it never trains).
The update reads its log-probs at the sampled tokens (`update.py`); the term is
`losses/anchor.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoModelForCausalLM, PreTrainedModel

from tropd.trainer.config import RunConfig
from tropd.trainer.errors import SetupError
from tropd.trainer.precision import DTYPES
from tropd.trainer.setup import resolve_model_path


@dataclass(frozen=True)
class Anchor:
    """This step's anchor: the frozen start and the weight beta_t >= 0 on the KL to it (0: the
    update neither reads the start nor adds the term)."""

    model: PreTrainedModel
    coef: float


@dataclass(frozen=True)
class StartAnchor:
    """The frozen start and the schedule of beta_t (`loss.anchor_kl`, `loss.anchor_decay_steps`)."""

    model: PreTrainedModel
    coef: float
    decay_steps: int | None

    def at(self, step: int) -> Anchor:
        """The anchor of optimizer step `step` (0-based); beta_t stays 0 once decayed."""
        scale = 1.0 if self.decay_steps is None else max(0.0, 1.0 - step / self.decay_steps)
        return Anchor(self.model, self.coef * scale)


def load_start_anchor(cfg: RunConfig) -> StartAnchor | None:
    """The frozen copy of the student at `student.path`, or None when `loss.anchor_kl` is 0."""
    if cfg.loss.anchor_kl == 0:
        return None
    path = resolve_model_path(cfg.student.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.student.compute_dtype])
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot load the starting student (anchor) from {path!r}: {exc}") from exc
    model.requires_grad_(False).eval()
    model = model.to(cfg.student.device)  # type: ignore[arg-type]
    return StartAnchor(model, cfg.loss.anchor_kl, cfg.loss.anchor_decay_steps)
